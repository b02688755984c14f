"""Export a run's one-pass scoring network to ONNX or TorchScript, with a JSON beside it.

What is exported is the network of the critic mode (the default): preprocessed films
(B, 1, S, S) in [-1, 1] -> the density's embedding (B, C, as the run's ``embedding``), the
opacity logit (B,) and the ``quiet`` component (B,), of the film alone or averaged with
its mirror as the run's critic scores (``views``), and, where the critic has a map head,
its opacity map (B, S, S) of the film.
``export.json`` holds everything else a scorer needs: the preprocessing, the density's
mean and precision, the lung prior (for ``brightness``) and lung field (for ``map``),
the held-out normals' scores (for p-values) and components (to standardise
``density+map`` and ``density+quiet``), the decision threshold and the region threshold,
with a format version.
:mod:`anomaly.exported` scores with it using only onnxruntime, NumPy and OpenCV. AnoGAN
latent search is an optimisation loop, not a network, so it is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from anomaly import __version__
from anomaly.atomic import write_text_atomically
from anomaly.checkpoint import checkpoint_digest
from anomaly.errors import CheckpointError
from anomaly.families import FAMILIES
from anomaly.io import file_sha256
from anomaly.score import Scorer

EXPORT_FORMAT = "cxr-anomaly-export"
EXPORT_VERSION = 2  # 2: the critic's network gives quiet as its third output
FORMATS = ("onnx", "torchscript")


def export_run(model: str | os.PathLike, out_dir: str | os.PathLike, fmt: str = "onnx",
               mode: str | None = None, threshold: float | None = None,
               score: str | None = None) -> Path:
    """Write ``out_dir/model.onnx`` (or ``model.pt``) and ``out_dir/export.json``.

    Args:
        model: run directory or checkpoint.
        out_dir: folder for the exported files.
        fmt: ``onnx`` or ``torchscript``.
        mode: the mode to export (default: the run's default); its family says whether
            and how it exports (``EXPORT_REFUSALS``, ``export_parts``).
        threshold: the decision threshold to store (default: the run's, see
            :meth:`Scorer.decision`).
        score: the score kind to export (default: the mode's own).

    Returns:
        Path of the exported network file.

    Raises:
        CheckpointError: the mode cannot be exported, said in one line.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    scorer = Scorer.from_checkpoint(model, mode=mode, device="cpu", score=score)
    module = FAMILIES[scorer.family.name]
    refusal = getattr(module, "EXPORT_REFUSALS", {}).get(scorer.mode)
    if refusal or not hasattr(module, "export_parts"):
        raise CheckpointError(f"mode {scorer.mode!r} cannot be exported: "
                              f"{refusal or 'its family exports nothing'}")
    decision = scorer.decision(threshold)  # a refused threshold writes nothing
    network, outputs, family_info = module.export_parts(scorer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = scorer.preprocess_config.image_size
    example = torch.zeros(2, 1, size, size)
    path = out_dir / ("model.onnx" if fmt == "onnx" else "model.pt")
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                             dir=out_dir)
    os.close(descriptor)
    try:  # the network is written beside its target, then renamed over it
        if fmt == "onnx":
            torch.onnx.export(network, (example,), temporary, input_names=["images"],
                              output_names=outputs, opset_version=17,
                              dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]},
                              dynamo=False)
        else:
            torch.jit.trace(network, example).save(temporary)
        digest = file_sha256(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    info = {
        "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "toolkit": __version__,
        "network": path.name, "network_format": fmt, "network_sha256": digest,
        "checkpoint": checkpoint_digest(model),
        "family": scorer.family.name, "mode": scorer.mode, "score": scorer.score,
        "components": list(scorer.component_names),
        "preprocess": asdict(scorer.preprocess_config),
        "lung_prior": scorer.lung_prior.cpu().tolist(),
        "heldout_normal_scores": scorer.fitted_normal_scores(),
        "threshold": {"value": decision.threshold, "source": decision.source},
        **family_info,
    }
    write_text_atomically(out_dir / "export.json", json.dumps(info) + "\n")
    return path
