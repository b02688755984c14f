"""Reconstruction fidelity on held-out normals, and its place in the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anomaly.data import find_images
from anomaly.evaluate_model import evaluate_model
from anomaly.fidelity import batch_fidelity, reconstruction_fidelity
from anomaly.score import BatchScores, Scorer


def scores_of(inputs: torch.Tensor, reconstructions: torch.Tensor | None) -> BatchScores:
    nan = np.full(len(inputs), np.nan)
    return BatchScores(nan, {"residual": nan}, inputs=inputs,
                       reconstructions=reconstructions, heatmaps=inputs[:, 0])


def test_perfect_and_blank_reconstructions():
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    mae, ssim = batch_fidelity(scores_of(images, images.clone()))
    assert mae == [0.0, 0.0] and ssim == pytest.approx([1.0, 1.0])
    blank = torch.zeros_like(images)  # a flat "average chest": no structure of x at all
    mae, ssim = batch_fidelity(scores_of(images, blank))
    np.testing.assert_allclose(mae, images.abs().flatten(1).mean(1).double().numpy(), rtol=1e-6)
    assert max(ssim) < 0.05
    with pytest.raises(ValueError, match="makes no reconstruction"):
        batch_fidelity(scores_of(images, None))


def test_fidelity_of_a_trained_encoder(trained_run, normal_dir, labelled_dir, val_dir,
                                      tmp_path):
    scorer = Scorer.from_checkpoint(trained_run, mode="encoder")
    fidelity = reconstruction_fidelity(scorer, find_images(normal_dir)[:5])
    assert fidelity["n"] == 5 and 0 < fidelity["mae"] < 2 and -1 < fidelity["ssim"] < 1
    residuals = scorer.score_paths(find_images(normal_dir)[:5], progress=False).residual
    assert fidelity["mae"] == pytest.approx(float(np.mean(residuals)), rel=1e-5)  # |x - G(z)|
    assert reconstruction_fidelity(Scorer.from_checkpoint(trained_run, mode="encoder"), []) \
        is None
    evaluate_model(trained_run, labelled_dir, tmp_path / "r", val_dir=val_dir,
                 progress=False, log=lambda *a: None, mode="encoder")
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["fidelity_heldout_normals"] is None  # this tiny run holds nothing out


def test_held_out_normals_are_scored_once_for_threshold_and_fidelity(
        trained_run, normal_dir, labelled_dir, tmp_path, monkeypatch):
    holdout = find_images(normal_dir)[:5]
    monkeypatch.setattr(Scorer, "available_holdout", lambda self: list(holdout))
    passes = []
    score_paths = Scorer.score_paths

    def counting(self, paths, *args, **kwargs):
        passes.append(list(paths))
        return score_paths(self, paths, *args, **kwargs)

    monkeypatch.setattr(Scorer, "score_paths", counting)
    report = evaluate_model(trained_run, labelled_dir, tmp_path / "r", progress=False,
                          log=lambda *a: None, mode="encoder", score="anogan")
    assert report["threshold_source"] == "normal-val-quantile"
    assert report["fidelity_heldout_normals"]["n"] == 5
    assert sum(p == holdout for p in passes) == 1  # calibration and fidelity share a pass
    page = (tmp_path / "r" / "report.html").read_text()
    fidelity = report["fidelity_heldout_normals"]
    assert (f"<b>fidelity_heldout_normals</b>: mae {fidelity['mae']:.4g}, "
            f"ssim {fidelity['ssim']:.4g}, n 5") in page
