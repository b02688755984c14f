"""Synthetic opacities, the discriminator's lesion head, the feature density and the
scores built on them (density, lesion, lung-brightness)."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from anomaly.checkpoint import CheckpointError, load_checkpoint
from anomaly.config import ConfigError, from_dict
from anomaly.data import find_images, load_images, uint8_to_model
from anomaly.density import fit_density, mahalanobis
from anomaly.lesions import lesion_targets, paste_opacities
from anomaly.lungs import geometric_lung_prior, smooth
from anomaly.score import Scorer, available_modes
from anomaly.score_files import score_files
from anomaly.train import TrainConfig, train_gan
from tests.conftest import TINY_CONFIG

QUIET = dict(progress=False, log=lambda *a: None)
LESION_CONFIG = {**TINY_CONFIG, "lesion_weight": 1.0, "holdout_fraction": 0.25}  # and a GAN


@pytest.fixture(scope="module")
def lesion_run(tmp_path_factory, normal_dir):
    run = tmp_path_factory.mktemp("lesion_run")
    train_gan(TrainConfig(**LESION_CONFIG), normal_dir, run, **QUIET)
    return run


def test_opacities_brighten_only_inside_the_lungs():
    prior = geometric_lung_prior(32)
    images = torch.full((6, 1, 32, 32), -0.5)
    generator = torch.Generator().manual_seed(0)
    pasted, masks = paste_opacities(images, prior, generator=generator)
    assert pasted.shape == masks.shape == images.shape
    assert (pasted >= images - 1e-6).all() and pasted.max() <= 1
    assert (masks.flatten(1).amax(1) > 0.05).all()  # every image got an opacity
    outside = smooth(prior.view(1, 1, 32, 32), 1.0)[0, 0] < 1e-3
    assert masks[:, 0][:, outside].abs().max() < 1e-3  # nothing far outside the lung field
    changed = (pasted - images).abs() > 1e-6
    assert changed.sum() == (masks > 0).logical_and(changed).sum()


def test_opacities_are_reproducible_and_targets_follow_masks():
    prior = geometric_lung_prior(32)
    images = torch.zeros(3, 1, 32, 32)
    first = paste_opacities(images, prior, generator=torch.Generator().manual_seed(4))
    again = paste_opacities(images, prior, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(first[0], again[0])
    masks = torch.zeros(1, 1, 32, 32)
    masks[0, 0, 2, 3] = 0.7  # top-left cell of a 4x4 grid
    masks[0, 0, 30, 30] = 0.1  # too faint to count: bottom-right cell
    targets = lesion_targets(masks, (4, 4))
    assert targets.shape == (1, 4, 4)
    assert targets[0, 0, 0] == 1 and targets.sum() == 1


def test_density_distance_grows_away_from_normals():
    rng = np.random.default_rng(0)
    normals = rng.normal(0, 1, (200, 5))
    density = fit_density(normals)
    centre = torch.from_numpy(normals.mean(0, keepdims=True)).float()
    far = centre + 6
    distances = mahalanobis(torch.cat([centre, far]), density)
    assert distances[0] < 0.05 and distances[1] > 5
    with pytest.raises(ValueError):
        fit_density(normals[:1])


def test_adversarial_off_needs_the_lesion_task():
    with pytest.raises(ConfigError, match="lesion_weight"):
        from_dict(TrainConfig, {"adversarial_weight": 0.0, "lesion_weight": 0.0})


def test_lesion_run_checkpoint_and_tensorboard(lesion_run):
    state = load_checkpoint(lesion_run)
    assert state["architecture"]["lesion_head"] is True
    density = state["feature_density"]
    channels = state["discriminator"]["lesion_head.weight"].shape[1]
    assert density["mean"].shape == (channels,)
    assert density["precision"].shape == (channels, channels)
    events = EventAccumulator(str(lesion_run), size_guidance={"images": 0}).Reload()
    panel = "held-out normals: input | opacities pasted | found"
    assert panel in events.Tags()["images"] and len(events.Images(panel)) == 2
    assert "loss/lesion" in events.Tags()["scalars"]
    assert state["score_stats"]["discriminator"]["components"]["density"]  # held-out normals


def test_lesion_run_scores_by_density_in_one_pass(lesion_run, labelled_dir, tmp_path):
    scorer = Scorer.from_checkpoint(lesion_run)
    assert (scorer.mode, scorer.score) == ("discriminator", "density")
    out = tmp_path / "scores.csv"
    result = score_files(scorer, find_images(labelled_dir), out, tmp_path / "heat",
                         progress=False)
    assert np.isfinite(result.density).all() and np.isfinite(result.lesion).all()
    np.testing.assert_allclose(result.score, result.density)
    assert np.isnan(result.residual).all()  # no reconstruction in this mode
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 20 and float(rows[0]["score"]) == pytest.approx(result.score[0], 1e-5)
    panel = cv2.imread(str(next((tmp_path / "heat").iterdir())))
    assert panel.shape == (256, 512, 3)  # input | heat, no G(z) panel


def test_density_is_mirror_invariant(lesion_run, normal_dir):
    scorer = Scorer.from_checkpoint(lesion_run)
    images = uint8_to_model(load_images(find_images(normal_dir)[:3],
                                        scorer.preprocess_config).images)
    plain, mirrored = scorer.score_tensor(images), scorer.score_tensor(images.flip(-1))
    np.testing.assert_allclose(plain.density, mirrored.density, rtol=1e-4)
    np.testing.assert_allclose(plain.lesion, mirrored.lesion, rtol=1e-4, atol=1e-5)


def test_lesion_head_finds_opacities_it_was_taught(tmp_path, normal_dir):
    """A few more epochs at a high rate: pasted opacities score higher than the clean films."""
    config = TrainConfig(**{**LESION_CONFIG, "epochs": 25, "lr": 2e-3, "adversarial_weight": 0.0,
                            "holdout_fraction": 0.0})
    train_gan(config, normal_dir, tmp_path / "run", **QUIET)
    state = load_checkpoint(tmp_path / "run")
    assert state["generator_trained"] is False
    assert available_modes(state) == ["discriminator"]
    scorer = Scorer.from_state(state, score="lesion")
    images = uint8_to_model(load_images(find_images(normal_dir), scorer.preprocess_config).images)
    pasted, _ = paste_opacities(images, state["lung_prior"],
                                generator=torch.Generator().manual_seed(1))
    clean, ill = scorer.score_tensor(images).score, scorer.score_tensor(pasted).score
    assert ill.mean() > clean.mean()


def test_lung_brightness_is_the_mean_inside_the_prior(lesion_run, normal_dir):
    state = load_checkpoint(lesion_run)
    scorer = Scorer.from_state(state, score="lung-brightness")
    images = uint8_to_model(load_images(find_images(normal_dir)[:2],
                                        scorer.preprocess_config).images)
    prior = state["lung_prior"]
    expected = (images[:, 0] * prior).sum((1, 2)) / prior.sum()
    np.testing.assert_allclose(scorer.score_tensor(images).score, expected.numpy(), rtol=1e-5)


def test_scores_that_need_what_the_checkpoint_lacks_are_refused(lesion_run, trained_run):
    with pytest.raises(ValueError, match="reconstruction"):
        Scorer.from_checkpoint(lesion_run, mode="discriminator", score="lung-opacity")
    with pytest.raises(CheckpointError, match="lesion"):
        Scorer.from_checkpoint(trained_run, score="lesion")


def test_cli_choices_match_the_library():
    from anomaly import score
    from cli import anomaly_cli

    assert anomaly_cli.MODES == list(score.MODES)
    assert anomaly_cli.SCORES == list(score.SCORES)


def test_opacity_maps_are_drawn_on_an_absolute_scale(lesion_run, trained_run):
    """Probabilities: a normal film with a faint map stays cool instead of being
    stretched to full red; residual maps keep each image's own range."""
    from anomaly.heatmap import heatmap_panel

    assert Scorer.from_checkpoint(lesion_run).heatmap_scale == 1.0
    assert Scorer.from_checkpoint(trained_run, score="lung-opacity").heatmap_scale is None
    image = np.zeros((32, 32), np.float32)
    faint = np.full((32, 32), 0.05, np.float32)
    absolute = heatmap_panel(image, None, 64, scale=1.0, heat=faint)
    stretched = heatmap_panel(image, None, 64, heat=faint)
    red = 2  # BGR
    assert absolute[:, 64:, red].mean() < stretched[:, 64:, red].mean()


def test_critic_probes_example_prints_every_component(lesion_run, labelled_dir, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import critic_probes
    finally:
        sys.path.pop(0)
    critic_probes.main(["--model", str(lesion_run), "--data", str(labelled_dir)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{labelled_dir.name}: density of normal films")
    assert lines[1].startswith("held-out normal training films: density")
    rows = {line.split(" | ")[0].lstrip("| "): float(line.split(" | ")[1].rstrip(" |"))
            for line in lines[4:]}
    assert set(rows) == {"density", "lesion", "brightness", "z(lesion)+z(brightness)",
                         "z(density)+z(brightness)", "z(density)+z(lesion)"}
    assert rows["brightness"] > 0.5  # the synthetic "pneumonia" films carry a bright blob


def test_cell_density_probe_runs_on_a_tiny_run(lesion_run, labelled_dir, normal_dir, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import cell_density_probe
    finally:
        sys.path.pop(0)
    cell_density_probe.main(["--model", str(lesion_run), "--data", str(labelled_dir),
                             "--train", str(normal_dir), "--lung-share", "0.0"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "16 of 16 cells inside the lung prior"
    value = float(lines[1].rsplit(" ", 1)[1])
    assert lines[1].startswith(f"{labelled_dir.name}: cell density AUROC") and 0 <= value <= 1


def test_seed_ensemble_probe_averages_standardised_runs(lesion_run, labelled_dir, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import seed_ensemble
    finally:
        sys.path.pop(0)
    seed_ensemble.main(["--model", str(lesion_run), "--model", str(lesion_run),
                        "--data", str(labelled_dir)])
    lines = capsys.readouterr().out.splitlines()
    single = float(lines[0].rsplit(" ", 1)[1])
    assert lines[2].startswith(f"{labelled_dir.name}: average of 2 runs: AUROC")
    assert float(lines[2].rsplit(" ", 1)[1]) == pytest.approx(single)  # a run with itself
