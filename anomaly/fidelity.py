"""How faithfully a GAN reconstructs normal films it never trained on.

A reconstruction-based score only carries information beyond "the lungs are bright" when
G(z) is the same patient as x: same position, lung shape and exposure. The fidelity
figures are the mean absolute residual |x - G(z)| (model range [-1, 1]) and the
structural similarity (SSIM, scikit-image, data range 2) over the normal images held out
from training.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from skimage.metrics import structural_similarity

from anomaly.score import BatchScores, Scorer


def batch_fidelity(scores: BatchScores) -> tuple[list[float], list[float]]:
    """Per-image mean |x - G(z)| and SSIM(x, G(z)) of a scored batch."""
    if scores.reconstructions is None:
        raise ValueError("this scoring mode makes no reconstruction")
    images = scores.inputs[:, 0].numpy().astype(np.float64)
    recons = scores.reconstructions[:, 0].numpy().astype(np.float64)
    mae = np.abs(images - recons).reshape(len(images), -1).mean(1).tolist()
    ssim = [float(structural_similarity(x, r, data_range=2.0)) for x, r in zip(images, recons)]
    return mae, ssim


class FidelityCollector:
    """An ``on_batch`` callback for :meth:`Scorer.score_paths` that gathers the fidelity
    of every batch, so a pass made for another reason (calibration) yields it too."""

    def __init__(self):
        self.mae: list[float] = []
        self.ssim: list[float] = []

    def __call__(self, paths, scores: BatchScores) -> None:
        if scores.reconstructions is None:
            return
        batch_mae, batch_ssim = batch_fidelity(scores)
        self.mae.extend(batch_mae)
        self.ssim.extend(batch_ssim)

    def summary(self) -> dict[str, float] | None:
        """``{"mae": ..., "ssim": ..., "n": ...}``, or None before any reconstruction."""
        if not self.mae:
            return None
        return {"mae": float(np.mean(self.mae)), "ssim": float(np.mean(self.ssim)),
                "n": len(self.mae)}


def reconstruction_fidelity(scorer: Scorer, normal_paths: Sequence[str | os.PathLike]
                            ) -> dict[str, float] | None:
    """Mean |x - G(z)| and mean SSIM over normal images, with the scorer's mode.

    Returns:
        ``{"mae": ..., "ssim": ..., "n": ...}``, or None when the mode makes no
        reconstruction or no image could be read.
    """
    if not scorer.reconstructs:
        return None
    collector = FidelityCollector()
    scorer.score_paths(normal_paths, progress=False, on_batch=collector)
    return collector.summary()
