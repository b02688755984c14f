"""The anomaly command line, end to end on tiny images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from anomaly.data import scan_labelled_folder
from anomaly.evaluate import pick_threshold, read_scores_csv
from anomaly.score import Scorer
from cli.anomaly_cli import main
from tests.report_page import ReportPage, check_page_against_report, decoded_images

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_train_score_evaluate_compare(tmp_path, normal_dir, labelled_dir):
    from tests.conftest import write_images

    val_dir = tmp_path / "val"  # a validation folder of its own, not the test folder
    write_images(val_dir / "NORMAL", 6, seed=12)
    write_images(val_dir / "PNEUMONIA", 6, seed=13, blob=True)
    run_dir = tmp_path / "run"
    result = run("train-gan", "--data", normal_dir, "--out", run_dir, "--image-size", 32,
                 "--critic-epochs", 2, "--epochs", 1, "--batch-size", 8, "--encoder-epochs", 1,
                 "--no-progress")
    assert result.exit_code == 0, result.output
    assert (run_dir / "checkpoints" / "last.pt").exists()

    image = next(normal_dir.glob("*.png"))
    result = run("score", "--model", run_dir, "--image", image, "--mode", "search",
                 "--iterations", 3, "--no-progress")
    assert result.exit_code == 0, result.output
    assert str(image) in result.output

    report_dir = tmp_path / "report"
    result = run("evaluate", "--model", run_dir, "--data", labelled_dir, "--val", val_dir,
                 "--out", tmp_path / "refused", "--subgroup", "virus", "--no-progress")
    assert result.exit_code != 0 and "--subgroup 'virus': no anomalous file" in result.output
    assert not (tmp_path / "refused").exists()  # refused before anything was scored
    result = run("evaluate", "--model", run_dir, "--data", labelled_dir, "--val", val_dir,
                 "--out", report_dir, "--resamples", 50, "--subgroup", "IMG_00",
                 "--subgroup", "img_003", "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "report.json").read_text())
    every, one = report["subgroups"]["IMG_00"], report["subgroups"]["img_003"]
    assert every["n_anomalous"] == 10 and every["auroc"] == report["auroc"]  # any case
    assert every["recall"] == report["recall"] and "img_003 (1 anomalous)" in result.output
    # recomputed independently: score both folders with the library, not from the report
    scorer = Scorer.from_checkpoint(run_dir)
    test, val = scan_labelled_folder(labelled_dir), scan_labelled_folder(val_dir)
    test_scores = scorer.score_paths(test.paths, progress=False).score
    val_scores = scorer.score_paths(val.paths, progress=False).score
    assert report["auroc"] == pytest.approx(roc_auc_score(test.binary_labels, test_scores))
    assert report["threshold_source"] == "val"
    assert report["threshold"] == pytest.approx(pick_threshold(val.binary_labels, val_scores))
    assert report["threshold"] != pytest.approx(pick_threshold(test.binary_labels, test_scores))
    _, labels, scores = read_scores_csv(report_dir / "scores.csv")
    np.testing.assert_allclose(scores, test_scores, rtol=1e-6)
    paths = [str(p) for p in scan_labelled_folder(labelled_dir).paths]
    lone = scores[[i for i, p in enumerate(paths) if "PNEUMONIA" in p and "img_003" in p][0]]
    assert one["auroc"] == pytest.approx(np.mean(scores[labels == 0] < lone)
                                         + 0.5 * np.mean(scores[labels == 0] == lone))
    for name in ("roc.png", "confusion.png", "histogram.png"):
        assert (report_dir / name).exists()
    page = check_page_against_report(report_dir)  # numbers equal report.json, images decode
    gallery = min(6, report["n_normal"]) + min(6, report["n_anomalous"])
    assert len(page.figures) == gallery and len(decoded_images(page)) == 3 + gallery

    result = run("compare", report_dir, report_dir, "--out", tmp_path / "cmp")
    assert result.exit_code == 0 and "| report |" in result.output
    assert (tmp_path / "cmp" / "roc.png").exists()
    assert "same images" in result.output
    assert len(decoded_images(ReportPage((tmp_path / "cmp" / "report.html").read_text()))) == 3


def test_errors_are_one_line(tmp_path, normal_dir, labelled_dir):
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

    result = run("train-gan", "--data", labelled_dir, "--out", tmp_path / "r")
    assert result.exit_code == 1 and "a labelled folder" in result.output
    assert "NORMAL, PNEUMONIA" in result.output and "Traceback" not in result.output
    (tmp_path / "dataset").mkdir()  # the data set's root: its splits are labelled folders
    (tmp_path / "dataset" / "train").symlink_to(labelled_dir)
    result = run("train-gan", "--data", tmp_path / "dataset", "--out", tmp_path / "r")
    assert result.exit_code == 1 and "train: a labelled folder" in result.output

    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("epochz: 2\n")
    result = run("train-gan", "--data", normal_dir, "--out", tmp_path / "r", "--config", bad_config)
    assert result.exit_code == 1 and "epochz" in result.output


def test_help_and_usage_errors_do_not_import_torch():
    """`--help` and a bad argument answer before torch is imported (fast start)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from cli.anomaly_cli import main\n"
        "from cli.classify_cli import main as classify\n"
        "r = CliRunner()\n"
        "for args in (['--help'], ['score', '--help'], ['train-gan', '--help'],\n"
        "             ['score', '--model', 'x'], ['score', '--model', 'x', '--dir', 'd',\n"
        "              '--threshold', '1', '--alpha', '0.1']):\n"
        "    out = r.invoke(main, args)\n"
        "    assert out.exit_code in (0, 2), (args, out.output)\n"
        "assert r.invoke(classify, ['--help']).exit_code == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("args, needle", [
    (["score", "--batch-size", "0"], "--batch-size"),
    (["score", "--iterations", "-5"], "--iterations"),
    (["score", "--lr", "nan"], "not a finite number"),
    (["score", "--lambda", "-1"], "--lambda"),
    (["evaluate", "--resamples", "0"], "--resamples"),
    (["evaluate", "--quantile", "1.5"], "--quantile"),
    (["train-encoder", "--lr", "inf"], "not a finite number"),
])
def test_numbers_out_of_range_are_usage_errors_before_any_work(tmp_path, args, needle):
    """A zero batch, a negative step count or a NaN rate would run and mislead: refused
    as a usage error (exit 2) naming the option, before any model is read."""
    result = CliRunner().invoke(main, [*args, "--model", str(tmp_path / "none")])
    assert result.exit_code == 2 and needle in result.output, result.output


@pytest.mark.parametrize("args, needle", [
    (["predict", "--batch-size", "-1", "--image", "x.png", "--model", "none"], "--batch-size"),
    (["tune", "--trials", "0"], "--trials"),
    (["fit", "--lr", "nan"], "not a finite number"),
])
def test_classify_numbers_out_of_range_are_usage_errors(tmp_path, args, needle):
    from cli.classify_cli import main as classify_main

    result = CliRunner().invoke(classify_main, args)
    assert result.exit_code == 2 and needle in result.output, result.output


def test_iterations_zero_is_refused_where_no_search_runs(default_run):
    film = str(sorted((ROOT / "examples/data/test/NORMAL").glob("*.jpeg"))[0])
    result = run("score", "--model", default_run, "--image", film, "--iterations", "0")
    assert result.exit_code == 1 and "--iterations applies to the search modes" in result.output
