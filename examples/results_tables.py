"""The results page's tables for runs evaluated by ``examples/chest_xray_results.sh`` and
``examples/localisation_benchmark.py``: image scores (AUROC on ``test_dev/`` with the
first run's CI, the mean ± sd over the runs, ``val/`` AUROC, the first run's metrics at
the ``val/`` threshold) and where the heat maps land, as Markdown.

Each run folder holds ``<score>/report.json`` (or ``eval_<score>/report.json``) per score
and ``loc_<heat>_<recipe>.json`` per heat map and lesion recipe (the benchmark's
``--json``; ``loc_<heat>.json`` is read as the ``blobs`` recipe's).

Usage:
    python examples/results_tables.py runs/det_s0 runs/det_s1 runs/det_s2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SCORES = {
    "density": "`density` (the default)",
    "map": "`map`: mean of the map's top 1% in the lung field",
    "density+map": "`density+map`: both standardised on the held-out normals, summed",
    "logit": "`logit`",
    "lung-brightness": "no-GAN baseline `lung-brightness`, same films",
}
RECIPES = ("blobs", "consolidation", "patches")
HEATS = {"map": "**the opacity map** (map head, the default heat)",
         "gradcam": "the density's Grad-CAM (`--heat gradcam`)"}


def score_report(run: Path, score: str) -> Path:
    """The run's ``anomaly evaluate`` report of one score (``<score>/`` or ``eval_<score>/``)."""
    plain = run / score / "report.json"
    return plain if plain.exists() else run / f"eval_{score}" / "report.json"


def loc_file(run: Path, heat: str, recipe: str = "blobs") -> Path:
    """The run's localisation benchmark JSON of one heat map and lesion recipe."""
    named = run / f"loc_{heat}_{recipe}.json"
    return named if named.exists() or recipe != "blobs" else run / f"loc_{heat}.json"


def spread(values: list[float]) -> str:
    """``mean ± sd (each)`` of one figure over the runs."""
    each = ", ".join(f"{v:.3f}" for v in values)
    if len(values) == 1:
        return f"{values[0]:.3f} ({each})"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} ({each})"


def mean_and_each(values: list[float]) -> str:
    """``mean (each)``."""
    return f"{np.mean(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})"


def score_table(runs: list[Path]) -> list[str]:
    """Image scores: one row per score kind found in every run."""
    names = ", ".join(run.name for run in runs)
    lines = [f"| score | AUROC `test_dev/` ({runs[0].name}, 95% CI) | {names}: mean ± sd "
             "(each) | AUROC `val/`: mean (each) | at the `val/` threshold, "
             f"{runs[0].name}: sensitivity / specificity / F1 |", "|---|---|---|---|---|"]
    for score, title in SCORES.items():
        files = [score_report(run, score) for run in runs]
        if not all(f.exists() for f in files):
            continue
        reports = [json.loads(f.read_text()) for f in files]
        first = reports[0]
        low, high = first["auroc_ci95"]
        lines.append(
            f"| {title} | {first['auroc']:.3f} ({low:.3f}-{high:.3f}) | "
            f"{spread([r['auroc'] for r in reports])} | "
            f"{mean_and_each([r['val_auroc'] for r in reports])} | "
            f"{first['recall']:.3f} / {first['specificity']:.3f} / {first['f1']:.3f} |")
    return lines


def localisation_tables(runs: list[Path]) -> list[str]:
    """Where each heat map lands (means over the runs, each run in brackets), then the
    image AUROC of lesioned films against their clean twins."""
    names = ", ".join(run.name for run in runs)
    lines = [f"| heat map ({names}) | pixel AUROC in the lung field | the same, with the "
             "clean twins | pointing game | real pneumonias: heat in the lung field | their "
             "maxima in the lung field | normals: heat / maxima in the lung field | films "
             "with a region: pneumonias / normals |", "|---|---|---|---|---|---|---|---|"]
    loaded = {}
    for heat, title in HEATS.items():
        files = [loc_file(run, heat) for run in runs]
        if not all(f.exists() for f in files):
            continue
        figures = loaded[heat] = [json.loads(f.read_text()) for f in files]
        synthetic = [f["synthetic"]["map"] for f in figures]
        real = [f["real"] for f in figures]

        def mean(values) -> str:
            return f"{np.mean(values):.3f}"

        regions = [r["pneumonia"]["with_a_region"] for r in real]
        region_cell = "n/a" if None in regions else (
            f"{mean(regions)} / {mean([r['normal']['with_a_region'] for r in real])}")
        lines.append(
            f"| {title} | {mean_and_each([s['pixel_auroc'] for s in synthetic])} | "
            f"{mean_and_each([s['pixel_auroc_with_clean'] for s in synthetic])} | "
            f"{mean_and_each([s['pointing_game'] for s in synthetic])} | "
            f"{mean_and_each([r['pneumonia']['mass_in_lung_field'] for r in real])} | "
            f"{mean_and_each([r['pneumonia']['maximum_in_lung_field'] for r in real])} | "
            f"{mean([r['normal']['mass_in_lung_field'] for r in real])} / "
            f"{mean([r['normal']['maximum_in_lung_field'] for r in real])} | {region_cell} |")
    if not loaded:
        return lines
    figures = next(iter(loaded.values()))
    baseline = [f["synthetic"]["lung-brightness"] for f in figures]
    lines.append(f"| no-GAN baseline: the film's brightness in the lung prior as a 'map' | "
                 f"{mean_and_each([b['pixel_auroc'] for b in baseline])} | "
                 f"{mean_and_each([b['pixel_auroc_with_clean'] for b in baseline])} | "
                 f"{mean_and_each([b['pointing_game'] for b in baseline])} | | | | |")
    flat = figures[0]["real"]["flat_map_mass_in_lung_field"]
    lines.append(f"| a flat map | 0.5 | 0.5 | | {flat:.3f} | | {flat:.3f} / | |")
    kinds = list(figures[0]["synthetic"]["image_auroc"])
    lines += ["", "| image AUROC, lesioned films vs their own clean twins | "
              + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds),
              f"| mean of {names} | " + " | ".join(
                  mean_and_each([f["synthetic"]["image_auroc"][k] for f in figures])
                  for k in kinds) + " |"]
    return lines


def recipe_table(runs: list[Path]) -> list[str]:
    """Pixel AUROC in the lung field / pointing game of each heat map on every lesion
    recipe the runs were benchmarked on: means over the runs, each run in brackets."""
    recipes = [r for r in RECIPES if all(loc_file(run, h, r).exists()
                                           for run in runs for h in HEATS)]
    if not recipes:
        return []
    figures = {r: {h: [json.loads(loc_file(run, h, r).read_text()) for run in runs]
                   for h in HEATS} for r in recipes}
    lines = ["| heat map: pixel AUROC in the lung field / pointing game, mean (each) | "
             + " | ".join(f"`{r}`" for r in recipes) + " |", "|---|" + "---|" * len(recipes)]
    rows = [(title, heat, "map") for heat, title in HEATS.items()]  # each file's heat: "map"
    rows.append(("no-GAN baseline: the film's brightness in the lung prior", "map",
                 "lung-brightness"))
    for title, heat, key in rows:
        cells = []
        for recipe in recipes:
            synthetic = [f["synthetic"][key] for f in figures[recipe][heat]]
            cells.append(f"{mean_and_each([s['pixel_auroc'] for s in synthetic])} / "
                         f"{mean_and_each([s['pointing_game'] for s in synthetic])}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="evaluated run folders")
    args = parser.parse_args(argv)
    print("\n".join(score_table(args.runs)))
    print()
    print("\n".join(localisation_tables(args.runs)))
    recipes = recipe_table(args.runs)
    if recipes:
        print()
        print("\n".join(recipes))


if __name__ == "__main__":
    main()
