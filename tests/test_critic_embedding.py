"""The critic's density embedding (``l2`` or ``sqrt``) and its ``quiet`` component: what
they compute, a run that records them, the combined score, stored statistics from before
the component, and exports old and new."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomaly.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from anomaly.density import mahalanobis
from anomaly.export import export_run
from anomaly.families.critic.scorer import embed_pooled, quietness
from anomaly.score import Scorer
from anomaly.train import TrainConfig, train_run
from tests.conftest import TINY_DEFAULT

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "data" / "test").rglob("*.jpeg"))


def test_embeddings_and_quietness_of_pooled_features():
    pooled = torch.tensor([[4.0, 0.0, 9.0], [1.0, 1.0, 0.0]])
    torch.testing.assert_close(embed_pooled(pooled), F.normalize(pooled, dim=1))
    roots = embed_pooled(pooled, "sqrt")
    torch.testing.assert_close(roots, F.normalize(pooled.sqrt(), dim=1), atol=1e-4, rtol=0)
    assert roots[0, 0] / roots[0, 2] == pytest.approx(2 / 3, rel=1e-4)  # 4 and 9 -> 2 and 3
    with pytest.raises(ValueError, match="embedding must be one of l2, sqrt"):
        embed_pooled(pooled, "cube")
    torch.testing.assert_close(quietness(pooled), -torch.log(pooled.norm(dim=1)))
    assert quietness(pooled * 2)[0] < quietness(pooled)[0]  # features firing more: less quiet
    assert torch.isfinite(quietness(torch.zeros(1, 3))).all()
    zero = torch.zeros(1, 3, requires_grad=True)  # a channel that never fires
    embed_pooled(zero + torch.tensor([[0.0, 1.0, 2.0]]), "sqrt").sum().backward()
    assert torch.isfinite(zero.grad).all()  # the square root's floor: no inf at zero
    with pytest.raises(ValueError, match="critic: embedding"):
        TrainConfig(critic_embedding="cube")


@pytest.fixture(scope="module")
def sqrt_run(tmp_path_factory, normal_dir) -> Path:
    run = tmp_path_factory.mktemp("sqrt_run")
    train_run(TrainConfig(**{**TINY_DEFAULT, "epochs": 0, "encoder_epochs": 0,
                             "critic_embedding": "sqrt", "critic_score": "density+quiet"}),
              normal_dir, run, progress=False, log=lambda *a: None)
    return run


def test_a_sqrt_run_fits_and_scores_its_density_on_square_roots(sqrt_run, tmp_path):
    state = load_checkpoint(sqrt_run)
    assert state["critic"]["embedding"] == "sqrt"
    assert state["format_version"] == 3  # versions before it would read its density as l2
    assert state["critic"]["default_score"] == "density+quiet"
    scorer = Scorer.from_checkpoint(sqrt_run, device="cpu")
    assert scorer.score == "density+quiet"  # the run's own default
    family = scorer.family
    assert family.embedding == "sqrt" and family.report_settings("density")["embedding"] == "sqrt"
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    scores = scorer.score_tensor(images)
    with torch.no_grad():
        pooled = family.critic.pooled(family.critic.feature_map(images))
    expected = mahalanobis(embed_pooled(pooled, "sqrt"), family.density).numpy()
    np.testing.assert_allclose(scores.density, expected, rtol=1e-4)
    assert not np.allclose(scores.density, mahalanobis(embed_pooled(pooled), family.density),
                           rtol=1e-3)  # the l2 embedding is another number
    np.testing.assert_allclose(scores.quiet, quietness(pooled).numpy(), rtol=1e-5)
    gradcam = Scorer.from_checkpoint(sqrt_run, device="cpu", heat="gradcam")
    heat = gradcam.score_tensor(images)
    np.testing.assert_allclose(heat.density, scores.density, rtol=1e-4)
    assert np.isfinite(heat.heatmaps).all() and (heat.heatmaps >= 0).all()
    broken = {**state["critic"], "embedding": "cube"}
    with pytest.raises(CheckpointError, match="critic.embedding must be one of"):
        type(family).from_state(broken, torch.device("cpu"))


def test_density_plus_quiet_is_the_standardised_sum_and_old_statistics_are_refitted(
        default_run, tmp_path):
    both = Scorer.from_checkpoint(default_run, device="cpu", score="density+quiet")
    result = both.score_paths(EXAMPLES, progress=False)
    normal = both.normal_components
    standard = sum((np.asarray(result.components()[name]) - np.mean(normal[name]))
                   / np.std(normal[name]) for name in ("density", "quiet"))
    np.testing.assert_allclose(result.score, standard, rtol=1e-4, atol=1e-6)
    quiet = Scorer.from_checkpoint(default_run, device="cpu", score="quiet")
    np.testing.assert_allclose(quiet.score_paths(EXAMPLES, progress=False).score,
                               result.components()["quiet"], rtol=1e-6)

    state = load_checkpoint(default_run)  # statistics stored before the quiet component
    for component in state["score_stats"]["critic"]["components"]:
        assert component in ("density", "logit", "quiet", "map", "brightness")
    del state["score_stats"]["critic"]["components"]["quiet"]
    old = tmp_path / "old.pt"
    save_checkpoint(state, old)
    density = Scorer.from_checkpoint(old, device="cpu", score="density")
    assert "quiet" not in density.normal_components  # the plain density keeps them
    refitted = Scorer.from_checkpoint(old, device="cpu", score="density+quiet")
    assert "quiet" in refitted.normal_components  # scored again on the held-out films
    np.testing.assert_allclose(refitted.score_paths(EXAMPLES, progress=False).score,
                               result.score, rtol=1e-4, atol=1e-6)
    state["holdout_paths"] = []
    save_checkpoint(state, old)
    with pytest.raises(CheckpointError, match="held out from training"):
        Scorer.from_checkpoint(old, device="cpu", score="density+quiet")


def test_exports_carry_the_embedding_and_quiet_and_old_exports_still_score(
        sqrt_run, tmp_path):
    from anomaly.exported import ExportedScorer

    out = tmp_path / "export"
    export_run(sqrt_run, out, score="density+quiet")
    info = json.loads((out / "export.json").read_text())
    assert info["embedding"] == "sqrt" and "quiet" in info["components"]
    assert set(info["heldout_normal_components"]) == {"density", "quiet", "map"}
    exported = ExportedScorer(out).score_paths(EXAMPLES)
    scorer = Scorer.from_checkpoint(sqrt_run, device="cpu", score="density+quiet")
    expected = scorer.score_paths(EXAMPLES, progress=False)
    np.testing.assert_allclose(exported.score, expected.score, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(exported.components()["quiet"], expected.components()["quiet"],
                               rtol=1e-4)

    # an export written before the quiet component: no such output, no such component
    reader = ExportedScorer(out).reader
    images = np.random.default_rng(0).uniform(-1, 1, (2, 1, 32, 32)).astype(np.float32)
    outputs = ExportedScorer(out).session.run(None, {"images": images})
    old_info = {**info, "score": "density",
                "components": [c for c in info["components"] if c != "quiet"]}
    old_info["heldout_normal_components"] = {
        k: v for k, v in info["heldout_normal_components"].items() if k != "quiet"}
    old = type(reader)(old_info)
    old_components, old_heat = old.components(images, [outputs[0], outputs[1], outputs[3]])
    new_components, new_heat = reader.components(images, outputs)
    assert "quiet" not in old_components and "quiet" in new_components
    np.testing.assert_allclose(old_components["density"], new_components["density"])
    np.testing.assert_allclose(old_heat, new_heat)
    stale = tmp_path / "stale"
    shutil.copytree(out, stale)
    info["heldout_normal_components"]["quiet"] = None
    (stale / "export.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="no held-out normal quiet values"):
        ExportedScorer(stale).score_paths(EXAMPLES)


def test_quiet_probe_prints_each_recipe_against_the_clean_held_out_films(default_run, capsys):
    from tests.test_critic import run_example

    run_example("critic_quiet_probe", ["--model", str(default_run)])
    out = capsys.readouterr().out
    assert "held-out normal films, each also with lesions (seed 0)" in out
    for recipe in ("blobs", "consolidation", "patches"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {recipe} |"))
        quiet, density = (float(cell) for cell in row.split("|")[2:4])
        assert 0 <= quiet <= 1 and 0 <= density <= 1


def test_a_run_without_held_out_films_scores_with_density_by_default():
    from anomaly.families.critic.config import CriticConfig
    from anomaly.families.critic.train import default_score

    said = []
    config = CriticConfig(score="density+quiet")
    assert default_score(CriticConfig(), [], said.append) == "density" and not said
    assert default_score(config, ["a.png", "b.png"], said.append) == "density+quiet"
    assert default_score(config, ["a.png"], said.append) == "density" and said
    assert default_score(CriticConfig(score="logit"), [], said.append) == "logit"
    with pytest.raises(ValueError, match="critic: score must be one of"):
        TrainConfig(critic_score="brightest")


def test_a_stripped_checkpoint_is_refitted_from_its_folder(default_run, normal_dir,
                                                            tmp_path):
    from anomaly.pretrained import strip_for_scoring
    from tests.test_critic import run_example

    state = load_checkpoint(default_run)
    stripped = tmp_path / "stripped.pt"
    save_checkpoint(strip_for_scoring(state), stripped)
    refit = tmp_path / "refit"
    run_example("refit_critic_views", ["--model", str(stripped), "--data", str(normal_dir),
                                       "--embedding", "l2", "--default-score", "density",
                                       "--out", str(refit)])
    again = load_checkpoint(refit / "checkpoints" / "last.pt")
    assert sorted(again["holdout_paths"]) == sorted(state["holdout_paths"])  # drawn again
    assert again["critic"]["embedding"] == "l2"
    assert again["critic"]["default_score"] == "density"
    assert Scorer.from_checkpoint(refit, device="cpu").score == "density"
    save_checkpoint({**strip_for_scoring(state), "format_version": 2}, stripped)
    run_example("refit_critic_views", ["--model", str(stripped), "--data", str(normal_dir),
                                       "--embedding", "sqrt", "--out", str(tmp_path / "v3")])
    assert load_checkpoint(tmp_path / "v3" / "checkpoints" / "last.pt")["format_version"] == 3
    with pytest.raises(ValueError, match="--data"):
        run_example("refit_critic_views", ["--model", str(stripped), "--out",
                                           str(tmp_path / "no_data")])


def test_probes_that_embed_as_the_run_does_reproduce_a_sqrt_runs_density(
        sqrt_run, labelled_dir, capsys):
    from anomaly.data import scan_labelled_folder
    from anomaly.evaluate import auroc
    from tests.test_critic import _row, _subgroup_row, run_example

    folder = scan_labelled_folder(labelled_dir)
    density = Scorer.from_checkpoint(sqrt_run, device="cpu", score="density")
    own = auroc(folder.binary_labels, np.asarray(density.score_paths(
        folder.paths, progress=False).score))  # the run's density, square roots and all
    run_example("critic_subspace_probe", ["--model", str(sqrt_run), "--data",
                                          str(labelled_dir), "--kind", "img_00"])
    out = capsys.readouterr().out
    assert _subgroup_row(out, "every axis (the run's density, refitted)") == pytest.approx(
        [own, own], abs=2e-3)
    run_example("critic_varied_density_probe", ["--model", str(sqrt_run), "--data",
                                                str(labelled_dir), "--kind", "img_00"])
    out = capsys.readouterr().out
    assert _subgroup_row(out, "0 copies")[0] == pytest.approx(own, abs=2e-3)
    for probe, row in (("critic_block_probe", "block 4"),
                       ("critic_cell_probe", "global density (the default)"),
                       ("critic_view_probe", "one view")):
        run_example(probe, ["--model", str(sqrt_run), "--data", str(labelled_dir)])
        out = capsys.readouterr().out
        assert _row(out, row) == pytest.approx(own, abs=2e-3), probe


def test_quiet_sides_probe_scores_quiet_either_way_beside_the_runs_own_scores(
        sqrt_run, labelled_dir, capsys):
    import sys

    from anomaly.data import scan_labelled_folder
    from anomaly.evaluate import auroc
    from tests.test_critic import _subgroup_row, run_example

    sys.path.insert(0, str(ROOT / "examples"))
    from critic_quiet_sides import sided_scores

    normal = {"density": [1.0, 3.0], "quiet": [0.0, 2.0], "brightness": [0.4, 0.6]}
    scores = sided_scores({"density": np.array([2.0, 4.0]), "quiet": np.array([-1.0, 3.0]),
                           "brightness": np.array([0.5, 0.6])}, normal)
    np.testing.assert_allclose(scores["density+quiet (quieter = abnormal)"], [-2.0, 4.0])
    np.testing.assert_allclose(scores["density + abs(quiet) (either way)"], [2.0, 4.0])
    np.testing.assert_allclose(scores["joint: sqrt(density² + quiet_z²)"],
                               [np.sqrt(8.0), np.sqrt(20.0)])
    np.testing.assert_allclose(scores["density+brightness (brighter = abnormal)"], [0.0, 3.0])

    folder = scan_labelled_folder(labelled_dir)
    own = {}
    for score in ("density", "density+quiet"):
        scorer = Scorer.from_checkpoint(sqrt_run, device="cpu", score=score)
        own[score] = auroc(folder.binary_labels, np.asarray(scorer.score_paths(
            folder.paths, progress=False).score))
    run_example("critic_quiet_sides", ["--model", str(sqrt_run), "--data", str(labelled_dir),
                                       "--kind", "img_00"])
    out = capsys.readouterr().out
    assert _subgroup_row(out, "density")[0] == pytest.approx(own["density"], abs=1e-6)
    assert _subgroup_row(out, "density+quiet (quieter = abnormal)")[0] == pytest.approx(
        own["density+quiet"], abs=1e-6)
    assert 0 <= _subgroup_row(out, "density + abs(quiet) (either way)")[0] <= 1


def test_residual_probe_embeds_as_the_run_does(default_run, labelled_dir, capsys):
    from anomaly.data import scan_labelled_folder
    from anomaly.evaluate import auroc
    from tests.test_critic import _row, run_example

    assert load_checkpoint(default_run)["critic"]["embedding"] == "sqrt"  # the default
    folder = scan_labelled_folder(labelled_dir)
    scorer = Scorer.from_checkpoint(default_run, device="cpu", score="density")
    own = auroc(folder.binary_labels, np.asarray(scorer.score_paths(
        folder.paths, progress=False).score))
    run_example("critic_residual_probe", ["--model", str(default_run), "--data",
                                          str(labelled_dir)])
    out = capsys.readouterr().out
    assert _row(out, "critic density (default)") == pytest.approx(own, abs=1e-6)
    for name in ("critic distance 1 - cos(e(x), e(G(E(x))))",
                 "critic density of G(E(x)) (control)"):
        assert 0 <= _row(out, name) <= 1


def test_pooling_probe_reproduces_the_density_and_weighs_cells(sqrt_run, labelled_dir, capsys):
    import sys

    from anomaly.data import scan_labelled_folder
    from anomaly.evaluate import auroc
    from tests.test_critic import _subgroup_row, run_example

    sys.path.insert(0, str(ROOT / "examples"))
    from critic_pooling_probe import cell_weights, poolings
    from probe_common import film_cells

    weights = cell_weights(torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4), 2)
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.0], [0.5, 0.0]]))
    cells = torch.zeros(1, 2, 2, 2)
    cells[0, 0, :, 0] = 4.0  # channel 0 fires in the left cells only, channel 1 nowhere
    left = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    pooled = poolings(cells, left, 1 - left, "l2")
    torch.testing.assert_close(pooled["lung-prior mean"], torch.tensor([[1.0, 0.0]]))
    assert pooled["lung-field mean"].abs().max() < 1e-6  # nothing fires where it weighs
    assert pooled["mean and spread"].shape == (1, 4)
    critic = Scorer.from_checkpoint(sqrt_run, device="cpu").family.critic
    films = torch.rand(2, 1, 32, 32) * 2 - 1  # two views: a film's cells mirror its mirror's
    torch.testing.assert_close(film_cells(critic, films.flip(-1), 2),
                               film_cells(critic, films, 2).flip(-1), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(film_cells(critic, films.flip(-1), 1),
                              film_cells(critic, films, 1).flip(-1), rtol=1e-4, atol=1e-5)

    folder = scan_labelled_folder(labelled_dir)
    scorer = Scorer.from_checkpoint(sqrt_run, device="cpu", score="density")
    own = auroc(folder.binary_labels, np.asarray(scorer.score_paths(
        folder.paths, progress=False).score))
    run_example("critic_pooling_probe", ["--model", str(sqrt_run), "--data", str(labelled_dir),
                                         "--kind", "img_00"])
    out = capsys.readouterr().out
    assert _subgroup_row(out, "mean")[0] == pytest.approx(own, abs=2e-3)
    assert 0 <= _subgroup_row(out, "GeM (p=3)")[0] <= 1

