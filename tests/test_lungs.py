"""Lung-field prior, lung-opacity score and the fused score."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

from anomaly.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from anomaly.data import find_images
from anomaly.lungs import central_ellipse, lung_field_prior, lung_opacity, opacity_map
from anomaly.score import Scorer
from anomaly.score_files import score_files
from anomaly.train import TrainConfig, train_run
from tests.conftest import TINY_CONFIG


def chest(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright body with two dark lungs, and the lungs' true mask."""
    axis = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    lungs = ((x.abs() - 0.4) / 0.25) ** 2 + (y / 0.5) ** 2 <= 1
    image = torch.full((size, size), 0.6)
    image[lungs] = -0.6
    image[:, :4] = image[:, -4:] = -1.0  # dark air beside the body
    return image, lungs


def test_prior_finds_the_dark_lungs_and_not_the_air_outside():
    image, lungs = chest()
    rng = torch.Generator().manual_seed(0)
    normals = (image + 0.05 * torch.randn(20, 1, 64, 64, generator=rng)).clamp(-1, 1)
    prior = lung_field_prior(normals, fraction=0.3)
    inside = central_ellipse(64)
    assert prior.sum() == pytest.approx(0.3 * inside.sum().item(), abs=3)
    assert (prior.bool() & ~inside).sum() == 0  # never outside the central ellipse
    assert (prior.bool() & lungs).sum() / prior.sum() > 0.95  # all of it on the lungs


def test_opacity_counts_regional_brightening_not_fine_detail():
    image, lungs = chest()
    reconstruction = image[None, None]
    prior = lungs.float()
    axis = torch.arange(64)
    checker = ((axis[:, None] + axis[None, :]) % 2 * 2 - 1).float() * 0.3  # +-0.3 per pixel
    fine = reconstruction + checker
    consolidation = reconstruction + 0.3 * lungs.float()  # the lungs brighter by 0.3
    darker = reconstruction - 0.3 * lungs.float()
    both = torch.cat([fine, consolidation, darker])
    scores = lung_opacity(both, reconstruction.expand(3, -1, -1, -1), prior)
    assert scores[1] > 0.2  # consolidation: most of the 0.3 survives the blur
    assert scores[0] < 0.02 and scores[2] == 0  # checkerboard averages out; darker is 0
    # the same |x - G(z)| for the checkerboard and the consolidation
    assert (fine - reconstruction).abs().mean() >= (consolidation - reconstruction).abs().mean()
    assert opacity_map(both, reconstruction.expand(3, -1, -1, -1)).shape == (3, 1, 64, 64)


@pytest.fixture(scope="module")
def run_with_holdout(tmp_path_factory, normal_dir):
    run = tmp_path_factory.mktemp("holdout_run")
    config = TrainConfig(**{**TINY_CONFIG, "holdout_fraction": 0.25, "encoder_epochs": 1})
    train_run(config, normal_dir, run, progress=False, log=lambda *a: None)
    return run


def test_checkpoint_stores_prior_and_held_out_components(run_with_holdout):
    state = load_checkpoint(run_with_holdout)
    assert state["lung_prior"].shape == (32, 32) and state["lung_prior"].sum() > 0
    fitted = state["score_stats"]["encoder"]
    assert set(fitted["components"]) == set(Scorer.from_checkpoint(
        run_with_holdout, mode="encoder").component_names)
    assert all(len(v) == 6 for v in fitted["components"].values())  # 25% of 24 held out


def test_fused_is_the_standardised_sum(run_with_holdout, normal_dir):
    scorer = Scorer.from_checkpoint(run_with_holdout, score="fused")
    assert scorer.mode == "encoder"
    fitted = load_checkpoint(run_with_holdout)["score_stats"]["encoder"]["components"]
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    scores = scorer.score_tensor(images)
    expected = sum((getattr(scores, name) - np.mean(fitted[name])) / np.std(fitted[name])
                   for name in ("opacity", "critic"))
    np.testing.assert_allclose(scores.score, expected, rtol=1e-4, atol=1e-5)
    normal_scores = np.asarray(scorer.fitted_normal_scores())
    assert normal_scores.mean() == pytest.approx(0, abs=1e-5)  # standardised on them
    default = Scorer.from_checkpoint(run_with_holdout)
    assert default.score == "lung-opacity"
    assert default.score_tensor(images).score == pytest.approx(scores.opacity)


def test_other_settings_calibrate_on_held_out_images(run_with_holdout):
    scorer = Scorer.from_checkpoint(run_with_holdout, mode="encoder-search", iterations=3,
                                    score="fused")
    assert len(scorer.normal_components["opacity"]) == 6  # scored now, for these settings
    stored = load_checkpoint(run_with_holdout)["score_stats"]["encoder"]["components"]
    assert scorer.normal_components["opacity"] != stored["opacity"]


def test_without_held_out_images(run_with_holdout, tmp_path):
    state = load_checkpoint(run_with_holdout)
    state["score_stats"] = {}
    state["holdout_paths"] = [str(tmp_path / "gone.png")]
    moved = tmp_path / "moved.pt"
    save_checkpoint(state, moved)
    assert Scorer.from_checkpoint(moved).score == "lung-opacity"  # needs no held-out images
    with pytest.raises(CheckpointError, match="held out"):
        Scorer.from_checkpoint(moved, score="fused")  # an explicit request fails clearly


def test_csv_and_heatmaps_of_the_fused_score(run_with_holdout, normal_dir, tmp_path):
    scorer = Scorer.from_checkpoint(run_with_holdout, score="fused")
    paths = find_images(normal_dir)[:3]
    result = score_files(scorer, paths, tmp_path / "s.csv", tmp_path / "heat", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [float(r["score"]) for r in rows] == pytest.approx(result.score, abs=1e-5)
    assert [float(r["opacity"]) for r in rows] == pytest.approx(result.opacity, abs=1e-5)
    assert len(list((tmp_path / "heat").glob("*.png"))) == 3
    shutil.rmtree(tmp_path / "heat")


def test_evaluate_without_val_takes_the_threshold_from_held_out_normals(
        run_with_holdout, labelled_dir, tmp_path):
    from anomaly.evaluate_model import evaluate_model

    options = dict(mode="encoder-search", iterations=2)  # not fitted at training time
    report = evaluate_model(run_with_holdout, labelled_dir, tmp_path / "report", resamples=20,
                          progress=False, log=lambda *a: None, **options)
    assert report["threshold_source"] == "normal-val-quantile"
    scorer = Scorer.from_checkpoint(run_with_holdout, **options)
    scorer.calibrate(scorer.available_holdout())
    assert report["threshold"] == pytest.approx(np.quantile(scorer.fitted_normal_scores(), 0.95))
