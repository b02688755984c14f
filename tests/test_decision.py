"""Labels at a stored threshold, and conformal p-values against the held-out normals."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from anomaly.checkpoint import load_checkpoint
from anomaly.decision import conformal_p_values, make_decision
from anomaly.evaluate_model import calibrate_threshold
from anomaly.score import Scorer
from cli.anomaly_cli import main as anomaly_main
from tests.conftest import write_images


def test_p_value_counts_normals_at_least_as_high_with_the_plus_one():
    normal = [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_allclose(conformal_p_values([0.5, 2.0, 3.5, 9.0], normal),
                               [5 / 5, 4 / 5, 2 / 5, 1 / 5])


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_flagging_p_below_alpha_keeps_false_positives_at_alpha(alpha):
    """Fresh normals from the held-out normals' distribution: the flagged share stays at
    or below alpha (within three standard errors), and is not trivially zero."""
    rng = np.random.default_rng(0)
    shares = []
    for _ in range(20):  # 20 calibration sets of 99 held-out normals
        decision = make_decision(rng.normal(size=99), alpha=alpha)
        fresh = rng.normal(size=2000)
        shares.append(np.mean(np.array(decision.labels(fresh)) == "anomalous"))
    standard_error = np.sqrt(alpha * (1 - alpha) / (20 * 2000))
    assert np.mean(shares) <= alpha + 3 * standard_error
    assert np.mean(shares) >= alpha - 0.02  # the guarantee is not met by flagging nothing


def test_decision_order_given_then_stored_then_heldout_quantile():
    normal = np.arange(100.0)
    assert make_decision(normal, {"value": 7, "source": "val-youden"}, threshold=3) \
        .source == "given"
    stored = make_decision(normal, {"value": 7, "source": "val-youden"})
    assert (stored.threshold, stored.source) == (7, "val-youden")
    fallback = make_decision(normal)
    assert fallback.source == "heldout-normal-quantile"
    assert fallback.threshold == pytest.approx(np.quantile(normal, 0.95))
    assert fallback.labels([94.0, 95.0, 96.0]) == ["normal", "anomalous", "anomalous"]
    with pytest.raises(ValueError, match="held out"):
        make_decision(None, alpha=0.05)
    nothing = make_decision(None)  # no threshold anywhere: scores without labels
    assert nothing.labels([1.0, 2.0]) == ["", ""] and "calibrate" in nothing.describe()
    with pytest.raises(ValueError, match="between 0 and 1"):
        make_decision(normal, alpha=1.5)


def test_an_alpha_below_the_smallest_p_value_is_refused_not_silently_flagging_nothing():
    with pytest.raises(ValueError, match="can flag no film.*1/11"):
        make_decision(np.arange(10.0), alpha=0.05)  # the smallest p-value is 1/11
    decision = make_decision(np.arange(19.0), alpha=0.05)  # 1/20: the least that flags
    assert decision.labels([100.0]) == ["anomalous"]


def test_calibrate_stores_a_threshold_that_score_then_uses(default_run, labelled_dir,
                                                           tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(default_run, run)
    before = Scorer.from_checkpoint(run).decision()
    assert before.source == "heldout-normal-quantile"
    entry = calibrate_threshold(run, labelled_dir, progress=False, log=lambda *a: None)
    assert entry["source"] == "val-youden" and entry["n"] == 20
    after = Scorer.from_checkpoint(run).decision()
    assert (after.threshold, after.source) == (entry["value"], "val-youden")
    # another score kind has its own threshold: the stored one is not used for it
    assert Scorer.from_checkpoint(run, score="logit").decision().source == \
        "heldout-normal-quantile"
    assert len(load_checkpoint(run)["thresholds"]) == 1

    out = tmp_path / "scores.csv"
    done = CliRunner().invoke(anomaly_main, ["score", "--model", str(run), "--dir",
                                             str(labelled_dir), "--out", str(out),
                                             "--no-progress"])
    assert done.exit_code == 0, done.output
    assert f"threshold {entry['value']:.5g} (val-youden)" in done.output
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:4] == ["path", "score", "label", "p_value"]
    for row in rows:
        if abs(float(row["score"]) - entry["value"]) < 1e-5:
            continue  # at the threshold itself: the CSV's 6 decimals cannot tell
        flagged = float(row["score"]) >= entry["value"]
        assert row["label"] == ("anomalous" if flagged else "normal")
        assert 0 < float(row["p_value"]) <= 1
    given = CliRunner().invoke(anomaly_main, ["score", "--model", str(run), "--dir",
                                              str(labelled_dir), "--threshold", "-1e9",
                                              "--no-progress"])
    assert given.exit_code == 0 and given.output.count("\tanomalous\t") == 20
    conformal = CliRunner().invoke(anomaly_main, ["score", "--model", str(run), "--dir",
                                                  str(labelled_dir), "--alpha", "0.2",
                                                  "--no-progress"])
    assert conformal.exit_code == 0 and "conformal" in conformal.output
    unreachable = CliRunner().invoke(anomaly_main, ["score", "--model", str(run), "--dir",
                                                    str(labelled_dir), "--alpha", "0.01",
                                                    "--no-progress"])  # below 1/(n+1)
    assert unreachable.exit_code == 1 and "can flag no film" in unreachable.output


def site_folder(root: Path, normals: int) -> Path:
    """Another site's validation films: ``normals`` normal films and 4 with a blob."""
    write_images(root / "NORMAL", normals, seed=31)
    write_images(root / "PNEUMONIA", 4, seed=32, blob=True)
    return root


def test_calibrate_fits_the_region_threshold_again_on_the_sites_normals(default_run,
                                                                         tmp_path):
    import json
    import shutil

    from anomaly.checkpoint import save_checkpoint
    from anomaly.export import export_run
    from anomaly.regions import REGION_MIN_NORMALS, REGION_QUANTILE, scores_and_heat_maxima
    from anomaly.train import checkpoint_path, fit_score_statistics

    run = tmp_path / "run"
    shutil.copytree(default_run, run)
    site = site_folder(tmp_path / "site", REGION_MIN_NORMALS + 4)
    before = Scorer.from_checkpoint(run)
    trained = before.region_threshold
    assert trained is not None and before.heat_name == "map"
    entry = calibrate_threshold(run, site, progress=False, log=lambda *a: None)
    _, maxima = scores_and_heat_maxima(before, sorted((site / "NORMAL").iterdir()))
    expected = np.quantile(list(maxima.values()), REGION_QUANTILE)
    fitted = entry["region_thresholds"]["map"]
    assert list(entry["region_thresholds"]) == ["map"]
    assert fitted["n"] == REGION_MIN_NORMALS + 4
    assert fitted["value"] == pytest.approx(expected, rel=1e-6)
    assert not np.isclose(expected, trained)  # the test tells the two apart
    after = Scorer.from_checkpoint(run)
    assert after.region_threshold == fitted["value"]
    # stored with the score threshold: another score kind keeps the run's own
    assert Scorer.from_checkpoint(run, score="logit").region_threshold == trained
    # and so does another heat map of the same score, until it is calibrated too
    own_gradcam = load_checkpoint(run)["score_stats"]["critic"]["region_thresholds"]["gradcam"]
    assert Scorer.from_checkpoint(run, heat="gradcam").region_threshold == own_gradcam
    both = calibrate_threshold(run, site, heat="gradcam", progress=False, log=lambda *a: None)
    assert sorted(both["region_thresholds"]) == ["gradcam", "map"]  # the map's is kept
    assert Scorer.from_checkpoint(run).region_threshold == fitted["value"]
    assert Scorer.from_checkpoint(run, heat="gradcam").region_threshold == \
        both["region_thresholds"]["gradcam"]["value"] != own_gradcam
    # the export carries the site's threshold
    export_run(run, tmp_path / "exported")
    info = json.loads((tmp_path / "exported" / "export.json").read_text())
    assert info["region_threshold"] == pytest.approx(fitted["value"])
    # another family retrained (the DCGAN's encoder): the critic's thresholds stay
    said = []
    state = load_checkpoint(run)
    state["score_stats"]["critic"]["marker"] = 1  # kept as it was, not fitted again
    save_checkpoint(state, checkpoint_path(run))
    fit_score_statistics(run, log=said.append, retrained="dcgan")
    assert len(load_checkpoint(run)["thresholds"]) == 1 and not any("dropped" in s for s in said)
    assert load_checkpoint(run)["score_stats"]["critic"]["marker"] == 1
    assert said[-1].endswith("for modes: discriminator, encoder")  # the DCGAN's alone
    assert Scorer.from_checkpoint(run).region_threshold == fitted["value"]
    # the model changes (its statistics fitted again): every stored threshold is dropped
    fit_score_statistics(run, log=said.append)
    assert "thresholds" not in load_checkpoint(run) and any("dropped 1" in s for s in said)
    assert Scorer.from_checkpoint(run).region_threshold == pytest.approx(trained)
    # a run without held-out normals drops them too
    state = load_checkpoint(run)
    state.update(holdout_paths=[], thresholds={"{}": {"value": 1.0, "source": "given"}})
    save_checkpoint(state, checkpoint_path(run))
    fit_score_statistics(run, log=said.append)
    assert "thresholds" not in load_checkpoint(run)


def test_only_the_retrained_familys_calibrated_thresholds_are_dropped():
    import json

    from anomaly.train import drop_stale_thresholds

    def key(mode):
        return json.dumps({"mode": mode, "score": "x"}, sort_keys=True)

    stored = {key("critic"): {"value": 1.0}, key("encoder"): {"value": 2.0},
              "not json": {"value": 3.0}, key(["critic"]): {"value": 4.0},
              "{}": {"value": 5.0, "mode": "critic"}}  # the entry names its mode
    state = {"thresholds": dict(stored)}
    assert drop_stale_thresholds(state, "dcgan") == 3  # the encoder's, and the unreadable
    assert sorted(state["thresholds"]) == sorted([key("critic"), "{}"])
    assert drop_stale_thresholds(state, "critic") == 2 and "thresholds" not in state
    state = {"thresholds": dict(stored)}
    assert drop_stale_thresholds(state) == 5 and "thresholds" not in state
    assert drop_stale_thresholds({}) == 0


def test_calibrate_keeps_the_runs_region_threshold_with_too_few_normals_or_when_asked(
        default_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(default_run, run)
    trained = Scorer.from_checkpoint(run).region_threshold
    said = []
    few = calibrate_threshold(run, site_folder(tmp_path / "few", 10), progress=False,
                              log=said.append)
    assert "region_thresholds" not in few
    assert any("10 normal films with a heat map, fewer than the 20" in line for line in said)
    assert any("kept the run's own region threshold" in line for line in said)
    assert Scorer.from_checkpoint(run).region_threshold == trained
    done = CliRunner().invoke(anomaly_main, [
        "calibrate", "--model", str(run), "--val", str(site_folder(tmp_path / "many", 24)),
        "--no-regions", "--no-progress"])
    assert done.exit_code == 0, done.output
    assert "stored threshold" in done.output and "stored region" not in done.output
    assert Scorer.from_checkpoint(run).region_threshold == trained
    done = CliRunner().invoke(anomaly_main, [
        "calibrate", "--model", str(run), "--val", str(tmp_path / "many"), "--no-progress"])
    assert done.exit_code == 0 and "stored region threshold" in done.output, done.output
    site = Scorer.from_checkpoint(run).region_threshold
    assert site != trained
    # calibrating again without refitting keeps the site's, and says so
    done = CliRunner().invoke(anomaly_main, [
        "calibrate", "--model", str(run), "--val", str(tmp_path / "many"), "--no-regions",
        "--no-progress"])
    assert done.exit_code == 0 and "calibrated before on 24 normal films" in done.output
    assert Scorer.from_checkpoint(run).region_threshold == site
    from anomaly.regions import REGION_MIN_NORMALS

    usage = CliRunner().invoke(anomaly_main, ["calibrate", "--help"]).output
    assert f"(at least {REGION_MIN_NORMALS})" in " ".join(usage.split())


@pytest.mark.parametrize("value", [float("nan"), 0.0, -1.0, "x"])
def test_a_stored_region_threshold_that_is_not_a_positive_number_is_refused(
        default_run, tmp_path, value):
    import torch

    from anomaly.checkpoint import CheckpointError

    state = load_checkpoint(default_run)
    state["thresholds"] = {"{}": {"value": 1.0, "source": "val-youden",
                                  "region_thresholds": {"map": {"value": value, "n": 24}}}}
    path = tmp_path / "tampered.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="thresholds.region_thresholds.map"):
        load_checkpoint(path)


def test_site_regions_example_calibrates_on_one_half_and_checks_the_other(default_run,
                                                                          tmp_path):
    import json
    import subprocess
    import sys

    site = site_folder(tmp_path / "site", 48)
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "examples/site_regions.py", "--model",
                           str(default_run), "--data", str(site), "--json", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert (figures["calibration_normals"], figures["check_normals"]) == (24, 24)
    assert figures["abnormal"] == 4 and figures["site_threshold"] is not None
    assert figures["site_threshold"] != figures["run_threshold"]
    for rule in ("run", "site"):
        assert all(0 <= figures[rule][kind] <= 1 for kind in ("normals", "abnormal"))
    assert load_checkpoint(default_run).get("thresholds") is None  # the run is untouched
    grad = tmp_path / "gradcam.json"  # the density's Grad-CAM instead of the map
    done = subprocess.run([sys.executable, "examples/site_regions.py", "--model",
                           str(default_run), "--data", str(site), "--heat", "gradcam",
                           "--json", str(grad)],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    gradcam = json.loads(grad.read_text())
    own = load_checkpoint(default_run)["score_stats"]["critic"]["region_thresholds"]
    assert gradcam["heat"] == "gradcam" and gradcam["run_threshold"] == own["gradcam"]
    assert gradcam["site_threshold"] is not None and gradcam["site_threshold"] != \
        figures["site_threshold"]
