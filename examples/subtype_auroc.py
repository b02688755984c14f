"""AUROC of each kind of abnormal film against all the normals, from written evaluations.

The chest X-ray data names each pneumonia film ``..._bacteria_...`` or ``..._virus_...``;
a score that finds consolidation (bacterial, lobar) may miss the diffuse pattern of a
viral pneumonia. ``anomaly evaluate --subgroup virus`` reports this as it evaluates;
this reads evaluations already written: the ``scores.csv`` that ``anomaly evaluate`` (or
``classify evaluate``) writes, with its ``report.json`` beside it, one column per file,
one row per name pattern (:func:`anomaly.evaluate.subgroup_report`) and one for every
abnormal film.

    python examples/subtype_auroc.py runs/s0/density/scores.csv \
        runs/s0/lung-brightness/scores.csv --kind bacteria --kind virus
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomaly.evaluate import (
    EvaluationError,
    auroc,
    check_subgroups,
    read_scores_csv,
    subgroup_report,
)


def subtype_aurocs(scores_csv: Path, kinds: list[str]) -> dict[str, str]:
    """AUROC against every normal with its 95% CI and the count of the abnormal films
    whose name holds each kind, and AUROC and count of them all (``all abnormal``)."""
    report_json = scores_csv.parent / "report.json"
    try:
        paths, labels, scores = read_scores_csv(scores_csv)
        threshold = json.loads(report_json.read_text())["threshold"]
    except (OSError, KeyError, ValueError) as error:
        raise SystemExit(f"error: {scores_csv}: not an evaluation's scores.csv with its "
                         f"report.json ({error})") from None
    try:
        check_subgroups(paths, labels, kinds, str(scores_csv))
        groups = subgroup_report(paths, labels, scores, threshold, kinds)
        figures = {name: "{:.3f} ({:.3f}-{:.3f}), {} films".format(
                       group["auroc"], *group["auroc_ci95"], group["n_anomalous"])
                   for name, group in groups.items()}
        figures["all abnormal"] = f"{auroc(labels, scores):.3f}, {int(labels.sum())} films"
    except EvaluationError as error:
        raise SystemExit(f"error: {error}") from None
    return figures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", nargs="+", type=Path, help="an evaluation's scores.csv")
    parser.add_argument("--kind", action="append", default=[],
                        help="text in the abnormal films' names (repeatable)")
    args = parser.parse_args(argv)
    columns = [subtype_aurocs(path, args.kind) for path in args.scores]
    print("| abnormal films | " + " | ".join(str(p) for p in args.scores) + " |")
    print("|---|" + "---|" * len(columns))
    for name in columns[0]:
        print(f"| {name} | " + " | ".join(column[name] for column in columns) + " |")


if __name__ == "__main__":
    main()
