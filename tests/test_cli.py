"""The anomaly command line, end to end on tiny images."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from anomaly.evaluate import read_scores_csv
from cli.anomaly_cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_train_score_evaluate_compare(tmp_path, normal_dir, labelled_dir):
    run_dir = tmp_path / "run"
    result = run("train-gan", "--data", normal_dir, "--out", run_dir, "--image-size", 32,
                 "--epochs", 1, "--batch-size", 8, "--encoder-epochs", 1, "--no-progress")
    assert result.exit_code == 0, result.output
    assert (run_dir / "checkpoints" / "last.pt").exists()

    image = next(normal_dir.glob("*.png"))
    result = run("score", "--model", run_dir, "--image", image, "--mode", "search",
                 "--iterations", 3, "--no-progress")
    assert result.exit_code == 0, result.output
    assert str(image) in result.output

    report_dir = tmp_path / "report"
    result = run("evaluate", "--model", run_dir, "--data", labelled_dir, "--val", labelled_dir,
                 "--out", report_dir, "--resamples", 50, "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "report.json").read_text())
    _, labels, scores = read_scores_csv(report_dir / "scores.csv")
    assert report["auroc"] == roc_auc_score(labels, scores)
    assert report["threshold_source"] == "val"
    for name in ("roc.png", "confusion.png", "histogram.png"):
        assert (report_dir / name).exists()

    result = run("compare", report_dir, report_dir, "--out", tmp_path / "cmp")
    assert result.exit_code == 0 and "| report |" in result.output
    assert (tmp_path / "cmp" / "roc.png").exists()


def test_errors_are_one_line(tmp_path, normal_dir):
    not_ckpt = tmp_path / "x.pt"
    not_ckpt.write_bytes(b"garbage")
    result = run("score", "--model", not_ckpt, "--dir", normal_dir)
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "x.pt" in result.output
    assert "Traceback" not in result.output

    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("train-gan", "--data", empty, "--out", tmp_path / "r")
    assert result.exit_code == 1 and "no image files" in result.output

    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("epochz: 2\n")
    result = run("train-gan", "--data", normal_dir, "--out", tmp_path / "r", "--config", bad_config)
    assert result.exit_code == 1 and "epochz" in result.output
