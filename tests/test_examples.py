"""The README's comparison script, end to end on tiny synthetic folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_images
from tests.report_page import ReportPage, decoded_images

ROOT = Path(__file__).resolve().parents[1]


def test_gan_vs_classifier_script(tmp_path, trained_run):
    data = tmp_path / "data"
    for split, count in (("train", 10), ("val", 6), ("test_dev", 6)):
        write_images(data / split / "NORMAL", count, seed=len(split))
        write_images(data / split / "PNEUMONIA", count, seed=len(split) + 50, blob=True)
    config = tmp_path / "tiny.yaml"
    config.write_text("image_size: 32\nbackbone: resnet18\nweights: none\nepochs: 1\n"
                      "fine_tune_epochs: 0\nbatch_size: 8\n")
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "examples/gan_vs_classifier.sh", str(trained_run), str(out),
                           str(config), str(data)], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int((out / "classifier_train_seconds.txt").read_text()) >= 0
    gan = json.loads((out / "gan_report" / "report.json").read_text())
    classifier = json.loads((out / "classifier_report" / "report.json").read_text())
    assert (gan["model"], classifier["model"]) == ("anomaly", "classify")
    assert gan["n"] == classifier["n"] == 12
    table = (out / "comparison" / "comparison.md").read_text()
    assert "gan_report" in table and "classifier_report" in table and "same images" in table
    page = ReportPage((out / "comparison" / "report.html").read_text())
    assert [json.loads(v) for k, v, _ in page.cells if k == "auroc"] == [
        gan["auroc"], classifier["auroc"]]
    assert len(decoded_images(page)) == 3


def test_python_api_example_runs(tmp_path):
    done = subprocess.run([sys.executable, "examples/python_api.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "critic (threshold" in done.stdout and "heldout-normal-quantile" in done.stdout
    assert done.stdout.count(" p=") == 8 and "AUROC on the 8 example images" in done.stdout


def test_subtype_auroc_scores_each_kind_against_every_normal(tmp_path):
    scores = tmp_path / "scores.csv"
    scores.write_text("path,label,score\n"
                      "n/a.png,0,0.1\nn/b.png,0,0.2\n"
                      "p/person1_bacteria_1.png,1,0.9\np/person2_bacteria_2.png,1,0.8\n"
                      "p/person3_virus_3.png,1,0.15\n")
    (tmp_path / "report.json").write_text('{"threshold": 0.5}')
    done = subprocess.run([sys.executable, "examples/subtype_auroc.py", str(scores),
                           "--kind", "bacteria", "--kind", "virus"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in done.stdout.splitlines()[2:]}  # under the header and its rule
    assert {k: (float(v.split()[0].rstrip(",")), v.split()[-2]) for k, v in rows.items()} == {
        "bacteria": (1.0, "2"), "virus": (0.5, "1"), "all abnormal": (0.833, "3")}
    for argv, why in (([str(scores), "--kind", "fungus"], "--subgroup 'fungus': no anomalous"),
                      ([str(tmp_path / "missing.csv")], "not an evaluation's scores.csv")):
        refused = subprocess.run([sys.executable, "examples/subtype_auroc.py", *argv],
                                 cwd=ROOT, capture_output=True, text=True)
        assert refused.returncode != 0 and why in refused.stderr
