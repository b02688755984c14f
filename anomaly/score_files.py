"""Score many files into a CSV and heatmaps, writing each batch as it is scored.

A run killed midway keeps every row written so far; ``resume=True`` skips the files
already in the CSV, so rows are never duplicated.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, Sequence

from anomaly.heatmap import write_heatmap
from anomaly.io import display_path
from anomaly.score import COMPONENTS, BatchScores, Scorer, ScoreResult

CSV_HEADER = ["path", "score", *COMPONENTS]


def read_scored_paths(csv_path: str | os.PathLike) -> set[str]:
    """Paths already present in a scores CSV (empty if the file does not exist)."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        return set()
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return {row["path"] for row in csv.DictReader(handle) if row.get("score")}


def heatmap_name(path: Path, used: set[str]) -> str:
    """A PNG name for an image's heatmap, unique within one run."""
    stem = display_path(path.stem).replace(os.sep, "_") or "image"
    name, counter = f"{stem}.png", 1
    while name in used:
        counter += 1
        name = f"{stem}_{counter}.png"
    used.add(name)
    return name


def score_files(scorer: Scorer, paths: Sequence[str | os.PathLike],
                out_csv: str | os.PathLike | None = None,
                heatmap_dir: str | os.PathLike | None = None, resume: bool = False,
                on_row: Callable[..., None] | None = None,
                progress: bool = True) -> ScoreResult:
    """Score files, streaming rows to ``out_csv`` and heatmaps to ``heatmap_dir``.

    Args:
        scorer: a loaded scorer.
        paths: image files.
        out_csv: CSV with header ``path,score`` and then every component (see
            ``anomaly.score.COMPONENTS``), flushed per batch.
        heatmap_dir: folder for one three-panel PNG per image.
        resume: keep an existing CSV and skip the paths it already holds.
        on_row: called with (path, score, *components) for each image.
        progress: show a progress bar.

    Returns:
        The scores of the files scored in this call, and the files skipped.
    """
    paths = [Path(p) for p in paths]
    handle = writer = None
    if out_csv is not None:
        out_csv = Path(out_csv)
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        done = read_scored_paths(out_csv) if resume else set()
        paths = [p for p in paths if str(p) not in done]
        append = resume and out_csv.exists() and out_csv.stat().st_size > 0
        handle = open(out_csv, "a" if append else "w", newline="", encoding="utf-8",
                      errors="surrogateescape")
        writer = csv.writer(handle)
        if not append:
            writer.writerow(CSV_HEADER)
    used_names: set[str] = set()

    def write_batch(batch_paths: list[Path], scores: BatchScores) -> None:
        for i, path in enumerate(batch_paths):
            values = [float(getattr(scores, name)[i]) for name in ("score", *COMPONENTS)]
            row = (str(path), *values)
            if writer is not None:
                writer.writerow([row[0], *(f"{v:.6f}" for v in values)])
            if heatmap_dir is not None:
                reconstruction = None if scores.reconstructions is None \
                    else scores.reconstructions[i, 0].numpy()
                write_heatmap(Path(heatmap_dir) / heatmap_name(path, used_names),
                              scores.inputs[i, 0].numpy(), reconstruction,
                              heat=scores.heatmaps[i].numpy())
            if on_row is not None:
                on_row(*row)
        if handle is not None:
            handle.flush()
            os.fsync(handle.fileno())

    try:
        return scorer.score_paths(paths, progress=progress, on_batch=write_batch)
    finally:
        if handle is not None:
            handle.close()


def score_files_sharded(scorer: Scorer, paths: Sequence[str | os.PathLike],
                        out_csv: str | os.PathLike, heatmap_dir: str | os.PathLike | None = None,
                        resume: bool = False, on_row=None, progress: bool = True) -> ScoreResult:
    """Score files across the processes of a ``torchrun`` job into one CSV.

    Rank r scores every world_size-th file into ``OUT.rankR``; rank 0 then merges the
    shards into ``out_csv`` (appending to it with ``resume``) and removes them. In a
    single process this is :func:`score_files`.
    """
    from anomaly import distributed

    dist = distributed.setup()
    if dist.world_size == 1:
        return score_files(scorer, paths, out_csv, heatmap_dir, resume, on_row, progress)
    out_csv = Path(out_csv)
    done = read_scored_paths(out_csv) if resume else set()
    todo = [Path(p) for p in paths if str(p) not in done]
    shard = out_csv.with_name(f"{out_csv.name}.rank{dist.rank}")
    result = score_files(scorer, todo[dist.rank :: dist.world_size], shard, heatmap_dir,
                         resume=resume, on_row=on_row, progress=progress and dist.is_main)
    dist.barrier()
    if dist.is_main:
        merge_shards(out_csv, [out_csv.with_name(f"{out_csv.name}.rank{r}")
                               for r in range(dist.world_size)], append=resume)
    dist.barrier()
    dist.teardown()
    return result


def merge_shards(out_csv: Path, shards: list[Path], append: bool) -> None:
    """Concatenate shard CSVs (same header) into ``out_csv`` and delete the shards."""
    append = append and out_csv.exists() and out_csv.stat().st_size > 0
    with open(out_csv, "a" if append else "w", newline="", encoding="utf-8",
              errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        if not append:
            writer.writerow(CSV_HEADER)
        for shard in shards:
            if not shard.exists():
                continue
            with open(shard, newline="", encoding="utf-8", errors="surrogateescape") as part:
                rows = csv.reader(part)
                next(rows, None)
                writer.writerows(rows)
            shard.unlink()
