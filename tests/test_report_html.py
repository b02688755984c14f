"""report.html: self-contained, its numbers equal report.json, its gallery the right films."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomaly.evaluate import build_report, compare_reports, read_scores_csv, write_report
from anomaly.report_html import pick_gallery
from tests.report_page import ReportPage, check_page_against_report, decoded_images


def test_pick_gallery_orders_both_rows():
    labels = [0, 0, 0, 1, 1, 1, 0]
    scores = [0.1, 0.9, 0.5, 0.2, 0.8, 0.05, 0.7]
    worst_normal, mildest_anomalous = pick_gallery(labels, scores, count=2)
    assert worst_normal == [1, 6] and mildest_anomalous == [5, 3]
    assert pick_gallery([0, 0], [0.3, 0.2], count=5) == ([0, 1], [])


def test_page_matches_report_and_shows_the_errors(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([0] * 10 + [1] * 10)
    scores = rng.random(20) + labels * 0.5
    paths = [f"data/{'PNEUMONIA' if y else 'NORMAL'}/img_{i:02d}.png"
             for i, y in enumerate(labels)]
    report = build_report("anomaly", labels, scores, threshold=0.9, threshold_source="val",
                          resamples=50)
    drawn = []

    def panels(chosen):
        drawn.extend(chosen)
        return {p: np.full((24, 48, 3), 40 * k % 255, np.uint8) for k, p in enumerate(chosen)}

    write_report(tmp_path, report, paths, labels, scores, title="test", panels=panels,
                 gallery_size=3)
    page = check_page_against_report(tmp_path)
    assert len(drawn) == 6 and len(decoded_images(page)) == 3 + 6
    figures = page.figures
    normals = np.flatnonzero(labels == 0)
    anomalous = np.flatnonzero(labels == 1)
    expected = ([paths[i] for i in normals[np.argsort(-scores[normals])][:3]]
                + [paths[i] for i in anomalous[np.argsort(scores[anomalous])][:3]])
    assert [f["path"] for f in figures] == expected
    assert figures[0]["section"] < figures[3]["section"]  # two galleries, in that order
    for figure in figures:
        assert figure["score"] == pytest.approx(scores[paths.index(figure["path"])])


def test_comparison_page_has_both_reports_and_says_if_images_differ(tmp_path):
    labels = np.array([0, 0, 0, 1, 1, 1])
    for name, scores, files in (("a", [0.1, 0.2, 0.6, 0.5, 0.8, 0.9], "abcdef"),
                                ("b", [0.3, 0.1, 0.2, 0.9, 0.4, 0.7], "abcdef"),
                                ("c", [0.3, 0.1, 0.2, 0.9, 0.4, 0.7], "abcdeg")):
        report = build_report("anomaly", labels, scores, 0.5, "val", resamples=20)
        write_report(tmp_path / name, report, [f"x/{c}.png" for c in files], labels, scores)
    table = compare_reports([tmp_path / "a", tmp_path / "b"], tmp_path / "ab")
    assert "same images" in table
    difference = roc_auc_score(labels, [0.1, 0.2, 0.6, 0.5, 0.8, 0.9]) - roc_auc_score(
        labels, [0.3, 0.1, 0.2, 0.9, 0.4, 0.7])
    assert f"AUROC a - b: {difference:+.3f} (paired bootstrap 95% CI" in table
    page = ReportPage((tmp_path / "ab" / "report.html").read_text())
    reports = [json.loads((tmp_path / n / "report.json").read_text()) for n in "ab"]
    aurocs = [json.loads(v) for k, v, _ in page.cells if k == "auroc"]
    assert aurocs == [r["auroc"] for r in reports]
    assert len(decoded_images(page)) == 1 + 2  # shared ROC, two histograms
    other = compare_reports([tmp_path / "a", tmp_path / "c"], tmp_path / "ac")
    assert "different images" in other and "paired" not in other


def test_page_survives_odd_file_names_and_keeps_json_and_page_together(tmp_path):
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.2, 0.7, 0.4, 0.9])
    odd = "data/NORMAL/caf\udce9 <b>&.png"  # a Latin-1 byte on disk, and HTML characters
    paths = [odd, "data/NORMAL/b.png", "data/PNEUMONIA/c.png", "data/PNEUMONIA/d.png"]
    report = build_report("anomaly", labels, scores, 1.5e-5, "val", resamples=20)
    write_report(tmp_path, report, paths, labels, scores,
                 panels=lambda chosen: {p: np.zeros((8, 16), np.uint8) for p in chosen})
    page = check_page_against_report(tmp_path)  # the threshold is shown as 1.5e-05
    assert "caf\ufffd &lt;b&gt;&amp;.png" in (tmp_path / "report.html").read_text()
    assert not list(tmp_path.glob(".*.tmp")) and len(page.figures) == 4

    def broken(chosen):
        raise RuntimeError("the network failed while drawing the gallery")

    newer = build_report("anomaly", labels, scores[::-1].copy(), 0.5, "val", resamples=20)
    with pytest.raises(RuntimeError):
        write_report(tmp_path, newer, paths, labels, scores[::-1].copy(), panels=broken)
    assert json.loads((tmp_path / "report.json").read_text())["threshold"] == 1.5e-5
    check_page_against_report(tmp_path)  # the old page still matches the old JSON
    np.testing.assert_allclose(read_scores_csv(tmp_path / "scores.csv")[2], scores)


def test_comparison_needs_the_same_labels_too(tmp_path):
    scores = [0.1, 0.2, 0.6, 0.5, 0.8, 0.9]
    for name, labels in (("a", [0, 0, 0, 1, 1, 1]), ("b", [0, 0, 1, 0, 1, 1])):
        report = build_report("anomaly", labels, scores, 0.5, "val", resamples=20)
        write_report(tmp_path / "x" / name, report, [f"x/{c}.png" for c in "abcdef"],
                     labels, scores)
    assert "different images" in compare_reports([tmp_path / "x" / "a", tmp_path / "x" / "b"],
                                                 tmp_path / "ab")


def valid_report(tmp_path, name: str = "a") -> dict:
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = [0.1, 0.2, 0.6, 0.5, 0.8, 0.9]
    report = build_report("anomaly", labels, scores, 0.5, "val", resamples=20)
    write_report(tmp_path / name, report, [f"x/{c}.png" for c in "abcdef"], labels, scores)
    return report


@pytest.mark.parametrize("field, value, why", [
    ("n", "<script>alert(1)</script>", "n must be a non-negative integer"),
    ("n", 7, "n must equal"),
    ("auroc", 1.5, "auroc must be a number from 0 to 1"),
    ("threshold_source", "<b>", "threshold_source must be one of"),
    ("confusion_matrix", [[1, 1], [1, "<i>"]], "confusion_matrix must be"),
    ("confusion_matrix", [[3, 0], [0, 2]], "does not add up"),
    ("model", "x", "model must be"),
])
def test_compare_refuses_a_report_outside_the_schema(tmp_path, field, value, why):
    from anomaly.evaluate import EvaluationError

    report = valid_report(tmp_path)
    report[field] = value
    (tmp_path / "a" / "report.json").write_text(json.dumps(report))
    with pytest.raises(EvaluationError, match=why):
        compare_reports([tmp_path / "a"], tmp_path / "out")
    assert not (tmp_path / "out" / "report.html").exists()


def test_every_string_of_a_report_is_escaped_on_the_pages(tmp_path):
    name = "<script>alert(1)<_script>"  # a folder name is shown on the page too
    report = valid_report(tmp_path, name)
    hostile = "<script>alert(1)</script>"
    report.update(mode=hostile, score=hostile, backbone=hostile)
    (tmp_path / name / "report.json").write_text(json.dumps(report))
    compare_reports([tmp_path / name, tmp_path / name], tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_the_comparison_page_names_a_threshold_picked_on_test_images():
    from anomaly.report_html import threshold_note

    val = {"threshold_source": "val"}
    assert "own validation data" in threshold_note([("a", val), ("b", val)])
    note = threshold_note([("a", val), ("b", {"threshold_source": "test"})])
    assert note.startswith("The threshold of b was picked on its test images")
