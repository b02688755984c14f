"""``anomaly evaluate``: score a labelled folder with a trained GAN and write the report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from anomaly.data import (
    DataError,
    LabelledFolder,
    find_images,
    refuse_shared_files,
    scan_labelled_folder,
)
from anomaly.evaluate import (
    auroc,
    build_report,
    check_subgroups,
    choose_threshold,
    subgroup_report,
    write_report,
)
from anomaly.fidelity import FidelityCollector, reconstruction_fidelity
from anomaly.io import display_path
from anomaly.score import Scorer


def read_validation_folder(folder: str | os.PathLike, normal_class: str) -> LabelledFolder:
    """A labelled folder, or a flat folder of images taken to be all normal."""
    folder = Path(folder)
    try:
        return scan_labelled_folder(folder, normal_class)
    except DataError:
        paths = [p for p in find_images(folder) if p.parent == folder]
        if not paths:
            raise
        return LabelledFolder(paths, [normal_class], [0] * len(paths), normal_class)


def limit_per_class(folder: LabelledFolder, max_images: int | None) -> LabelledFolder:
    """Keep at most ``max_images`` images of each class (a quick try)."""
    if not max_images:
        return folder
    kept, counts = [], {}
    for path, index in zip(folder.paths, folder.class_index):
        counts[index] = counts.get(index, 0) + 1
        if counts[index] <= max_images:
            kept.append((path, index))
    return LabelledFolder([p for p, _ in kept], folder.class_names, [i for _, i in kept],
                          folder.normal_class, folder.empty_classes)


def score_labelled(scorer: Scorer, folder: LabelledFolder, progress: bool = True, log=print,
                   heat_maxima: dict | None = None
                   ) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Score a labelled folder; return (paths, binary labels, scores) of readable images.
    ``heat_maxima``, when given, receives each one's heat-map maximum by path."""
    from anomaly.regions import scores_and_heat_maxima

    label_of = dict(zip(folder.paths, folder.binary_labels.tolist()))
    if heat_maxima is not None:
        result, maxima = scores_and_heat_maxima(scorer, folder.paths, progress)
        heat_maxima.update(maxima)
    else:
        result = scorer.score_paths(folder.paths, progress=progress)
    scores = np.asarray(result.score, dtype=np.float64)
    finite = np.isfinite(scores)  # a film whose score is not finite is said, then left out
    for path, reason in [*result.failures, *((p, "its score is not finite") for p, keep
                                             in zip(result.paths, finite) if not keep)]:
        log(f"skipped {display_path(path)}: {reason}")
    paths = [p for p, keep in zip(result.paths, finite) if keep]
    labels = np.array([label_of[p] for p in paths], dtype=np.int64)
    return paths, labels, scores[finite]


def evaluate_model(model: str | os.PathLike, data_dir: str | os.PathLike,
                 out_dir: str | os.PathLike, val_dir: str | os.PathLike | None = None,
                 normal_class: str = "NORMAL", threshold_metric: str = "youden",
                 quantile: float = 0.95, threshold_on_test: bool = False,
                 max_images: int | None = None, resamples: int = 1000,
                 subgroups: Sequence[str] = (), progress: bool = True, log=print,
                 **scorer_options) -> dict:
    """Score ``data_dir`` (and ``val_dir``), pick the threshold, write the report.

    Without ``val_dir`` the threshold is the ``quantile`` of the scores of the normal
    images the GAN held out from training. In modes that reconstruct, the report also
    holds the reconstruction fidelity on those held-out normals (:mod:`anomaly.fidelity`).

    Args:
        model: run directory or checkpoint.
        data_dir: labelled test folder (one sub-folder per class).
        out_dir: report folder (report.json, report.html with the error gallery,
            scores.csv, roc.png, confusion.png, histogram.png).
        val_dir: labelled validation folder, or a folder of normal images only.
        threshold_metric: ``youden`` or ``f1`` (labelled validation).
        quantile: normal-score quantile (normal-only validation).
        threshold_on_test: allow picking the threshold on the test data when there is
            no validation data (the report then says ``"test"``).
        max_images: at most this many images per class and folder.
        resamples: bootstrap resamples for the AUROC confidence intervals.
        subgroups: name patterns of anomalous files, each reported apart against every
            normal file (:func:`~anomaly.evaluate.subgroup_report`).
        **scorer_options: ``mode``, ``score``, ``iterations``, ``lr``, ``lam``,
            ``batch_size``, ``device``, ``seed``.

    Returns:
        The report dict (also written to ``out_dir/report.json``).
    """
    scorer = Scorer.from_checkpoint(model, **scorer_options)
    log(f"scoring with {describe_scorer(scorer)}")
    test = limit_per_class(scan_labelled_folder(data_dir, normal_class), max_images)
    log(f"{display_path(data_dir)}: {test.summary()}")
    check_subgroups(test.paths, test.binary_labels, subgroups, display_path(data_dir))
    val = None
    if val_dir is not None:  # checked before anything is scored
        val = limit_per_class(read_validation_folder(val_dir, normal_class), max_images)
        refuse_shared_files(test.paths, val.paths, display_path(data_dir),
                            display_path(val_dir))
    paths, labels, scores = score_labelled(scorer, test, progress, log)
    fidelity = FidelityCollector()  # of the held-out normals, in the pass that scores them
    val_labels = val_scores = normal_scores = None
    if val is not None:
        _, val_labels, val_scores = score_labelled(scorer, val, progress, log)
    else:
        normal_scores = heldout_normal_scores(scorer, log, on_batch=fidelity)
    threshold, source = choose_threshold(val_labels, val_scores, normal_scores, labels, scores,
                                         threshold_metric, quantile, threshold_on_test)
    report = build_report("anomaly", labels, scores, threshold, source, resamples)
    report.update(family=scorer.family.name, mode=scorer.mode, score=scorer.score,
                  **scorer.family.report_settings(scorer.score),
                  val_auroc=_val_auroc(val_labels, val_scores))
    if subgroups:
        report["subgroups"] = subgroup_report(paths, labels, scores, threshold, subgroups,
                                              resamples)
    if scorer.reconstructs:
        report["fidelity_heldout_normals"] = fidelity.summary() or reconstruction_fidelity(
            scorer, scorer.available_holdout())
    write_report(out_dir, report, paths, labels, scores,
                 title=f"{scorer.family.title} ({scorer.mode}, {scorer.score})",
                 panels=lambda chosen: heatmap_panels(scorer, chosen),
                 heat_note=heat_note(scorer))
    return report


def calibrate_threshold(model: str | os.PathLike, val_dir: str | os.PathLike,
                        normal_class: str = "NORMAL", threshold_metric: str = "youden",
                        quantile: float = 0.95, regions: bool = True, progress: bool = True,
                        log=print, **scorer_options) -> dict:
    """Pick the threshold on ``val_dir`` and store it in the checkpoint for this mode,
    score and settings, where ``anomaly score`` and :meth:`Scorer.decision` find it.

    Labelled validation data with both classes gives Youden's J (or F1); normal images
    only give their ``quantile``. With ``regions``, the region threshold of the scorer's
    heat map is fitted again on the folder's normal films when it holds at least
    :data:`anomaly.regions.REGION_MIN_NORMALS` of them with a finite map (else the one
    fitted before is kept, and said so), and stored in the same entry, by heat map.

    Returns:
        The stored entry: ``value``, ``source``, ``n``, ``mode``, ``score``, and
        ``region_thresholds`` (heat map -> ``value`` and ``n``, the normal films it was
        fitted on) where one was fitted now or before.
    """
    from anomaly import pretrained
    from anomaly.checkpoint import (
        CheckpointError,
        load_checkpoint,
        resolve_checkpoint_path,
        save_checkpoint,
    )
    from anomaly.decision import threshold_key

    path = resolve_checkpoint_path(model)
    if path.resolve() == (pretrained.folder() / pretrained.CHECKPOINT_NAME).resolve():
        raise CheckpointError("the bundled pretrained model is part of the installed package "
                              "and is not changed: copy it (anomaly.pretrained.checkpoint()) "
                              "and calibrate the copy")
    scorer = Scorer.from_checkpoint(path, **scorer_options)
    val = read_validation_folder(val_dir, normal_class)
    maxima: dict = {}
    paths, labels, scores = score_labelled(scorer, val, progress, log,
                                           heat_maxima=maxima if regions else None)
    value, source = choose_threshold(labels, scores, metric=threshold_metric,
                                     quantile=quantile)
    key = threshold_key(scorer.output_settings())
    state = load_checkpoint(path)
    earlier = (state.get("thresholds") or {}).get(key) or {}
    entry = {"value": value, "source": source if source != "val" else
             f"val-{threshold_metric}", "n": int(len(scores)), "mode": scorer.mode,
             "score": scorer.score, "val_dir": str(Path(val_dir).resolve())}
    region_thresholds = dict(earlier.get("region_thresholds") or {})  # by heat map
    fitted = None
    if regions:
        normal = [maxima[p] for p, label in zip(paths, labels) if label == 0 and p in maxima]
        fitted = refit_region_threshold(normal, display_path(val_dir), log)
        if fitted is not None:
            region_thresholds[scorer.heat_name] = fitted
    if fitted is None and scorer.heat_name in region_thresholds:
        log(f"kept the region threshold ({scorer.heat_name} heat map) calibrated before on "
            f"{region_thresholds[scorer.heat_name]['n']} normal films")
    elif fitted is None:
        log(f"kept the run's own region threshold ({scorer.heat_name} heat map, fitted on "
            "its held-out normals)")
    if region_thresholds:
        entry["region_thresholds"] = region_thresholds
    state.setdefault("thresholds", {})[key] = entry
    save_checkpoint(state, path)
    return entry


def refit_region_threshold(normal_maxima: list[float], folder: str, log=print
                           ) -> dict | None:
    """The region threshold (``value``, ``n``) fitted on the heat-map maxima of a site's
    normal films, or None (said in one line) with fewer than
    :data:`anomaly.regions.REGION_MIN_NORMALS` finite ones."""
    import math

    from anomaly.regions import REGION_MIN_NORMALS, fit_region_threshold

    finite = [m for m in normal_maxima if math.isfinite(m)]
    if len(finite) < len(normal_maxima):
        log(f"{folder}: {len(normal_maxima) - len(finite)} normal films with a heat map that "
            "is not finite are left out of the region threshold")
    if len(finite) < REGION_MIN_NORMALS:
        log(f"{folder}: {len(finite)} normal films with a heat map, fewer than the "
            f"{REGION_MIN_NORMALS} needed to fit the region threshold again")
        return None
    return {"value": fit_region_threshold(finite), "n": len(finite)}


def describe_scorer(scorer: Scorer) -> str:
    """One line: mode, score and, where the mode searches, its steps and lambda."""
    search = (f", {scorer.iterations} iterations, lambda {scorer.lam}"
              if scorer.reconstructs else "")
    return f"mode {scorer.mode}, score {scorer.score}{search}, device {scorer.device}"


SHARED_HEAT_NOTES = {  # the scores every family offers; each family notes its own
    "lung-brightness": "Left: the preprocessed input. Right: the brightness the score "
                       "averages inside the lung prior.",
}


def heat_note(scorer: Scorer) -> str | None:
    """What the report's heat-map panels show: the family's note, else a shared score's."""
    from anomaly.families import FAMILIES

    note = getattr(FAMILIES[scorer.family.name], "heat_note", lambda _: None)(scorer)
    return note or SHARED_HEAT_NOTES.get(scorer.score)


def heatmap_panels(scorer: Scorer, paths: list[Path], display_size: int = 192
                   ) -> dict[Path, np.ndarray]:
    """Score ``paths`` again and draw each one's heatmap panel (input, G(z) when the
    mode reconstructs, heat over the input), as for ``anomaly score --heatmaps``."""
    panels = {}

    def draw(batch_paths: list[Path], scores) -> None:
        for i, path in enumerate(batch_paths):
            panels[path] = scorer.heatmap_panel(scores, i, display_size)

    scorer.score_paths(paths, progress=False, on_batch=draw, heatmaps=True)
    return panels


def heldout_normal_scores(scorer: Scorer, log=print, on_batch=None) -> list[float] | None:
    """Scores of the normal images held out from GAN training (fitted ones if they match);
    ``on_batch`` sees each batch when they have to be scored here."""
    fitted = scorer.fitted_normal_scores()
    if fitted is not None:
        return fitted
    holdout = scorer.available_holdout()
    if len(holdout) < 2:
        return None
    log(f"scoring {len(holdout)} held-out normal training images for the threshold")
    scorer.calibrate(holdout, on_batch=on_batch)
    return scorer.fitted_normal_scores()


def _val_auroc(labels, scores) -> float | None:
    if labels is None or len(np.unique(labels)) < 2:
        return None

    return auroc(labels, scores)
