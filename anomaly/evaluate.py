"""Metrics on scores and labels alone: AUROC with a bootstrap CI, thresholds, reports.

Shared by ``anomaly evaluate`` and ``classify evaluate``; it never sees a network.
Label 1 = anomalous, and an image is flagged when ``score >= threshold``.
A threshold is picked on validation data (or held-out normal images), never on the
data it is reported on unless the caller asks and the report says ``"test"``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from anomaly.atomic import atomic_file, write_text_atomically
from anomaly.io import from_spreadsheet_safe, spreadsheet_safe


class EvaluationError(ValueError):
    """Scores and labels cannot be evaluated as asked; the message says why."""


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (scikit-learn's); needs both classes."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise EvaluationError("AUROC needs both normal and anomalous images")
    refuse_non_finite(scores, "the scores")
    return float(roc_auc_score(labels, scores))


def stratified_resamples(labels: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Index arrays of bootstrap resamples drawn with replacement within each class (so
    every resample holds both classes), seeded for reproducibility."""
    rng = np.random.default_rng(seed)
    normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    for _ in range(resamples):
        yield np.concatenate([rng.choice(normal, len(normal)),
                              rng.choice(anomalous, len(anomalous))])


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap values."""
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def bootstrap_auroc_ci(labels: Sequence[int], scores: Sequence[float], resamples: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUROC (stratified resamples)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    values = [roc_auc_score(labels[idx], scores[idx])
              for idx in stratified_resamples(labels, resamples, seed)]
    return percentile_interval(np.array(values), level)


def paired_auroc_difference(labels: Sequence[int], scores_a: Sequence[float],
                            scores_b: Sequence[float], resamples: int = 1000, seed: int = 0,
                            level: float = 0.95) -> tuple[float, float, float]:
    """AUROC(a) - AUROC(b) on the same images, with a paired percentile bootstrap CI.

    Each resample draws images (stratified by class) and scores both detectors on the
    same draw, so the interval accounts for the two scores being correlated.

    Returns:
        (difference, CI low, CI high).
    """
    labels = np.asarray(labels)
    scores_a, scores_b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    values = [roc_auc_score(labels[idx], scores_a[idx]) - roc_auc_score(labels[idx], scores_b[idx])
              for idx in stratified_resamples(labels, resamples, seed)]
    return (auroc(labels, scores_a) - auroc(labels, scores_b),
            *percentile_interval(np.array(values), level))


def pick_threshold(labels: Sequence[int], scores: Sequence[float], metric: str = "youden") -> float:
    """Threshold that maximises Youden's J (TPR - FPR) or F1 on labelled data.

    Ties go to the highest such threshold (fewest images flagged). When no threshold
    has J > 0 (the scores separate the classes no better than chance, or invert them),
    the threshold lies just above the highest score, so nothing is flagged.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    refuse_non_finite(scores, "the scores a threshold is picked on")
    if len(np.unique(labels)) < 2:
        raise EvaluationError("picking a threshold by Youden's J or F1 needs both classes")
    fpr, tpr, thresholds = roc_curve(labels, scores)
    above_all = float(np.nextafter(scores.max(), np.inf))  # flags no image
    thresholds = np.minimum(thresholds, above_all)  # sklearn's first threshold is +inf
    if metric == "youden":
        youden = tpr - fpr
        best = int(np.argmax(youden))
        return float(thresholds[best]) if youden[best] > 0 else above_all
    if metric == "f1":
        positives = labels.sum()
        predicted = tpr * positives + fpr * (len(labels) - positives)
        f1 = np.where(predicted > 0, 2 * tpr * positives / (predicted + positives), 0.0)
        return float(thresholds[int(np.argmax(f1))])
    raise EvaluationError(f"unknown threshold metric {metric!r}; use youden or f1")


def normal_quantile_threshold(normal_scores: Sequence[float], quantile: float = 0.95) -> float:
    """Threshold as a quantile of normal images' scores (for normal-only validation)."""
    normal_scores = np.asarray(normal_scores, dtype=np.float64)
    if normal_scores.size == 0:
        raise EvaluationError("no normal validation scores to take a quantile of")
    refuse_non_finite(normal_scores, "the normal validation scores")
    return float(np.quantile(normal_scores, quantile))


def refuse_non_finite(scores, what: str) -> None:
    """Refuse, in one line, scores holding NaN or infinite values (a threshold or an AUROC
    of them would be a silent NaN or a bare library error)."""
    bad = int((~np.isfinite(np.asarray(scores, dtype=np.float64))).sum())
    if bad:
        raise EvaluationError(f"{what} hold {bad} NaN or infinite value(s) of "
                              f"{np.asarray(scores).size}; no threshold or AUROC is taken "
                              "of them")


def binary_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float) -> dict:
    """Confusion matrix [[TN, FP], [FN, TP]] and the metrics derived from it."""
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(scores) >= threshold).astype(int)
    tp = int(((predicted == 1) & (labels == 1)).sum())
    tn = int(((predicted == 0) & (labels == 0)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "accuracy": ratio(tp + tn, len(labels)),
        "precision": precision,
        "recall": recall,
        "specificity": ratio(tn, tn + fp),
        "f1": ratio(2 * precision * recall, precision + recall),
    }


def choose_threshold(val_labels: Sequence[int] | None = None,
                     val_scores: Sequence[float] | None = None,
                     normal_scores: Sequence[float] | None = None,
                     test_labels: Sequence[int] | None = None,
                     test_scores: Sequence[float] | None = None,
                     metric: str = "youden", quantile: float = 0.95,
                     allow_test: bool = False) -> tuple[float, str]:
    """Pick the operating threshold from the best data available.

    Order: labelled validation with both classes (Youden/F1, ``"val"``); validation or
    held-out images that are all normal (quantile, ``"normal-val-quantile"``); the test
    data itself only when ``allow_test`` (``"test"``).

    Returns:
        (threshold, threshold_source).
    """
    anomalous_only = False
    if val_labels is not None and len(val_labels):
        val_labels, val_scores = np.asarray(val_labels), np.asarray(val_scores)
        if len(np.unique(val_labels)) == 2:
            return pick_threshold(val_labels, val_scores, metric), "val"
        if (val_labels == 0).all():
            return normal_quantile_threshold(val_scores, quantile), "normal-val-quantile"
        normal_scores, anomalous_only = None, True  # no normal film: no threshold
    if normal_scores is not None and len(normal_scores):
        return normal_quantile_threshold(normal_scores, quantile), "normal-val-quantile"
    if allow_test and test_labels is not None:
        return pick_threshold(test_labels, test_scores, metric), "test"
    if anomalous_only:
        raise EvaluationError("the validation data holds no normal film, so it cannot set a "
                              "threshold: pass a --val with normal films, or "
                              "--threshold-on-test to pick it on the test data")
    raise EvaluationError("no validation data to pick a threshold on: pass --val (labelled or "
                          "normal-only), or --threshold-on-test to pick it on the test data")


def build_report(model: str, labels: Sequence[int], scores: Sequence[float], threshold: float,
                 threshold_source: str, resamples: int = 1000, seed: int = 0) -> dict:
    """The ``report.json`` dict (schema in docs/evaluation.md) for binary labels and scores."""
    labels = np.asarray(labels).astype(int)
    area = auroc(labels, scores)  # refuses one class before the bootstrap meets it
    low, high = bootstrap_auroc_ci(labels, scores, resamples, seed)
    return {
        "model": model,
        "n": int(len(labels)),
        "n_normal": int((labels == 0).sum()),
        "n_anomalous": int((labels == 1).sum()),
        "auroc": area,
        "auroc_ci95": [low, high],
        "threshold": float(threshold),
        "threshold_source": threshold_source,
        **binary_metrics(labels, scores, threshold),
    }


def subgroup_files(paths: Sequence, labels: Sequence[int], pattern: str) -> np.ndarray:
    """Mask (N,) of the anomalous files whose name holds ``pattern`` (any case)."""
    wanted = pattern.lower()
    return np.array([int(label) == 1 and wanted in Path(str(path)).name.lower()
                     for path, label in zip(paths, labels)], dtype=bool)


def check_subgroups(paths: Sequence, labels: Sequence[int], patterns: Sequence[str],
                    where: str) -> None:
    """Refuse, in one line, a subgroup pattern that is empty or names no anomalous file of
    ``where`` (checked before anything is scored)."""
    if isinstance(patterns, str):
        raise EvaluationError("subgroups: give a list of patterns, not one string "
                              f"({patterns!r})")
    for pattern in patterns:
        if not pattern.strip():
            raise EvaluationError("--subgroup: a pattern must not be empty")
        if not subgroup_files(paths, labels, pattern).any():
            raise EvaluationError(f"--subgroup {pattern!r}: no anomalous file of {where} has "
                                  "it in its name")


def subgroup_report(paths: Sequence, labels: Sequence[int], scores: Sequence[float],
                    threshold: float, patterns: Sequence[str], resamples: int = 1000,
                    seed: int = 0) -> dict[str, dict]:
    """Each subgroup of anomalous files (its pattern in their names, any case) against
    every normal file: its count, AUROC with a bootstrap CI and recall at the report's
    threshold. A score that finds one kind of disease and misses another shows here
    (bacterial and viral pneumonia, in the chest X-ray data's file names). A group none of
    whose files could be scored gets a count of 0 and no figures (None)."""
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    normal = labels == 0
    if patterns and not normal.any():
        raise EvaluationError("subgroups are scored against the normal files, and there are "
                              "none")
    groups = {}
    for pattern in patterns:
        members = subgroup_files(paths, labels, pattern)
        if not members.any():
            groups[pattern] = {"n_anomalous": int(members.sum()), "auroc": None,
                               "auroc_ci95": None, "recall": None}
            continue
        chosen = normal | members
        group_labels, group_scores = labels[chosen], scores[chosen]
        low, high = bootstrap_auroc_ci(group_labels, group_scores, resamples, seed)
        groups[pattern] = {"n_anomalous": int(members.sum()),
                           "auroc": auroc(group_labels, group_scores),
                           "auroc_ci95": [low, high],
                           "recall": float((scores[members] >= threshold).mean())}
    return groups


def write_scores_csv(path: str | os.PathLike, paths: Sequence, labels: Sequence[int],
                     scores: Sequence[float]) -> None:
    """Write ``path,label,score`` rows (through a temporary file, renamed when complete)."""
    with atomic_file(path, "w", newline="", encoding="utf-8",
                     errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "score"])
        for p, label, score in zip(paths, labels, scores):
            writer.writerow([spreadsheet_safe(str(p)), int(label), f"{float(score):.8g}"])


def read_scores_csv(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read a ``path,label,score`` CSV written by :func:`write_scores_csv`."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        rows = list(csv.DictReader(handle))
    return ([from_spreadsheet_safe(r["path"]) for r in rows],
            np.array([int(r["label"]) for r in rows]),
            np.array([float(r["score"]) for r in rows]))


def write_report(out_dir: str | os.PathLike, report: dict, paths: Sequence,
                 labels: Sequence[int], scores: Sequence[float], title: str = "",
                 panels: Callable[[list[Path]], dict[Path, np.ndarray]] | None = None,
                 heat_note: str = "", gallery_size: int = 6) -> Path:
    """Write report.json, scores.csv, roc.png, confusion.png, histogram.png and report.html.

    The scores are written first (nothing computed is lost if a plot fails), each figure
    replaces its file whole, and report.html and report.json are replaced last: a crash
    in between leaves the previous report's JSON, page and figures as they were beside the
    new scores.csv.

    Args:
        panels: draws the error gallery's images: given paths, a uint8 image per path
            it could draw (heatmap or Grad-CAM panel); None leaves the pictures out.
        heat_note: what the panels show, printed above the gallery.
        gallery_size: images per gallery row (false positives, false negatives).

    Returns:
        Path of report.json.
    """
    from anomaly.plots import plot_confusion, plot_histogram, plot_roc
    from anomaly.report_html import GalleryImage, pick_gallery, render_report_html

    # the gallery first: drawing it runs the network again, and may fail before any file
    # of this report is replaced
    worst_normal, mildest_anomalous = pick_gallery(labels, scores, gallery_size)
    chosen = worst_normal + mildest_anomalous
    pictures = panels([Path(paths[i]) for i in chosen]) if panels and chosen else {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_scores_csv(out_dir / "scores.csv", paths, labels, scores)
    plot_roc([(title or report["model"], labels, scores, report["auroc"])], out_dir / "roc.png")
    plot_confusion(report["confusion_matrix"], out_dir / "confusion.png", title)
    plot_histogram(labels, scores, report["threshold"], out_dir / "histogram.png", title)
    gallery = [GalleryImage(str(paths[i]), int(labels[i]), float(scores[i]),
                            bool(scores[i] >= report["threshold"]), pictures.get(Path(paths[i])))
               for i in chosen]
    figures = {"ROC": out_dir / "roc.png", "scores by class": out_dir / "histogram.png",
               "confusion matrix": out_dir / "confusion.png"}
    page = render_report_html(report, figures, gallery[: len(worst_normal)],
                              gallery[len(worst_normal):], title or report["model"], heat_note)
    # the page and the JSON are replaced together, last
    write_text_atomically(out_dir / "report.html", page)
    return write_text_atomically(out_dir / "report.json", json.dumps(report, indent=2) + "\n")


THRESHOLD_SOURCES = ("val", "normal-val-quantile", "test")


def check_report(report, path: str | os.PathLike = "report.json") -> None:
    """Check a report against the contract's schema: types, ranges, consistent counts.

    Raises:
        EvaluationError: one line naming the file and the first field that is wrong.
    """
    def bad(field: str, why: str) -> EvaluationError:
        return EvaluationError(f"{path}: not a valid report: {field} {why}")

    def is_count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    def is_rate(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and 0 <= value <= 1

    if not isinstance(report, dict):
        raise bad("the file", "is not a JSON object")
    if report.get("model") not in ("anomaly", "classify"):
        raise bad("model", "must be 'anomaly' or 'classify'")
    for key in ("n", "n_normal", "n_anomalous"):
        if not is_count(report.get(key)):
            raise bad(key, "must be a non-negative integer")
    if report["n"] != report["n_normal"] + report["n_anomalous"]:
        raise bad("n", "must equal n_normal + n_anomalous")
    for key in ("auroc", "accuracy", "precision", "recall", "specificity", "f1"):
        if not is_rate(report.get(key)):
            raise bad(key, "must be a number from 0 to 1")
    ci = report.get("auroc_ci95")
    if not (isinstance(ci, list) and len(ci) == 2 and all(map(is_rate, ci)) and ci[0] <= ci[1]):
        raise bad("auroc_ci95", "must be [low, high] from 0 to 1")
    threshold = report.get("threshold")
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
            and math.isfinite(threshold)):
        raise bad("threshold", "must be a finite number")
    if report.get("threshold_source") not in THRESHOLD_SOURCES:
        raise bad("threshold_source", f"must be one of {', '.join(THRESHOLD_SOURCES)}")
    matrix = report.get("confusion_matrix")
    if not (isinstance(matrix, list) and len(matrix) == 2
            and all(isinstance(row, list) and len(row) == 2 and all(map(is_count, row))
                    for row in matrix)):
        raise bad("confusion_matrix", "must be [[TN, FP], [FN, TP]] of counts")
    (tn, fp), (fn, tp) = matrix
    if tn + fp != report["n_normal"] or fn + tp != report["n_anomalous"]:
        raise bad("confusion_matrix", "does not add up to n_normal and n_anomalous")
    groups = report.get("subgroups", {})
    if not isinstance(groups, dict):
        raise bad("subgroups", "must map each pattern to its figures")
    for name, group in groups.items():
        if not (isinstance(group, dict) and is_count(group.get("n_anomalous"))
                and group["n_anomalous"] <= report["n_anomalous"]):
            raise bad(f"subgroups.{name}", "must hold n_anomalous, at most the report's")
        interval = group.get("auroc_ci95")
        if group["n_anomalous"] == 0:
            figures_fit = all(group.get(k) is None for k in ("auroc", "auroc_ci95", "recall"))
        else:
            figures_fit = (is_rate(group.get("auroc")) and is_rate(group.get("recall"))
                           and isinstance(interval, list) and len(interval) == 2
                           and all(map(is_rate, interval)) and interval[0] <= interval[1])
        if not figures_fit:
            raise bad(f"subgroups.{name}", "must hold auroc, auroc_ci95 [low, high] and recall "
                      "from 0 to 1 (all none for a group of 0 films)")


def compare_reports(report_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> str:
    """Put several report folders side by side: a Markdown table, one ROC plot with a
    curve per report, and ``report.html`` with both and each report's histogram.

    The table says whether the reports scored the same images (class folder and file
    name of each row of their scores.csv).

    Returns:
        The Markdown table (also written to ``out_dir/comparison.md``).
    """
    from anomaly.plots import plot_roc
    from anomaly.report_html import render_comparison_html

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["auroc", "accuracy", "precision", "recall", "specificity", "f1"]
    lines = ["| report | model | n | AUROC (95% CI) | threshold from | "
             + " | ".join(columns[1:]) + " |",
             "|---|---|---|---|---|" + "---|" * (len(columns) - 1)]
    curves, reports, histograms, scored = [], [], [], []
    for report_dir in report_dirs:
        report_dir = Path(report_dir)
        try:
            report = json.loads((report_dir / "report.json").read_text())
        except (OSError, ValueError) as err:
            raise EvaluationError(f"{report_dir}: no readable report.json ({err})") from None
        check_report(report, report_dir / "report.json")
        name = report_dir.name
        if name in [n for n, _ in reports]:  # runs/s0/report and runs/s1/report
            name = f"{report_dir.parent.name}/{report_dir.name}"
        reports.append((name, report))
        low, high = report["auroc_ci95"]
        lines.append(
            f"| {name} | {report['model']} | {report['n']} | "
            f"{report['auroc']:.3f} ({low:.3f}-{high:.3f}) | {report['threshold_source']} | "
            + " | ".join(f"{report[c]:.3f}" for c in columns[1:]) + " |")
        if (report_dir / "scores.csv").exists():
            paths, labels, scores = read_scores_csv(report_dir / "scores.csv")
            curves.append((name, labels, scores, report["auroc"]))
            scored.append({Path(p).parts[-2:]: (label, score)  # class folder/file name
                           for p, label, score in zip(paths, labels, scores)})
        if (report_dir / "histogram.png").exists():
            histograms.append((name, report_dir / "histogram.png"))
    differences = []
    if len(scored) == len(reports) > 1:
        same = all(len(rows) == report["n"] for rows, (_, report) in zip(scored, reports)) \
            and all(rows.keys() == scored[0].keys() for rows in scored) \
            and all(rows[k][0] == scored[0][k][0] for rows in scored for k in rows)
        lines.append("")
        lines.append("The reports scored the same images." if same else
                     "The reports scored different images: compare their figures with care.")
        if same:
            differences = auroc_differences([name for name, _ in reports], scored)
            lines += [f"AUROC {a} - {b}: {d:+.3f} (paired bootstrap 95% CI {low:+.3f} to "
                      f"{high:+.3f})" for a, b, d, low, high in differences]
    table = "\n".join(lines) + "\n"
    write_text_atomically(out_dir / "comparison.md", table)
    if curves:
        plot_roc(curves, out_dir / "roc.png")
    write_text_atomically(out_dir / "report.html", render_comparison_html(
        reports, out_dir / "roc.png" if curves else None, histograms, differences))
    return table


def auroc_differences(names: Sequence[str], scored: Sequence[dict]
                      ) -> list[tuple[str, str, float, float, float]]:
    """(first, other, AUROC difference, CI low, CI high) of the first report against each
    other one, on their common images (``scored``: image key -> (label, score) each)."""
    keys = sorted(scored[0])
    labels = np.array([scored[0][k][0] for k in keys])
    first = np.array([scored[0][k][1] for k in keys])
    return [(names[0], name, *paired_auroc_difference(
                labels, first, np.array([rows[k][1] for k in keys])))
            for name, rows in zip(names[1:], scored[1:])]
