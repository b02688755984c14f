"""How often another site's films get a region, before and after `anomaly calibrate`
fits the region threshold again on that site's own normal films.

The labelled folder's normal films are split by patient into two halves: a copy of the
run is calibrated on the first half (normal films only, as a site without labelled
pneumonias would), and the second half's normals and every abnormal film are scored
with their regions, with the run's own region threshold (fitted on its held-out
normals) and with the site's. No abnormal film is used to fit anything.

    python examples/site_regions.py --model runs/o2s0/run --data ../shared/data/chest_xray/test_dev
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomaly.checkpoint import load_checkpoint, resolve_checkpoint_path
from anomaly.data import scan_labelled_folder
from anomaly.evaluate_model import calibrate_threshold
from anomaly.regions import find_regions
from anomaly.score import Scorer
from anomaly.train import patient_id


def split_by_patient(paths: list[Path], pattern: str) -> tuple[list[Path], list[Path]]:
    """Two halves of ``paths``, no patient in both: alternate sorted patient ids (a file
    without an id is its own patient)."""
    patients = sorted({patient_id(p, pattern) or p.name for p in paths})
    first = set(patients[0::2])
    return ([p for p in paths if (patient_id(p, pattern) or p.name) in first],
            [p for p in paths if (patient_id(p, pattern) or p.name) not in first])


def shares_with_a_region(scorer: Scorer, paths: list[Path], thresholds: list[float]
                         ) -> list[float]:
    """For each region threshold, the share of ``paths`` whose heat map has at least one
    region above it (the films scored once)."""
    boxed = [[] for _ in thresholds]

    def count(batch_paths, scores) -> None:
        for heat in scores.heatmaps:
            for found, threshold in zip(boxed, thresholds):
                found.append(bool(find_regions(heat.numpy(), threshold)))

    scorer.score_paths(paths, progress=False, on_batch=count, heatmaps=True)
    return [sum(found) / max(len(found), 1) for found in boxed]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run directory or checkpoint")
    parser.add_argument("--data", required=True, help="labelled folder (NORMAL and others)")
    parser.add_argument("--normal-class", default="NORMAL")
    parser.add_argument("--heat", help="heat map to box (default: the run's, map where "
                        "it has a head; gradcam: the density's Grad-CAM)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    source = resolve_checkpoint_path(args.model)
    pattern = load_checkpoint(source)["train_config"].get("holdout_patient_pattern", "")
    folder = scan_labelled_folder(args.data, args.normal_class)
    labels = folder.binary_labels.tolist()
    normals = [p for p, label in zip(folder.paths, labels) if label == 0]
    abnormal = [p for p, label in zip(folder.paths, labels) if label == 1]
    calibration, check = split_by_patient(normals, pattern)
    with tempfile.TemporaryDirectory() as work:
        site = Path(work) / "site" / args.normal_class
        site.mkdir(parents=True)
        for index, path in enumerate(calibration):  # numbered: names may repeat
            (site / f"{index:05d}_{path.name}").symlink_to(path.resolve())
        model = Path(work) / "model.pt"
        shutil.copy(source, model)
        heat = {"heat": args.heat} if args.heat else {}
        own = Scorer.from_checkpoint(model, **heat)
        if own.region_threshold is None:
            sys.exit(f"error: {args.model} has no region threshold of its "
                     f"{own.heat_name} heat map to compare with")
        entry = calibrate_threshold(model, site.parent, args.normal_class, progress=False,
                                    **heat)
    site_threshold = (entry.get("region_thresholds") or {}).get(own.heat_name, {}).get("value")
    rules = [own.region_threshold, site_threshold or own.region_threshold]  # none: the run's
    normal_shares = shares_with_a_region(own, check, rules)
    abnormal_shares = shares_with_a_region(own, abnormal, rules)
    figures = {
        "model": str(args.model), "data": str(args.data), "heat": own.heat_name,
        "calibration_normals": len(calibration), "check_normals": len(check),
        "abnormal": len(abnormal), "run_threshold": own.region_threshold,
        "site_threshold": site_threshold,
        **{name: {"normals": normal_shares[i], "abnormal": abnormal_shares[i]}
           for i, name in enumerate(("run", "site"))}}
    print(f"{args.model}: heat map {own.heat_name}; {len(calibration)} normal films calibrate, "
          f"{len(check)} other normals and {len(abnormal)} abnormal films are checked")
    for name, label in (("run", "the run's own threshold"), ("site", "the site's threshold")):
        value = figures[f"{name}_threshold"]
        value = "(none fitted: the run's)" if value is None else f"{value:.4g}"
        print(f"  {label} {value}: films with a region: normals "
              f"{figures[name]['normals']:.1%}, abnormal {figures[name]['abnormal']:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
