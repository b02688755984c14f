"""Score with an exported model (``anomaly export``) using only onnxruntime, NumPy and
OpenCV: no torch at run time.

Files are read and preprocessed exactly as the toolkit does (CLAHE, resize, the uint8
rounding of stored inputs), the network gives each film's embedding and logit, and the
density, brightness, threshold and p-values come from ``export.json``. The scores equal
the run's own (``anomaly score --model RUN``) to float precision.

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

from anomaly.decision import Decision, make_decision
from anomaly.errors import CheckpointError
from anomaly.io import ImageReadError, display_path, read_image
from anomaly.preprocess import PreprocessConfig, encode_uint8, preprocess
from anomaly.results import BatchScores, ScoreResult

EXPORT_FORMAT = "cxr-anomaly-export"
EXPORT_VERSION = 1


def is_exported_model(model: str | os.PathLike) -> bool:
    """Whether ``model`` is an exported model: a ``.onnx`` file or a folder with
    ``export.json``."""
    model = Path(model)
    return model.suffix == ".onnx" or (model / "export.json").is_file()


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
        if info.get("format") != EXPORT_FORMAT:
            raise CheckpointError(f"{display_path(folder)}: not an exported cxr-anomaly model")
        if int(info.get("format_version", 0)) > EXPORT_VERSION:
            raise CheckpointError(f"{display_path(folder)}: exported by a newer version "
                                  f"(format {info['format_version']}); upgrade the toolkit")
        if info.get("network_format") != "onnx":
            raise CheckpointError(f"{display_path(folder)}: a TorchScript export; load it "
                                  "with torch.jit.load, or export with --format onnx")
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(folder / info["network"]),
                                                    providers=["CPUExecutionProvider"])
        self.info = info
        self.mode, self.score = info["mode"], info["score"]
        self.component_names = tuple(info["components"])
        self.preprocess_config = PreprocessConfig(**info["preprocess"])
        self.mean = np.asarray(info["density"]["mean"], dtype=np.float64)
        self.precision = np.asarray(info["density"]["precision"], dtype=np.float64)
        self.lung_prior = np.asarray(info["lung_prior"], dtype=np.float64)
        self.batch_size = batch_size

    def output_settings(self) -> dict:
        """What makes a row of scores (as :meth:`anomaly.score.Scorer.output_settings`)."""
        return {"checkpoint": self.info["checkpoint"], "score": self.score, "mode": self.mode,
                "exported": True}

    def decision(self, threshold: float | None = None, alpha: float | None = None
                 ) -> Decision:
        """The exported threshold (or ``threshold``), or flagging p <= ``alpha``."""
        return make_decision(self.info.get("heldout_normal_scores"), self.info["threshold"],
                             threshold, alpha)

    def score_inputs(self, images: np.ndarray) -> BatchScores:
        """Score preprocessed films (B, 1, S, S) in [-1, 1]."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        embedding, logit = self.session.run(None, {"images": images})
        centred = embedding.astype(np.float64) - self.mean
        density = np.sqrt(np.clip(np.einsum("bi,ij,bj->b", centred, self.precision, centred),
                                  0, None))
        brightness = (images[:, 0] * self.lung_prior).reshape(len(images), -1).sum(1) \
            / self.lung_prior.sum()
        components = {"density": density, "logit": logit.astype(np.float64),
                      "brightness": brightness.astype(np.float64)}
        score = components[{"lung-brightness": "brightness"}.get(self.score, self.score)]
        return BatchScores(np.asarray(score, dtype=np.float64), components, images, None, None)

    def score_paths(self, paths: Sequence[str | os.PathLike], progress: bool = False,
                    on_batch: Callable[[list[Path], BatchScores], None] | None = None,
                    heatmaps: bool = False) -> ScoreResult:
        """Score files, skipping unreadable ones (listed in ``failures``)."""
        if heatmaps:
            raise ValueError("an exported model has no heat maps; score with the run itself")
        result = ScoreResult()
        batch_paths: list[Path] = []
        batch: list[np.ndarray] = []

        def flush() -> None:
            if batch:
                stored = np.stack(batch)[:, None].astype(np.float32) / 127.5 - 1.0
                scores = self.score_inputs(stored)
                result.add(list(batch_paths), scores)
                if on_batch is not None:
                    on_batch(list(batch_paths), scores)
                batch.clear()
                batch_paths.clear()

        for path in map(Path, paths):
            try:
                image = encode_uint8(preprocess(read_image(path), self.preprocess_config))
            except ImageReadError as err:
                result.failures.append((path, err.reason))
                continue
            except Exception as err:  # any decoder surprise is a bad file, not a crash
                result.failures.append((path, f"cannot be decoded ({type(err).__name__}: "
                                              f"{err})"))
                continue
            batch_paths.append(path)
            batch.append(image)
            if len(batch) == self.batch_size:
                flush()
        flush()
        return result
