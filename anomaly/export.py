"""Export a run's one-pass scoring network to ONNX or TorchScript, with a JSON beside it.

What is exported is the network of the critic mode (the default): preprocessed films
(B, 1, S, S) in [-1, 1] -> the L2-normalised embedding (B, C) and the opacity logit (B,),
of the film alone or averaged with its mirror as the run's critic scores (``views``),
and, where the critic has a map head, its opacity map (B, S, S) of the film.
``export.json`` holds everything else a scorer needs: the preprocessing, the density's
mean and precision, the lung prior (for ``brightness``) and lung field (for ``map``),
the held-out normals' scores (for p-values) and components (to standardise
``density+map``), the decision threshold and the region threshold, with a format version.
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
import torch.nn.functional as F
from torch import nn

from anomaly import __version__
from anomaly.atomic import write_text_atomically
from anomaly.checkpoint import checkpoint_digest
from anomaly.errors import CheckpointError
from anomaly.families.critic.network import OpacityCritic
from anomaly.families.critic.scorer import views_and_opacity
from anomaly.io import file_sha256
from anomaly.score import Scorer

EXPORT_FORMAT = "cxr-anomaly-export"
EXPORT_VERSION = 1
FORMATS = ("onnx", "torchscript")


class CriticEmbedding(nn.Module):
    """The critic as exported: films (B, 1, S, S) -> (embedding (B, C), logit (B,)), with
    ``views`` 1 (the film) or 2 (the film and its mirror averaged) as its density, and
    with a map head also the opacity map (B, S, S) of the film itself."""

    def __init__(self, critic: OpacityCritic, views: int):
        super().__init__()
        self.critic = critic
        self.views = views

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """L2-normalised embedding and opacity logit (flip-averaged with 2 views), and
        the opacity probability per pixel where there is a map head."""
        maps, opacity = views_and_opacity(self.critic, images, self.views)
        pooled = [self.critic.pooled(view_map) for view_map in maps]
        logit = sum(self.critic.logits(p) for p in pooled) / len(pooled)
        embedding = F.normalize(sum(pooled), dim=1)
        return (embedding, logit) if opacity is None else (embedding, logit, opacity)


def export_run(model: str | os.PathLike, out_dir: str | os.PathLike, fmt: str = "onnx",
               mode: str | None = None, threshold: float | None = None,
               score: str | None = None) -> Path:
    """Write ``out_dir/model.onnx`` (or ``model.pt``) and ``out_dir/export.json``.

    Args:
        model: run directory or checkpoint.
        out_dir: folder for the exported files.
        fmt: ``onnx`` or ``torchscript``.
        mode: the mode to export (default: the run's default); only ``critic`` is
            exportable.
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
    if scorer.mode in ("search", "encoder-search"):
        raise CheckpointError(f"mode {scorer.mode!r} is AnoGAN latent search, an optimisation "
                              "loop run per image, not a network: it cannot be exported "
                              "(export the default mode, critic)")
    if scorer.mode != "critic":
        raise CheckpointError(f"mode {scorer.mode!r} is not exportable yet; export the "
                              "default mode, critic")
    decision = scorer.decision(threshold)  # a refused threshold writes nothing
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    network = CriticEmbedding(scorer.family.critic, scorer.family.views).eval()
    network = network.to(memory_format=torch.contiguous_format)
    size = scorer.preprocess_config.image_size
    example = torch.zeros(2, 1, size, size)
    path = out_dir / ("model.onnx" if fmt == "onnx" else "model.pt")
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                             dir=out_dir)
    os.close(descriptor)
    try:  # the network is written beside its target, then renamed over it
        if fmt == "onnx":
            outputs = ["embedding", "logit", *(["opacity"] if scorer.family.has_map else [])]
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
    density = scorer.family.density
    info = {
        "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "toolkit": __version__,
        "network": path.name, "network_format": fmt, "network_sha256": digest,
        "checkpoint": checkpoint_digest(model),
        "mode": scorer.mode, "score": scorer.score,
        "components": list(scorer.component_names),
        "views": scorer.family.views,  # inside the network: for the reader's information
        "preprocess": asdict(scorer.preprocess_config),
        "density": {"mean": density["mean"].cpu().tolist(),
                    "precision": density["precision"].cpu().tolist()},
        "lung_prior": scorer.lung_prior.cpu().tolist(),
        "heldout_normal_scores": scorer.fitted_normal_scores(),
        "threshold": {"value": decision.threshold, "source": decision.source},
    }
    if scorer.family.has_map:
        normal = scorer.normal_components or {}
        info.update({
            "heat": scorer.heat_name, "lung_field": scorer.family.lung_field.cpu().tolist(),
            "heldout_normal_components": {name: normal.get(name) for name in ("density", "map")},
            "region_threshold": scorer.region_threshold})
    write_text_atomically(out_dir / "export.json", json.dumps(info) + "\n")
    return path
