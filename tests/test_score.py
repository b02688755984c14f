"""Scoring: batched search equals single-image search, modes, files, heatmaps, CSV."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from anomaly.checkpoint import CheckpointError, save_checkpoint
from anomaly.data import find_images, load_images
from anomaly.score import Scorer
from anomaly.score_files import score_files


@pytest.fixture(scope="module")
def batch(trained_run, normal_dir):
    scorer = Scorer.from_checkpoint(trained_run, mode="search", iterations=1)
    loaded = load_images(find_images(normal_dir)[:4], scorer.preprocess_config)
    return loaded.images.float() / 127.5 - 1


@pytest.mark.parametrize("mode", ["search", "encoder-search"])
def test_batched_search_equals_one_at_a_time(trained_run, batch, mode):
    scorer = Scorer.from_checkpoint(trained_run, mode=mode, iterations=15)
    together = scorer.score_tensor(batch)
    for i in range(len(batch)):
        alone = scorer.score_tensor(batch[i : i + 1])
        for name in ("score", *scorer.component_names):
            np.testing.assert_allclose(getattr(alone, name)[0], getattr(together, name)[i],
                                       rtol=1e-4, atol=1e-6, err_msg=name)


def test_search_lowers_the_loss(trained_run, batch):
    options = dict(mode="search", score="anogan")
    start = Scorer.from_checkpoint(trained_run, iterations=0, **options).score_tensor(batch)
    searched = Scorer.from_checkpoint(trained_run, iterations=30, **options).score_tensor(batch)
    assert searched.score.mean() < start.score.mean()


def test_score_is_weighted_sum(trained_run, batch):
    scorer = Scorer.from_checkpoint(trained_run, mode="encoder", score="anogan", lam=0.3)
    scores = scorer.score_tensor(batch)
    np.testing.assert_allclose(scores.score, 0.7 * scores.residual + 0.3 * scores.discrimination,
                               rtol=1e-5)


def test_fanogan_is_the_encoders_own_izi_f_score(trained_run, batch):
    """mse + kappa * feature_mse of G(E(x)), kappa the one the encoder was trained with."""
    from anomaly.checkpoint import load_checkpoint

    state = load_checkpoint(trained_run)
    assert state["encoder_kappa"] == 1.0  # the config's default, stored beside E
    scorer = Scorer.from_checkpoint(trained_run, mode="encoder", score="fanogan")
    scores = scorer.score_tensor(batch)
    family = scorer.family
    with torch.no_grad():
        reconstruction = family.generator(family.encoder(batch)).float()
        features = family.discriminator.features
        mse = (batch - reconstruction).square().flatten(1).mean(1).numpy()
        feature_mse = (features(batch) - features(reconstruction)).square().flatten(1) \
            .mean(1).numpy()
    np.testing.assert_allclose(scores.mse, mse, rtol=1e-4)
    np.testing.assert_allclose(scores.feature_mse, feature_mse, rtol=1e-4)
    np.testing.assert_allclose(scores.score, mse + feature_mse, rtol=1e-4)
    assert family.report_settings("fanogan")["kappa"] == 1.0
    assert family.report_settings("anogan")["lam"] == family.lam  # it weighs anogan here
    assert family.report_settings("lung-opacity")["lam"] is None  # not searched, not used


def test_fanogan_reads_the_stored_kappa_and_refuses_a_bad_one(trained_run, batch, tmp_path):
    from anomaly.checkpoint import load_checkpoint

    state = load_checkpoint(trained_run)
    state["encoder_kappa"] = 3.0
    save_checkpoint(state, tmp_path / "kappa3.pt")
    scores = Scorer.from_checkpoint(tmp_path / "kappa3.pt", mode="encoder",
                                    score="fanogan").score_tensor(batch)
    np.testing.assert_allclose(scores.score, scores.mse + 3.0 * scores.feature_mse, rtol=1e-5)
    for bad in (float("nan"), -1.0, "2"):
        state["encoder_kappa"] = bad
        save_checkpoint(state, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="encoder_kappa"):
            Scorer.from_checkpoint(tmp_path / "bad.pt", mode="encoder", score="fanogan")


def test_normal_scores_stored_before_a_component_are_scored_again(default_run, tmp_path):
    """A run whose stored held-out components lack one (written by an earlier version)
    gets its held-out normals scored again for p-values, never a missing column."""
    from anomaly.checkpoint import load_checkpoint

    state = load_checkpoint(default_run)
    assert {"mse", "feature_mse"} <= set(state["score_stats"]["encoder"]["components"])
    for fitted in state["score_stats"].values():
        for name in ("mse", "feature_mse"):
            fitted["components"].pop(name, None)
    save_checkpoint(state, tmp_path / "old.pt")
    scorer = Scorer.from_checkpoint(tmp_path / "old.pt", mode="encoder", score="fanogan")
    assert scorer.fitted_normal_scores() is None  # not read from the stale statistics
    fresh = Scorer.from_checkpoint(default_run, mode="encoder", score="fanogan")
    np.testing.assert_allclose(scorer.decision(alpha=0.5).normal_scores,
                               fresh.decision(alpha=0.5).normal_scores, rtol=1e-5)


def test_discriminator_density_scores_the_embedding_it_was_fitted_on(trained_run, batch):
    from anomaly.density import mahalanobis
    from anomaly.families.dcgan.density import flip_embedding

    scorer = Scorer.from_checkpoint(trained_run, mode="discriminator", score="density")
    family = scorer.family
    with torch.no_grad():
        embedding = flip_embedding(family.discriminator, batch)[0]
    expected = mahalanobis(embedding, family.feature_density).numpy()
    np.testing.assert_allclose(scorer.score_tensor(batch).score, expected, rtol=1e-5)


def test_default_mode_is_encoder_when_trained(trained_run):
    assert Scorer.from_checkpoint(trained_run).mode == "encoder"


def test_score_arrays_uses_checkpoint_preprocessing(trained_run):
    import dataclasses

    from anomaly.preprocess import preprocess

    scorer = Scorer.from_checkpoint(trained_run, mode="encoder")
    assert scorer.preprocess_config.clahe and scorer.preprocess_config.image_size == 32
    y, x = np.mgrid[0:50, 0:70] / 70.0
    raw = (0.3 + 0.4 * x + 0.05 * np.sin(40 * y)).astype(np.float32)  # low contrast
    scores = scorer.score_arrays([raw, raw])
    assert scores.inputs.shape == (2, 1, 32, 32)
    assert scores.score[0] == pytest.approx(scores.score[1])
    expected = preprocess(raw, scorer.preprocess_config)  # CLAHE at the checkpoint's size
    np.testing.assert_allclose(scores.inputs[0, 0].numpy(), expected, atol=1e-6)
    without_clahe = preprocess(raw, dataclasses.replace(scorer.preprocess_config, clahe=False))
    assert np.abs(scores.inputs[0, 0].numpy() - without_clahe).max() > 0.05


def test_folder_with_corrupt_file(trained_run, normal_dir, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = find_images(normal_dir)[:3]
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "corrupt.png").write_bytes(b"\x89PNG garbage")
    (folder / "empty.jpg").write_bytes(b"")
    scorer = Scorer.from_checkpoint(trained_run, mode="search", iterations=5)
    out = tmp_path / "scores.csv"
    result = score_files(scorer, find_images(folder), out, tmp_path / "heat", progress=False)
    assert len(result.paths) == 3
    assert sorted(p.name for p, _ in result.failures) == ["corrupt.png", "empty.jpg"]
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == ["path", "score", "residual", "discrimination", "mse",
                            "feature_mse", "opacity", "critic", "density", "brightness"]
    assert len(rows) == 3
    assert len(list((tmp_path / "heat").glob("*.png"))) == 3


def test_resume_skips_scored_rows(trained_run, normal_dir, tmp_path):
    scorer = Scorer.from_checkpoint(trained_run, mode="encoder", batch_size=2)
    paths = find_images(normal_dir)[:6]
    out = tmp_path / "scores.csv"
    score_files(scorer, paths[:3], out, progress=False)
    result = score_files(scorer, paths, out, resume=True, progress=False)
    assert len(result.paths) == 3
    rows = [r["path"] for r in csv.DictReader(open(out))]
    assert sorted(rows) == sorted(str(p) for p in paths)


def test_foreign_checkpoints_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a cxr-anomaly-gan checkpoint"):
        Scorer.from_checkpoint(plain)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Scorer.from_checkpoint(tmp_path / "missing")


class Payload:
    """Unpickling this would create a file: the loader must never do it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    save_checkpoint({"format": "cxr-anomaly-gan", "payload": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        Scorer.from_checkpoint(path)
    assert not marker.exists()


def test_density_of_identical_embeddings_is_finite():
    """All-alike features (a dead unit everywhere, tiny data) still give a usable density."""
    from anomaly.density import fit_density, mahalanobis

    density = fit_density(np.ones((10, 4)))
    assert torch.isfinite(density["precision"]).all()
    distance = mahalanobis(torch.zeros(1, 4), density)
    assert distance.item() == pytest.approx(2.0)  # |0 - 1| over 4 unit-variance axes
    fitted = fit_density(np.random.default_rng(0).normal(size=(50, 4)))
    assert not torch.equal(fitted["precision"], torch.eye(4))  # Ledoit-Wolf otherwise
    diverged = np.ones((10, 4))
    diverged[3, 1] = np.nan  # not "all alike": refused, never an identity density
    with pytest.raises(ValueError, match="finite embeddings"):
        fit_density(diverged)


def test_a_two_block_critic_takes_a_two_level_map_head():
    from anomaly.families.critic.network import CriticArchitecture, OpacityCritic

    critic = OpacityCritic(CriticArchitecture(image_size=32, blocks=2, map_width=4,
                                              map_levels=2)).eval()
    logits = critic.opacity_logits(critic.block_features(torch.zeros(1, 1, 32, 32)))
    assert logits.shape == (1, 1, 32, 32)
