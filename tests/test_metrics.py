"""Evaluation metrics against answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.evaluate import (
    EvaluationError,
    binary_metrics,
    bootstrap_auroc_ci,
    choose_threshold,
    pick_threshold,
)

# 4 normals, 4 anomalous; by hand at threshold 0.5 (flag score >= 0.5):
# normals 0.1 0.4 0.6 0.2 -> one FP (0.6), TN 3; anomalous 0.8 0.5 0.3 0.9 -> FN 1 (0.3), TP 3
LABELS = [0, 0, 0, 0, 1, 1, 1, 1]
SCORES = [0.1, 0.4, 0.6, 0.2, 0.8, 0.5, 0.3, 0.9]


def test_confusion_matrix_and_metrics_by_hand():
    metrics = binary_metrics(LABELS, SCORES, 0.5)
    assert metrics["confusion_matrix"] == [[3, 1], [1, 3]]
    assert metrics["accuracy"] == pytest.approx(6 / 8)
    assert metrics["precision"] == pytest.approx(3 / 4)
    assert metrics["recall"] == pytest.approx(3 / 4)
    assert metrics["specificity"] == pytest.approx(3 / 4)
    assert metrics["f1"] == pytest.approx(3 / 4)
    lenient = binary_metrics(LABELS, SCORES, 0.3)  # flags 0.4, 0.6 and every anomalous
    assert lenient["confusion_matrix"] == [[2, 2], [0, 4]]
    assert lenient["precision"] == pytest.approx(4 / 6) and lenient["recall"] == 1.0
    assert lenient["f1"] == pytest.approx(2 * (4 / 6) / (4 / 6 + 1))


def test_nothing_flagged_gives_zero_not_nan():
    metrics = binary_metrics([0, 1], [0.1, 0.2], 1.0)
    assert metrics["confusion_matrix"] == [[1, 0], [1, 0]]
    assert metrics["precision"] == 0.0 and metrics["f1"] == 0.0 and metrics["specificity"] == 1.0


def test_youden_and_f1_thresholds_on_a_small_table():
    # J by threshold: 0.9: 1/4; 0.8: 2/4; 0.6: 2/4 - 1/4; 0.5: 3/4 - 1/4; 0.4: 3/4 - 2/4;
    # 0.3: 1 - 2/4. Best J = 1/2, reached at 0.8, 0.5 and 0.3: the highest, 0.8, wins.
    assert pick_threshold(LABELS, SCORES, "youden") == pytest.approx(0.8)
    # F1: 0.8 -> 2/3; 0.5 -> 3/4; 0.3 -> 4/5 (TP 4, FP 2); 0.2 -> 8/11; 0.1 -> 2/3.
    assert pick_threshold(LABELS, SCORES, "f1") == pytest.approx(0.3)


def test_ties_count_as_one_threshold():
    labels = [0, 0, 1, 1]
    scores = [0.2, 0.5, 0.5, 0.9]  # tied normal and anomalous at 0.5
    # thresholds 0.9: J = 1/2; 0.5: J = 1 - 1/2 = 1/2; the higher one wins
    assert pick_threshold(labels, scores) == pytest.approx(0.9)
    assert binary_metrics(labels, scores, 0.5)["confusion_matrix"] == [[1, 1], [0, 2]]


def test_no_better_than_chance_flags_nothing():
    labels = [0, 0, 1, 1]
    inverted = [0.9, 0.8, 0.2, 0.1]  # every J <= 0
    threshold = pick_threshold(labels, inverted)
    assert threshold > max(inverted)
    assert binary_metrics(labels, inverted, threshold)["confusion_matrix"] == [[2, 0], [2, 0]]


def test_one_class_missing_is_refused():
    with pytest.raises(EvaluationError, match="both classes"):
        pick_threshold([0, 0, 0], [0.1, 0.2, 0.3])


def test_bootstrap_ci_brackets_the_auroc_and_is_seeded():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    scores = rng.normal(labels * 1.0, 1.0)
    low, high = bootstrap_auroc_ci(labels, scores, resamples=300, seed=3)
    from sklearn.metrics import roc_auc_score
    value = roc_auc_score(labels, scores)
    assert low < value < high and 0.05 < high - low < 0.35
    assert (low, high) == bootstrap_auroc_ci(labels, scores, resamples=300, seed=3)
    perfect = bootstrap_auroc_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], resamples=50)
    assert perfect == (1.0, 1.0)  # stratified: every resample keeps both classes


def test_choose_threshold_sources():
    assert choose_threshold(LABELS, SCORES) == (pytest.approx(0.8), "val")
    normals = [0.0, 0.1, 0.2, 0.3, 0.4]
    threshold, source = choose_threshold([0] * 5, normals, quantile=0.5)
    assert (threshold, source) == (pytest.approx(0.2), "normal-val-quantile")
    threshold, source = choose_threshold(normal_scores=normals, quantile=1.0)
    assert (threshold, source) == (pytest.approx(0.4), "normal-val-quantile")
    with pytest.raises(EvaluationError, match="holds no normal film"):  # sets nothing
        choose_threshold([1, 1], [0.5, 0.6], normal_scores=None)
    with pytest.raises(EvaluationError, match="no validation data"):
        choose_threshold(test_labels=LABELS, test_scores=SCORES)
    assert choose_threshold(test_labels=LABELS, test_scores=SCORES, allow_test=True)[1] == "test"


def test_labelled_folder_summary_names_every_class_and_empty_folders(tmp_path):
    from anomaly.data import scan_labelled_folder
    from tests.conftest import write_images

    write_images(tmp_path / "NORMAL", 3, seed=0)
    write_images(tmp_path / "PNEUMONIA", 2, seed=1)
    write_images(tmp_path / "stray", 1, seed=2)
    (tmp_path / "COVID").mkdir()
    folder = scan_labelled_folder(tmp_path)
    assert folder.summary() == ("classes: NORMAL 3 (normal), PNEUMONIA 2 (anomalous), "
                                "stray 1 (anomalous); empty folders ignored: COVID")


def test_non_finite_scores_are_refused_by_thresholds_and_auroc_and_skipped_by_evaluate():
    from types import SimpleNamespace

    from anomaly.evaluate import auroc, choose_threshold
    from anomaly.evaluate_model import score_labelled

    with pytest.raises(EvaluationError, match="1 NaN or infinite"):
        choose_threshold([0, 0, 0], [0.1, float("nan"), 0.2])  # never a NaN threshold
    with pytest.raises(EvaluationError, match="1 NaN or infinite"):
        choose_threshold(normal_scores=[0.1, float("inf")])
    with pytest.raises(EvaluationError, match="NaN or infinite"):
        auroc([0, 1, 1], [0.1, float("nan"), 0.3])
    result = SimpleNamespace(paths=["a.png", "b.png", "c.png"], failures=[],
                             score=[0.1, float("nan"), 0.3])
    scorer = SimpleNamespace(score_paths=lambda paths, progress: result)
    folder = SimpleNamespace(paths=result.paths, binary_labels=np.array([0, 1, 1]))
    said = []
    paths, labels, scores = score_labelled(scorer, folder, False, log=said.append)
    assert paths == ["a.png", "c.png"] and labels.tolist() == [0, 1]
    assert scores.tolist() == [0.1, 0.3] and said == ["skipped b.png: its score is not finite"]


def test_a_crash_while_plotting_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    import matplotlib.figure

    from anomaly.evaluate import build_report, read_scores_csv, write_report

    report = build_report("anomaly", LABELS, SCORES, 0.5, "val", resamples=20)
    write_report(tmp_path, report, [f"{i}.png" for i in range(8)], LABELS, SCORES)
    before = {name: (tmp_path / name).read_bytes()
              for name in ("roc.png", "report.json", "report.html")}

    def crash(self, target, **kwargs):
        target.write(b"half a PNG")  # the open temporary file
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", crash)
    with pytest.raises(OSError):
        write_report(tmp_path, report, [f"{i}.png" for i in range(8)], LABELS, [0.0] * 8)
    for name, content in before.items():  # the report as it was, whole
        assert (tmp_path / name).read_bytes() == content, name
    _, _, kept = read_scores_csv(tmp_path / "scores.csv")  # the new scores are not lost
    assert kept.tolist() == [0.0] * 8


def test_paired_auroc_difference():
    from anomaly.evaluate import paired_auroc_difference

    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    good = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]  # AUROC 1
    worse = [0.1, 0.2, 0.6, 0.4, 0.5, 0.3, 0.7, 0.8]  # 3 of 16 pairs wrong: 13/16
    difference, low, high = paired_auroc_difference(labels, good, worse, resamples=200)
    assert difference == pytest.approx(1 - 13 / 16)
    assert low <= difference <= high and low >= 0.0  # paired: never worse on any draw
    assert paired_auroc_difference(labels, good, good, resamples=50) == (0.0, 0.0, 0.0)


def test_validation_sharing_a_test_file_by_content_is_refused(trained_run, labelled_dir,
                                                               tmp_path):
    """The same folder, or a copy of one test film under another name, is refused before
    anything is scored, for the GAN's and the classifier's evaluation alike."""
    import shutil

    from anomaly.data import DataError
    from anomaly.evaluate_model import evaluate_model
    from tests.conftest import write_images

    quiet = dict(progress=False, log=lambda *a: None)
    with pytest.raises(DataError, match="share 20 file"):
        evaluate_model(trained_run, labelled_dir, tmp_path / "r", val_dir=labelled_dir, **quiet)
    val = tmp_path / "val"
    write_images(val / "NORMAL", 3, seed=40)
    write_images(val / "PNEUMONIA", 3, seed=41, blob=True)
    one = next((labelled_dir / "PNEUMONIA").glob("*.png"))
    shutil.copy(one, val / "NORMAL" / "renamed.png")
    with pytest.raises(DataError, match=r"share 1 file.*renamed\.png"):
        evaluate_model(trained_run, labelled_dir, tmp_path / "r", val_dir=val, **quiet)
    assert not (tmp_path / "r" / "report.json").exists()


def test_classifier_evaluation_refuses_shared_validation_files(labelled_dir, val_dir, tmp_path):
    from anomaly.data import DataError
    from classify.evaluate_classifier import evaluate_classifier
    from classify.train import FitConfig, fit

    config = FitConfig(image_size=32, batch_size=12, epochs=1, weights="none",
                       backbone="resnet18", fine_tune_epochs=0)
    fit(config, labelled_dir, val_dir, tmp_path / "cls", progress=False,
        log=lambda *a: None)
    with pytest.raises(DataError, match="share 20 file"):
        evaluate_classifier(tmp_path / "cls", labelled_dir, tmp_path / "r",
                            val_dir=labelled_dir, progress=False, log=lambda *a: None)


def test_subgroups_score_each_kind_of_anomalous_file_against_every_normal(tmp_path):
    from anomaly.evaluate import (
        EvaluationError,
        build_report,
        check_report,
        check_subgroups,
        subgroup_report,
        write_report,
    )
    from tests.report_page import check_page_against_report

    paths = [f"n/normal_{i}.png" for i in range(4)] + [
        "p/a_bacteria_1.png", "p/b_Bacteria_2.png", "p/c_virus_3.png", "p/d_virus_4.jpeg"]
    groups = subgroup_report(paths, LABELS, SCORES, 0.5, ["bacteria", "virus", ".jpeg"],
                             resamples=20)
    assert groups[".jpeg"]["n_anomalous"] == 1 and groups[".jpeg"]["auroc"] == 1.0
    # normals 0.1 0.4 0.6 0.2; bacteria 0.8 0.5 (any case), virus 0.3 0.9
    assert groups["bacteria"]["n_anomalous"] == 2 and groups["virus"]["n_anomalous"] == 2
    assert groups["bacteria"]["auroc"] == pytest.approx(7 / 8)
    assert groups["virus"]["auroc"] == pytest.approx(6 / 8)
    assert (groups["bacteria"]["recall"], groups["virus"]["recall"]) == (1.0, 0.5)
    with pytest.raises(EvaluationError, match="--subgroup 'fungus': no anomalous file of t"):
        check_subgroups(paths, LABELS, ["virus", "fungus"], "t")
    with pytest.raises(EvaluationError, match="must not be empty"):
        check_subgroups(paths, LABELS, [" "], "t")
    with pytest.raises(EvaluationError, match="no anomalous file"):  # a normal's name only
        check_subgroups(paths, LABELS, ["normal_1"], "t")
    with pytest.raises(EvaluationError, match="not one string"):  # not one group per letter
        check_subgroups(paths, LABELS, "virus", "t")
    with pytest.raises(EvaluationError, match="there are none"):
        subgroup_report(paths[4:], LABELS[4:], SCORES[4:], 0.5, ["virus"], resamples=20)
    unscored = subgroup_report(paths, LABELS, SCORES, 0.5, ["fungus"], resamples=20)
    assert unscored == {"fungus": {"n_anomalous": 0, "auroc": None, "auroc_ci95": None,
                                   "recall": None}}  # its files all failed to load
    report = {**build_report("anomaly", LABELS, SCORES, 0.5, "val", resamples=20),
              "subgroups": {**groups, **unscored}}
    check_report(report)
    write_report(tmp_path, report, paths, LABELS, SCORES)
    page = check_page_against_report(tmp_path)  # the subgroup cells are report.json's
    assert {"subgroups.virus.auroc", "subgroups.bacteria.recall",
            "subgroups..jpeg.auroc_ci95.1"} <= {k for k, _, _ in page.cells}
    for broken in ({"virus": {**groups["virus"], "auroc": float("nan")}},
                   {"virus": {**groups["virus"], "n_anomalous": 9}}, ["virus"],
                   {"virus": {**groups["virus"], "auroc": None}},
                   {"virus": {**groups["virus"], "auroc_ci95": [0.9, 0.1]}},
                   {"virus": {**groups["virus"], "auroc_ci95": None}},
                   {"fungus": {**unscored["fungus"], "recall": 0.5}}):
        with pytest.raises(EvaluationError, match="subgroups"):
            check_report({**report, "subgroups": broken})
