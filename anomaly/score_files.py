"""Score many files into a CSV and heatmaps, writing each batch as it is scored.

A run killed midway keeps every row written so far; ``resume=True`` skips the files
already in the CSV, so rows are never duplicated. Beside the CSV, ``OUT.settings.json``
records what made its rows (checkpoint, mode, score, iterations, ...): a resume with other
settings is refused rather than mixing two kinds of score in one file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from anomaly.atomic import atomic_file, open_for_streaming, write_text_atomically
from anomaly.decision import Decision
from anomaly.heatmap import with_caption, write_png
from anomaly.io import display_path, from_spreadsheet_safe, spreadsheet_safe
from anomaly.results import BatchScores, ScoreResult

if TYPE_CHECKING:  # any object with Scorer's file-scoring interface will do
    from anomaly.score import Scorer


def csv_header(scorer: Scorer, decision: Decision | None = None, regions: bool = False
               ) -> list[str]:
    """A scores CSV's header: ``path,score``, ``label,p_value`` when a decision rule is
    given, then the scorer's components, and ``regions`` (their count) when asked."""
    return ["path", "score", *(["label", "p_value"] if decision else []),
            *scorer.component_names, *(["regions"] if regions else [])]


def regions_path(csv_path: str | os.PathLike) -> Path:
    """Where the regions of a scores CSV's films are written: ``OUT.regions.jsonl``, one
    JSON object per film (``path``, ``shape`` [H, W], ``threshold``, ``regions``: boxes
    x, y, w, h in the film's pixels with their peak and mean heat and area)."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.name + ".regions.jsonl")


def read_scored_paths(csv_path: str | os.PathLike) -> set[str]:
    """Paths of the complete rows of a scores CSV (empty if the file does not exist): a
    row counts when it has the header's columns and a score that parses."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        return set()
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        rows = list(csv.reader(handle))
    return {from_spreadsheet_safe(row[0]) for row in rows[1:] if complete_row(row, rows[0])}


def complete_row(row: list[str], header: list[str]) -> bool:
    """Whether a CSV row was written whole: the header's column count, a parseable score."""
    if len(row) != len(header) or len(row) < 2:
        return False
    try:
        float(row[1])
    except ValueError:
        return False
    return True


def keep_complete_rows(csv_path: Path, handle) -> set[str]:
    """Before appending to a CSV being resumed (``handle``: its locked, open handle): cut
    a last row left incomplete by a disk-full or killed write, in place, so the next row
    starts on a fresh line. Returns the paths of the complete rows.

    Raises:
        ResumeMismatch: a damaged row before the last complete one (not a cut write).
    """
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as reader:
        text = reader.read()
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return set()
    complete = [complete_row(row, rows[0]) for row in rows[1:]]
    if complete and not text.endswith("\n"):  # cut inside its last field, or before "\n"
        complete[-1] = False
    kept = len(complete) - complete[::-1].index(True) if any(complete) else 0
    if not all(complete[:kept]):
        raise ResumeMismatch(f"{display_path(csv_path)}: cannot resume, row "
                             f"{complete.index(False) + 2} is damaged; write to a new --out")
    if kept < len(complete) or not text.endswith("\n"):
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows[: kept + 1])
        prefix = buffer.getvalue()
        if not text.startswith(prefix):
            raise ResumeMismatch(f"{display_path(csv_path)}: cannot resume, its last rows "
                                 "are damaged; write to a new --out")
        handle.flush()
        os.ftruncate(handle.fileno(), len(prefix.encode("utf-8", "surrogateescape")))
    return {from_spreadsheet_safe(row[0]) for row in rows[1: kept + 1]}


def keep_regions_of(regions_file: Path, kept: set[str]) -> None:
    """Before appending to a resumed run's regions file: keep one whole record per film
    whose CSV row was kept, dropping a line cut by a kill or a full disk and the records
    of films whose row was never written (rewritten atomically)."""
    if not regions_file.exists():
        return
    text = regions_file.read_text(encoding="utf-8", errors="surrogateescape")
    records, seen = [], set()
    for line in text.splitlines(keepends=True):
        try:
            path = json.loads(line).get("path") if line.endswith("\n") else None
        except (ValueError, AttributeError):
            path = None
        if path in kept and path not in seen:
            seen.add(path)
            records.append(line)
    if "".join(records) != text:
        with atomic_file(regions_file, "w", encoding="utf-8",
                         errors="surrogateescape") as handle:
            handle.write("".join(records))


def same_files(paths: Sequence[Path], done: set[str]) -> set[Path]:
    """The paths among ``paths`` already scored in ``done`` (as written, or as the same
    file spelled another way: relative or absolute, through ``..``)."""
    resolved = {os.path.realpath(p) for p in done}
    return {p for p in paths if str(p) in done or os.path.realpath(p) in resolved}


class ResumeMismatch(ValueError):
    """A CSV to resume was written with other settings; the message says which."""


def settings_path(csv_path: str | os.PathLike) -> Path:
    """Where the settings that made a scores CSV are recorded."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.name + ".settings.json")


def check_resume_settings(csv_path: str | os.PathLike, settings: dict) -> None:
    """Refuse to resume a CSV made with other settings (or with none recorded).

    Raises:
        ResumeMismatch: the recorded settings differ, or are missing, for a non-empty CSV.
    """
    csv_path = Path(csv_path)
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return
    try:
        recorded = json.loads(settings_path(csv_path).read_text())
    except (OSError, ValueError):
        raise ResumeMismatch(f"{display_path(csv_path)}: cannot resume, the settings that "
                             "made it are not recorded; write to a new --out") from None
    differ = [f"{key} {recorded.get(key)!r} there, {value!r} now"
              for key, value in settings.items() if recorded.get(key) != value]
    if differ:
        raise ResumeMismatch(f"{display_path(csv_path)}: cannot resume with other settings ("
                             + "; ".join(differ) + "); write to a new --out")


def write_settings(csv_path: str | os.PathLike, settings: dict) -> None:
    """Record the settings of a new scores CSV (atomically)."""
    write_text_atomically(settings_path(csv_path), json.dumps(settings, indent=2) + "\n")


def row_settings(scorer: Scorer, decision: Decision | None = None, regions: bool = False
                 ) -> dict:
    """What makes a CSV's rows: the scorer's output settings and the decision rule (and
    the heat map and region threshold, with regions)."""
    rule = {"threshold": decision.threshold, "alpha": decision.alpha} if decision else {}
    boxes = {"heat": scorer.heat_name, "region_threshold": scorer.region_threshold} \
        if regions else {}
    return {**scorer.output_settings(), **rule, **boxes,
            "columns": csv_header(scorer, decision, regions)}


def heatmap_names(paths: Sequence[Path]) -> dict[Path, str]:
    """A unique PNG name for every image of a job, the same in every process."""
    used: set[str] = set()
    return {path: heatmap_name(path, used) for path in paths}


def heatmap_name(path: Path, used: set[str]) -> str:
    """A PNG name for an image's heatmap, unique within one run."""
    stem = display_path(path.stem).replace(os.sep, "_") or "image"
    name, counter = f"{stem}.png", 1
    while name in used:
        counter += 1
        name = f"{stem}_{counter}.png"
    used.add(name)
    return name


def panel_caption(score: float, decision: Decision | None, labels, p_values, index: int,
                  boxes: list | None) -> str:
    """One line under a heat-map PNG: the score, the threshold and label, the p-value and
    the number of regions."""
    text = f"score {score:.4g}"
    if decision is not None and decision.threshold is not None:
        text += f" (threshold {decision.threshold:.4g}, {decision.source})"
    if labels is not None and labels[index]:
        text += f": {labels[index]}"
    if p_values is not None and np.isfinite(p_values[index]):
        text += f", p = {p_values[index]:.3g}"
    if boxes is not None:
        text += f"; {len(boxes)} region(s) boxed"
    return text


def score_files(scorer: Scorer, paths: Sequence[str | os.PathLike],
                out_csv: str | os.PathLike | None = None,
                heatmap_dir: str | os.PathLike | None = None, resume: bool = False,
                on_row: Callable[..., None] | None = None,
                progress: bool = True, names: dict[Path, str] | None = None,
                record_settings: bool = True, decision: Decision | None = None,
                regions: bool = False) -> ScoreResult:
    """Score files, streaming rows to ``out_csv`` and heatmaps to ``heatmap_dir``.

    Args:
        scorer: a loaded scorer.
        paths: image files.
        out_csv: CSV with header ``path,score`` and then the scorer's components
            (:func:`csv_header`), flushed per batch.
        heatmap_dir: folder for one three-panel PNG per image.
        resume: keep an existing CSV and skip the paths it already holds.
        on_row: called with (path, score, *components) for each image (with
            ``decision``: (path, score, label, p_value, *components)).
        progress: show a progress bar.
        names: heatmap file name of each path (default: :func:`heatmap_names` of
            ``paths``, so a resumed job names its heatmaps as the first one did).
        record_settings: check the settings of a CSV to resume and record those of a
            new one (off for the shards of a sharded job, which checks once for all).
        decision: adds each image's label and conformal p-value (:mod:`anomaly.decision`).
        regions: adds each image's regions (:meth:`Scorer.film_regions`): their count as
            a ``regions`` column, the boxes to :func:`regions_path` of ``out_csv``, and
            to ``on_row`` as a last argument (a list of dicts).

    Returns:
        The scores of the files scored in this call, and the files skipped.

    Raises:
        ResumeMismatch: ``resume`` on a CSV made with other settings.
    """
    if regions:
        scorer.regions(np.zeros((1, 1), dtype=np.float32))  # no threshold: refused up front
    paths = [Path(p) for p in paths]
    names = heatmap_names(paths) if names is None else names
    handle = writer = regions_handle = None
    if out_csv is not None:
        out_csv = Path(out_csv)
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        if resume and record_settings:
            check_resume_settings(out_csv, row_settings(scorer, decision, regions))
        handle = open_for_streaming(out_csv, append=True, lock=True, newline="",
                                    encoding="utf-8", errors="surrogateescape")
        append = resume and os.fstat(handle.fileno()).st_size > 0
        if append:
            kept = keep_complete_rows(out_csv, handle)
            if regions:
                keep_regions_of(regions_path(out_csv), kept)
            already = same_files(paths, kept)
            paths = [p for p in paths if p not in already]
        else:
            handle.truncate(0)
        writer = csv.writer(handle)
        if not append:
            writer.writerow(csv_header(scorer, decision, regions))
            if record_settings:
                write_settings(out_csv, row_settings(scorer, decision, regions))
        if regions:
            regions_handle = open_for_streaming(regions_path(out_csv), append,
                                                encoding="utf-8", errors="surrogateescape")

    def write_batch(batch_paths: list[Path], scores: BatchScores) -> None:
        labels = decision.labels(scores.score) if decision else None
        p_values = decision.p_values(scores.score) if decision else None
        for i, path in enumerate(batch_paths):
            components = [float(scores.components[name][i]) for name in scorer.component_names]
            verdict = [labels[i], float(p_values[i])] if decision else []
            boxes = [r.as_dict() for r in scorer.film_regions(scores, i)] if regions else None
            row = (str(path), float(scores.score[i]), *verdict, *components,
                   *([boxes] if regions else []))
            if writer is not None:
                writer.writerow([spreadsheet_safe(str(path)), f"{scores.score[i]:.6f}",
                                 *([labels[i], f"{p_values[i]:.6f}"] if decision else []),
                                 *(f"{v:.6f}" for v in components),
                                 *([len(boxes)] if regions else [])])
            if regions_handle is not None:
                shape = scores.shapes[i] if scores.shapes is not None else None
                regions_handle.write(json.dumps({
                    "path": str(path), "shape": None if shape is None else list(shape),
                    "threshold": scorer.region_threshold, "regions": boxes}) + "\n")
            if heatmap_dir is not None:
                drawn = None if scorer.region_threshold is None \
                    else scorer.regions(np.asarray(scores.heatmaps[i]))  # found once
                panel = scorer.heatmap_panel(scores, i, boxes=drawn or [])
                write_png(Path(heatmap_dir) / names[path], with_caption(
                    panel, panel_caption(scores.score[i], decision, labels, p_values, i,
                                         drawn)))
            if on_row is not None:
                on_row(*row)
        for open_file in (regions_handle, handle):  # the boxes first: a row means both
            if open_file is not None:
                open_file.flush()
                os.fsync(open_file.fileno())

    try:
        return scorer.score_paths(paths, progress=progress, on_batch=write_batch,
                                  heatmaps=heatmap_dir is not None or regions)
    finally:
        for open_file in (handle, regions_handle):
            if open_file is not None:
                open_file.close()


def score_files_sharded(scorer: Scorer, paths: Sequence[str | os.PathLike],
                        out_csv: str | os.PathLike, heatmap_dir: str | os.PathLike | None = None,
                        resume: bool = False, on_row=None, progress: bool = True,
                        decision: Decision | None = None) -> ScoreResult:
    """Score files across the processes of a ``torchrun`` job into one CSV.

    Rank r scores every world_size-th file still to do into ``OUT.rankR``; rank 0 then
    merges the shards into ``out_csv`` and removes them. With ``resume``, rank 0 first
    merges every shard a killed job left behind, whatever its number of processes, so
    no row is lost or scored twice. In a single process this is :func:`score_files`.

    Raises:
        ResumeMismatch: ``resume`` on a CSV made with other settings.
    """
    from anomaly import distributed

    dist = distributed.setup()
    if dist.world_size == 1:
        return score_files(scorer, paths, out_csv, heatmap_dir, resume, on_row, progress,
                           decision=decision)
    out_csv = Path(out_csv)
    paths = [Path(p) for p in paths]
    if resume:
        check_resume_settings(out_csv, row_settings(scorer, decision))
    dist.barrier()
    if dist.is_main:
        leftovers = sorted(out_csv.parent.glob(f"{out_csv.name}.rank*")) if resume else []
        merge_shards(out_csv, leftovers, csv_header(scorer, decision), append=resume)
        write_settings(out_csv, row_settings(scorer, decision))
    dist.barrier()
    already = same_files(paths, read_scored_paths(out_csv))
    todo = [p for p in paths if p not in already]
    shard = out_csv.with_name(f"{out_csv.name}.rank{dist.rank}")
    result = score_files(scorer, todo[dist.rank :: dist.world_size], shard, heatmap_dir,
                         on_row=on_row, progress=progress and dist.is_main,
                         names=heatmap_names(paths), record_settings=False, decision=decision)
    dist.barrier()
    if dist.is_main:
        merge_shards(out_csv, [out_csv.with_name(f"{out_csv.name}.rank{r}")
                               for r in range(dist.world_size)], csv_header(scorer, decision),
                     append=True)
    dist.barrier()
    dist.teardown()
    return result


def merge_shards(out_csv: Path, shards: list[Path], header: list[str], append: bool) -> None:
    """Append shard CSVs (with ``header``) to ``out_csv``, skipping paths it already
    holds, and delete the shards. Without ``append`` the CSV is started anew."""
    append = append and out_csv.exists() and out_csv.stat().st_size > 0
    with open(out_csv, "a" if append else "w", newline="", encoding="utf-8",
              errors="surrogateescape") as handle:
        done = keep_complete_rows(out_csv, handle) if append else set()  # cut tail dropped
        writer = csv.writer(handle)
        if not append:
            writer.writerow(header)
        for shard in shards:
            if not shard.exists():
                continue
            with open(shard, newline="", encoding="utf-8", errors="surrogateescape") as part:
                rows = csv.reader(part)
                next(rows, None)
                for row in rows:  # a row cut short by a kill is left out
                    path = from_spreadsheet_safe(row[0]) if row else ""
                    if len(row) == len(header) and path not in done:
                        writer.writerow(row)
                        done.add(path)
            handle.flush()
            os.fsync(handle.fileno())
            shard.unlink()
