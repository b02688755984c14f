"""``classify evaluate``: the shared binary report (normal vs the rest) for a classifier.

The anomaly score is ``1 - P(normal)``, so the report, its threshold rules and its plots
are exactly those of ``anomaly evaluate`` (:mod:`anomaly.evaluate`). A model with more
than two classes also gets a per-class precision/recall/F1 table and the macro
one-vs-rest AUROC as extra keys of ``report.json``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import classification_report, roc_auc_score

from anomaly.atomic import atomic_file, write_text_atomically
from anomaly.data import DataError, LabelledFolder, refuse_shared_files, scan_labelled_folder
from anomaly.evaluate import (
    auroc,
    build_report,
    check_subgroups,
    choose_threshold,
    subgroup_report,
    write_report,
)
from anomaly.evaluate_model import limit_per_class, read_validation_folder
from anomaly.io import display_path, spreadsheet_safe
from classify.predict import Classifier, Predictions, resolve_classifier_checkpoint


def fit_validation_images(classifier: Classifier, log=print) -> LabelledFolder | None:
    """The validation images ``classify fit`` chose the model on, those still on disk."""
    folder = classifier.validation
    if folder is None or not folder.paths:
        return None
    kept = [(p, i) for p, i in zip(folder.paths, folder.class_index) if p.exists()]
    if not kept:
        return None
    log(f"no --val: the threshold comes from the {len(kept)} validation images of "
        "classify fit (recorded in the checkpoint)")
    return LabelledFolder([p for p, _ in kept], folder.class_names, [i for _, i in kept],
                          folder.normal_class)


def predict_labelled(classifier: Classifier, folder: LabelledFolder, progress: bool = True,
                     log=print) -> tuple[Predictions, np.ndarray, list[str]]:
    """Predict a labelled folder: (predictions, binary labels, class name of each image)."""
    label_of = dict(zip(folder.paths, folder.binary_labels.tolist()))
    class_of = {p: folder.class_names[i] for p, i in zip(folder.paths, folder.class_index)}
    result = classifier.predict_paths(folder.paths, progress=progress)
    for path, reason in result.failures:
        log(f"skipped {display_path(path)}: {reason}")
    labels = np.array([label_of[p] for p in result.paths], dtype=np.int64)
    return result, labels, [class_of[p] for p in result.paths]


def multiclass_metrics(class_names: Sequence[str], true_names: Sequence[str],
                       probabilities: np.ndarray) -> tuple[dict, str]:
    """Per-class precision/recall/F1 and macro one-vs-rest AUROC.

    Args:
        class_names: the model's classes, in column order of ``probabilities``.
        true_names: true class name of each image.
        probabilities: (N, K) class probabilities.

    Returns:
        The extra report keys, and the scikit-learn classification report as text.

    Raises:
        DataError: a true class the model does not know.
    """
    unknown = sorted(set(true_names) - set(class_names))
    if unknown:
        raise DataError(f"test classes {', '.join(unknown)} are not among the model's classes "
                        f"({', '.join(class_names)})")
    truth = np.array([list(class_names).index(n) for n in true_names])
    predicted = probabilities.argmax(1)
    labels = list(range(len(class_names)))
    table = classification_report(truth, predicted, labels=labels, target_names=class_names,
                                  output_dict=True, zero_division=0)
    text = classification_report(truth, predicted, labels=labels, target_names=class_names,
                                 zero_division=0, digits=3)
    per_class_auroc = {}
    for index, name in enumerate(class_names):
        positives = truth == index
        if 0 < positives.sum() < len(truth):
            per_class_auroc[name] = float(roc_auc_score(positives, probabilities[:, index]))
    extras = {
        "class_names": list(class_names),
        "multiclass_accuracy": float((predicted == truth).mean()),
        "per_class": {name: {"precision": table[name]["precision"],
                             "recall": table[name]["recall"],
                             "f1": table[name]["f1-score"],
                             "support": int(table[name]["support"])}
                      for name in class_names},
        "auroc_ovr_per_class": per_class_auroc,
        # macro over the classes present in the test data (all of them, normally)
        "macro_auroc_ovr": (float(np.mean(list(per_class_auroc.values())))
                            if per_class_auroc else None),
    }
    return extras, text


def write_probabilities_csv(path: str | os.PathLike, predictions: Predictions,
                            true_names: Sequence[str], class_names: Sequence[str]) -> None:
    """Write ``path,true_class,<class 1>,<class 2>...`` rows of class probabilities."""
    with atomic_file(path, "w", newline="", encoding="utf-8",
                     errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true_class", *class_names])
        for p, name, row in zip(predictions.paths, true_names, predictions.probabilities):
            writer.writerow([spreadsheet_safe(str(p)), name, *(f"{v:.6g}" for v in row)])


def evaluate_classifier(model: str | os.PathLike, data_dir: str | os.PathLike,
                        out_dir: str | os.PathLike, val_dir: str | os.PathLike | None = None,
                        normal_class: str | None = None, threshold_metric: str = "youden",
                        quantile: float = 0.95, threshold_on_test: bool = False,
                        max_images: int | None = None, resamples: int = 1000,
                        batch_size: int = 32, device: str = "auto",
                        subgroups: Sequence[str] = (), progress: bool = True,
                        log=print) -> dict:
    """Predict ``data_dir`` (and ``val_dir``), pick the threshold, write the report.

    Args:
        model: run directory (its ``checkpoints/best.pt``) or checkpoint file.
        data_dir: labelled test folder (one sub-folder per class).
        out_dir: report folder: report.json, report.html, scores.csv, probabilities.csv,
            roc.png, confusion.png, histogram.png (and per_class.txt with more than two
            classes).
        val_dir: labelled validation folder (Youden/F1 threshold), or a folder of
            normal images only (``quantile`` of their scores).
        normal_class: the normal class folder name (default: the model's).
        threshold_metric: ``youden`` or ``f1``.
        quantile: normal-score quantile for normal-only validation.
        threshold_on_test: without ``val_dir``, pick the threshold on the test data
            (the report then says ``"test"``).
        max_images: at most this many images per class and folder.
        resamples: bootstrap resamples for the AUROC confidence interval.
        subgroups: name patterns of anomalous files, each reported apart against every
            normal file (:func:`~anomaly.evaluate.subgroup_report`).

    Returns:
        The report dict (also written to ``out_dir/report.json``).

    Raises:
        CheckpointError: not a classifier checkpoint.
        DataError: unusable folders.
        EvaluationError: no way to pick a threshold, or one class only.
    """
    classifier = Classifier.from_checkpoint(model, device=device, batch_size=batch_size)
    normal_class = normal_class or classifier.normal_class
    if normal_class != classifier.normal_class:
        raise DataError(f"--normal-class {normal_class} differs from the model's normal class "
                        f"{classifier.normal_class}")
    test = limit_per_class(scan_labelled_folder(data_dir, normal_class), max_images)
    log(f"{display_path(data_dir)}: {test.summary()}")
    check_subgroups(test.paths, test.binary_labels, subgroups, display_path(data_dir))
    val = None
    if val_dir is not None:  # checked before anything is predicted
        val = limit_per_class(read_validation_folder(val_dir, normal_class), max_images)
        refuse_shared_files(test.paths, val.paths, display_path(data_dir),
                            display_path(val_dir))
    elif not threshold_on_test:
        val = fit_validation_images(classifier, log)
        if val is not None:  # fit's validation folder may have been this test folder
            refuse_shared_files(test.paths, val.paths, display_path(data_dir),
                                "the validation images recorded by classify fit",
                                "a threshold picked on them would see the test images; "
                                "pass another --val, or --threshold-on-test")
    predictions, labels, true_names = predict_labelled(classifier, test, progress, log)
    scores = classifier.anomaly_scores(predictions.probabilities)
    val_labels = val_scores = None
    if val is not None:
        val_predictions, val_labels, _ = predict_labelled(classifier, val, progress, log)
        val_scores = classifier.anomaly_scores(val_predictions.probabilities)
    threshold, source = choose_threshold(val_labels, val_scores, None, labels, scores,
                                         threshold_metric, quantile, threshold_on_test)
    report = build_report("classify", labels, scores, threshold, source, resamples)
    report.update(backbone=classifier.model.backbone_name, normal_class=normal_class,
                  checkpoint=str(resolve_classifier_checkpoint(model)),
                  val_auroc=(auroc(val_labels, val_scores) if val_labels is not None
                             and len(np.unique(val_labels)) == 2 else None))
    if subgroups:
        report["subgroups"] = subgroup_report(predictions.paths, labels, scores, threshold,
                                              subgroups, resamples)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(classifier.class_names) > 2:
        extras, text = multiclass_metrics(classifier.class_names, true_names,
                                          predictions.probabilities)
        report.update(extras)
        write_text_atomically(out_dir / "per_class.txt", text)
        log(text.rstrip())
    write_probabilities_csv(out_dir / "probabilities.csv", predictions, true_names,
                            classifier.class_names)
    write_report(out_dir, report, predictions.paths, labels, scores,
                 title=f"classifier ({classifier.model.backbone_name})",
                 panels=lambda chosen: classifier.cam_images(chosen, display_size=192,
                                                             abnormal=True)[1],
                 heat_note="Grad-CAM of the most likely abnormal class on the last "
                           "convolutional block, over the preprocessed input, on every film "
                           "(the missed ones too; full red = this image's peak).")
    return report
