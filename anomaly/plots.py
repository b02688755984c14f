"""Evaluation plots with matplotlib (headless): ROC curves, confusion matrix, histograms."""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from anomaly.atomic import atomic_file  # noqa: E402


def save_figure_atomically(fig, path: str | os.PathLike) -> None:
    """Save a figure as PNG through a temporary file, so a crash leaves no half a PNG."""
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png")


def plot_roc(curves: Sequence[tuple[str, Sequence[int], Sequence[float], float]],
             path: str | os.PathLike) -> None:
    """One ROC plot with a curve per (name, labels, scores, auroc)."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for name, labels, scores, area in curves:
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {area:.3f})")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (recall)",
           xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure_atomically(fig, path)
    plt.close(fig)


def plot_confusion(matrix: Sequence[Sequence[int]], path: str | os.PathLike, title: str = "") -> None:
    """Confusion matrix [[TN, FP], [FN, TP]] as an annotated image."""
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["normal", "anomalous"],
           yticklabels=["normal", "anomalous"], xlabel="predicted", ylabel="true",
           title=title or "confusion matrix")
    fig.tight_layout()
    save_figure_atomically(fig, path)
    plt.close(fig)


def plot_histogram(labels: Sequence[int], scores: Sequence[float], threshold: float,
                   path: str | os.PathLike, title: str = "") -> None:
    """Score histogram per class with the threshold marked."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    bins = np.histogram_bin_edges(scores, bins=40)
    for value, name in ((0, "normal"), (1, "anomalous")):
        ax.hist(scores[labels == value], bins=bins, alpha=0.6, label=name)
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="anomaly score", ylabel="images", title=title or "scores by class")
    ax.legend()
    fig.tight_layout()
    save_figure_atomically(fig, path)
    plt.close(fig)
