"""Score with an exported model (``anomaly export``) using only onnxruntime, NumPy and
OpenCV: no torch at run time.

Files are read and preprocessed exactly as the toolkit does (CLAHE, resize, the uint8
rounding of stored inputs), the network runs in onnxruntime, and the exporting family's
reader (its ``export_reader``; the critic's turns the embedding, logit, quiet and
opacity map into its density, map score and the rest) makes the components and the score; the
threshold, regions and p-values come from ``export.json``. The scores, maps and regions
equal the run's own (``anomaly score --model RUN``) to float precision.

Example:
    >>> scorer = ExportedScorer("exported/")      # or exported/model.onnx
    >>> result = scorer.score_paths(["a.png"])
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from anomaly import validate
from anomaly.decision import Decision, make_decision
from anomaly.errors import CheckpointError
from anomaly.heatmap import heatmap_panel
from anomaly.io import ImageReadError, display_path, file_sha256, read_image
from anomaly.preprocess import PreprocessConfig, encode_uint8, preprocess
from anomaly.regions import Region, check_threshold, draw_regions, film_regions, find_regions
from anomaly.results import BatchScores, ScoreResult
from anomaly.validate import BadValue

EXPORT_FORMAT = "cxr-anomaly-export"
EXPORT_VERSION = 2  # 2: the critic's network gives quiet as its third output


def is_exported_model(model: str | os.PathLike) -> bool:
    """Whether ``model`` is an exported model: a ``.onnx`` file or a folder with
    ``export.json``."""
    model = Path(model)
    return model.suffix == ".onnx" or (model / "export.json").is_file()


def check_export(info: dict, folder: Path) -> None:
    """Refuse an export.json whose values it cannot hold (:mod:`anomaly.validate`), a
    network other than the ``model.onnx`` beside it, or one whose bytes are not those
    exported with it (a re-export cut short by a full disk).

    Raises:
        BadValue: naming the field.
    """
    if info.get("network") != "model.onnx":
        raise BadValue(f"network is {info.get('network')!r}; an export's network is the "
                       "model.onnx beside its export.json")
    network = folder / "model.onnx"
    if not network.is_file():
        raise BadValue("model.onnx is missing beside it")
    expected = info.get("network_sha256")
    if expected is not None and file_sha256(network) != expected:
        raise BadValue("model.onnx is not the network exported with this export.json (its "
                       "SHA-256 differs: an export cut short?); export again")
    if not isinstance(info.get("checkpoint"), str):
        raise BadValue("checkpoint (the digest of the model it was exported from) is missing")
    if not isinstance(info.get("mode"), str) or not isinstance(info.get("score"), str):
        raise BadValue(f"mode {info.get('mode')!r} / score {info.get('score')!r} are not names")
    components = info.get("components")
    if not isinstance(components, list) or not all(isinstance(c, str) for c in components):
        raise BadValue("components is not a list of names")
    if not isinstance(info.get("preprocess"), dict):
        raise BadValue("preprocess is missing")
    size = PreprocessConfig(**info["preprocess"]).image_size
    validate.lung_prior(info.get("lung_prior"), "lung_prior", size)
    validate.number_list(info.get("heldout_normal_scores"), "heldout_normal_scores")
    threshold = info.get("threshold")
    if not isinstance(threshold, dict) or not isinstance(threshold.get("source"), str):
        raise BadValue("threshold must be {value, source}")
    validate.finite_number(threshold.get("value"), "threshold.value", allow_none=True)
    validate.positive_number(info.get("region_threshold"), "region_threshold",
                             allow_none=True)


def export_reader(info: dict):
    """The exporting family's reader of network outputs (exports written before
    ``family`` was recorded are the family of their mode)."""
    from anomaly.families import FAMILIES, family_of_mode

    name = info.get("family") or family_of_mode(info["mode"])
    module = FAMILIES.get(name)
    if module is None or not hasattr(module, "export_reader"):
        raise BadValue(f"family {name!r} has no reader of exported models")
    return module.export_reader(info)


class ExportedScorer:
    """Scores files with an exported network, with the file-scoring interface of
    :class:`anomaly.score.Scorer` (``score_paths``, ``decision``, ``component_names``)."""

    reconstructs = False

    def __init__(self, model: str | os.PathLike, batch_size: int = 64):
        model = Path(model)
        folder = model.parent if model.suffix == ".onnx" else model
        try:
            info = json.loads((folder / "export.json").read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{display_path(folder)}: no readable export.json "
                                  f"({type(err).__name__})") from None
        if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT:
            raise CheckpointError(f"{display_path(folder)}: not an exported cxr-anomaly model")
        try:
            version = validate.whole_number(info.get("format_version", 0), "format_version")
        except BadValue as err:
            raise CheckpointError(f"{display_path(folder / 'export.json')}: {err}") from None
        if version > EXPORT_VERSION:
            raise CheckpointError(f"{display_path(folder)}: exported by a newer version "
                                  f"(format {info['format_version']}); upgrade the toolkit")
        if info.get("network_format") != "onnx":
            raise CheckpointError(f"{display_path(folder)}: a TorchScript export; load it "
                                  "with torch.jit.load, or export with --format onnx")
        try:
            check_export(info, folder)
            self.reader = export_reader(info)
        except (BadValue, ValueError, TypeError, KeyError) as err:
            raise CheckpointError(f"{display_path(folder / 'export.json')}: {err}") from None
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(folder / info["network"]),
                                                    providers=["CPUExecutionProvider"])
        check_outputs = getattr(self.reader, "check_outputs", None)  # the family's own
        if check_outputs is not None:
            try:
                check_outputs([output.shape for output in self.session.get_outputs()])
            except BadValue as err:
                raise CheckpointError(f"{display_path(folder / 'export.json')}: {err}") from None
        self.info = info
        self.mode, self.score = info["mode"], info["score"]
        self.component_names = tuple(info["components"])
        self.preprocess_config = PreprocessConfig(**info["preprocess"])
        self.lung_prior = np.asarray(info["lung_prior"], dtype=np.float64)
        self.has_map = bool(getattr(self.reader, "has_map", False))
        self.heat_name = info.get("heat", "none")
        self.region_threshold = info.get("region_threshold")
        self.batch_size = validate.whole_number(batch_size, "batch_size", low=1)

    def output_settings(self) -> dict:
        """What makes a row of scores (as :meth:`anomaly.score.Scorer.output_settings`)."""
        return {"checkpoint": self.info["checkpoint"], "score": self.score, "mode": self.mode,
                "exported": True}

    def decision(self, threshold: float | None = None, alpha: float | None = None
                 ) -> Decision:
        """The exported threshold (or ``threshold``), or flagging p <= ``alpha``."""
        stored = self.info["threshold"] if self.info["threshold"].get("value") is not None \
            else None
        return make_decision(self.info.get("heldout_normal_scores"), stored, threshold, alpha)

    def score_inputs(self, images: np.ndarray) -> BatchScores:
        """Score preprocessed films (B, 1, S, S) in [-1, 1]."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        components, heat = self.reader.components(
            images, self.session.run(None, {"images": images}))
        score = self.reader.score_of(components)
        return BatchScores(np.asarray(score, dtype=np.float64), components, images, None, heat,
                           1.0 if heat is not None else None)

    def regions(self, heat: np.ndarray) -> list[Region]:
        """The regions of a map (H, W) above the exported region threshold."""
        return find_regions(heat, check_threshold(self.region_threshold, "export.json"))

    def film_regions(self, scores: BatchScores, index: int) -> list[Region]:
        """The regions of image ``index`` of a scored batch in its file's own pixels."""
        if scores.heatmaps is None:
            raise ValueError("this exported model has no heat map (exported without one)")
        shape = scores.shapes[index] if scores.shapes is not None else None
        return film_regions(scores.heatmaps[index], shape, self.preprocess_config.resize,
                            self.region_threshold, "export.json")

    def heatmap_panel(self, scores: BatchScores, index: int, display_size: int = 256,
                      boxes: list[Region] | None = None) -> np.ndarray:
        """Input and opacity map side by side, ``boxes`` drawn (by default the map's
        regions), as :meth:`anomaly.score.Scorer.heatmap_panel`."""
        heat = scores.heatmaps[index]
        panel = heatmap_panel(scores.inputs[index, 0], None, display_size, 1.0, heat)
        if boxes is None and self.region_threshold is not None:
            boxes = self.regions(heat)
        if boxes:
            draw_regions(panel, boxes, scale=display_size / heat.shape[-1],
                         offset_x=panel.shape[1] - display_size)
        return panel

    def score_paths(self, paths: Sequence[str | os.PathLike], progress: bool = False,
                    on_batch: Callable[[list[Path], BatchScores], None] | None = None,
                    heatmaps: bool = False) -> ScoreResult:
        """Score files, skipping unreadable ones (listed in ``failures``)."""
        if heatmaps and not self.has_map:
            raise ValueError("this exported model has no heat maps (exported without "
                             "one); score with the run itself")
        result = ScoreResult()
        batch_paths: list[Path] = []
        batch: list[np.ndarray] = []
        shapes: list[tuple[int, int]] = []

        def flush() -> None:
            if batch:
                stored = np.stack(batch)[:, None].astype(np.float32) / 127.5 - 1.0
                scores = self.score_inputs(stored)
                scores.shapes = list(shapes)
                result.add(list(batch_paths), scores)
                if on_batch is not None:
                    on_batch(list(batch_paths), scores)
                batch.clear()
                batch_paths.clear()
                shapes.clear()

        for path in map(Path, paths):
            try:
                raw = read_image(path)
                image = encode_uint8(preprocess(raw, self.preprocess_config))
            except ImageReadError as err:
                result.failures.append((path, err.reason))
                continue
            except Exception as err:  # any decoder surprise is a bad file, not a crash
                result.failures.append((path, f"cannot be decoded ({type(err).__name__}: "
                                              f"{err})"))
                continue
            batch_paths.append(path)
            batch.append(image)
            shapes.append(tuple(raw.shape[:2]))
            if len(batch) == self.batch_size:
                flush()
        flush()
        return result
