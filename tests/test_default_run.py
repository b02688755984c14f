"""Every documented score and evaluate path on a tiny run of the built-in defaults."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from anomaly.checkpoint import load_checkpoint
from anomaly.evaluate_model import evaluate_model
from anomaly.score import Scorer, available_modes
from cli.anomaly_cli import main as anomaly_main

ITERATIONS = {"search": 2, "encoder-search": 2}  # the search modes, kept short


def mode_scores(run) -> list[tuple[str, str]]:
    """(mode, score) for every mode the default run holds and every score it offers."""
    state = load_checkpoint(run)
    pairs = []
    for mode in available_modes(state):
        scorer = Scorer.from_state(state, mode=mode, iterations=ITERATIONS.get(mode))
        pairs += [(mode, score) for score in [*scorer.family.score_kinds, "lung-brightness"]
                  if mode != "discriminator" or score in ("density", "lung-brightness")]
    return pairs


def test_the_default_run_holds_both_families_and_scores_with_the_critic(default_run):
    state = load_checkpoint(default_run)
    assert state["families"] == ["critic", "dcgan"] and state["generator_trained"]
    assert available_modes(state) == ["critic", "discriminator", "search", "encoder",
                                      "encoder-search"]
    scorer = Scorer.from_checkpoint(default_run)
    assert (scorer.mode, scorer.score) == ("critic", "density")  # the run's default
    assert state["critic"]["default_score"] == "density"
    assert state["critic"]["embedding"] == "sqrt"
    assert len(mode_scores(default_run)) == 7 + 2 + 3 * 6  # every pair below


def test_every_mode_and_score_of_the_default_run(default_run, labelled_dir):
    for mode, score in mode_scores(default_run):
        scorer = Scorer.from_checkpoint(default_run, mode=mode, score=score,
                                        iterations=ITERATIONS.get(mode))
        result = scorer.score_paths(sorted(labelled_dir.rglob("*.png"))[:3], progress=False,
                                    on_batch=lambda paths, s, sc=scorer: sc.heatmap_panel(s, 0),
                                    heatmaps=True)
        assert len(result.score) == 3 and np.isfinite(result.score).all(), (mode, score)


@pytest.mark.parametrize("with_val", [True, False])
def test_evaluate_every_mode_with_and_without_validation(default_run, labelled_dir, val_dir,
                                                         tmp_path, with_val):
    """Without --val the threshold comes from the held-out normals, in every mode (this
    path once crashed where the mode draws no reconstruction)."""
    for mode in available_modes(load_checkpoint(default_run)):
        out = tmp_path / mode
        report = evaluate_model(default_run, labelled_dir, out,
                              val_dir=val_dir if with_val else None, mode=mode,
                              iterations=ITERATIONS.get(mode), resamples=20, progress=False,
                              log=lambda *a: None)
        assert report["threshold_source"] == ("val" if with_val else "normal-val-quantile")
        assert json.loads((out / "report.json").read_text())["mode"] == mode


def test_cli_score_writes_the_critic_components(default_run, labelled_dir, tmp_path):
    out = tmp_path / "scores.csv"
    done = CliRunner().invoke(anomaly_main, ["score", "--model", str(default_run), "--dir",
                                             str(labelled_dir), "--out", str(out),
                                             "--no-progress"])
    assert done.exit_code == 0, done.output
    with open(out) as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "score", "label", "p_value", "density", "logit", "quiet", "map",
                       "brightness"]
    assert len(rows) == 21
    refused = CliRunner().invoke(anomaly_main, ["score", "--model", str(default_run),
                                                "--dir", str(labelled_dir),
                                                "--iterations", "20"])
    assert refused.exit_code != 0 and "--iterations applies to the search modes" in \
        refused.output
