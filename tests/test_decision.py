"""Labels at a stored threshold, and conformal p-values against the held-out normals."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from anomaly.checkpoint import load_checkpoint
from anomaly.decision import conformal_p_values, make_decision
from anomaly.evaluate_model import calibrate_threshold
from anomaly.score import Scorer
from cli.anomaly_cli import main as anomaly_main


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
                                                  str(labelled_dir), "--alpha", "0.05",
                                                  "--no-progress"])
    assert conformal.exit_code == 0 and "conformal" in conformal.output
