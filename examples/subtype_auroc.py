"""AUROC of each kind of abnormal film against all the normals, from evaluations' scores.

The chest X-ray data names each pneumonia film ``..._bacteria_...`` or ``..._virus_...``;
a score that finds consolidation (bacterial, lobar) may miss the diffuse pattern of a
viral pneumonia. Reads the ``scores.csv`` that ``anomaly evaluate`` writes (columns
path, label, score), one column per file, one row per name pattern (searched in the
file name) and one for every abnormal film.

    python examples/subtype_auroc.py runs/s0/density/scores.csv \
        runs/s0/lung-brightness/scores.csv --kind bacteria --kind virus
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomaly.evaluate import auroc  # noqa: E402


def subtype_aurocs(scores_csv: Path, kinds: list[str]) -> dict[str, tuple[int, float]]:
    """(count, AUROC against every normal) of the abnormal films whose name holds each
    kind, and of them all (``all abnormal``)."""
    with open(scores_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"path", "label", "score"} <= set(rows[0]):
        raise SystemExit(f"error: {scores_csv}: not an evaluation's scores.csv "
                         "(columns path, label, score)")
    normals = [float(r["score"]) for r in rows if r["label"] == "0"]
    figures = {}
    for kind in [*kinds, None]:
        abnormal = [float(r["score"]) for r in rows if r["label"] == "1"
                    and (kind is None or kind in Path(r["path"]).name)]
        if not normals or not abnormal:
            raise SystemExit(f"error: {scores_csv}: no normal films or none named {kind!r}")
        labels = [0] * len(normals) + [1] * len(abnormal)
        figures[kind or "all abnormal"] = (len(abnormal), auroc(labels, normals + abnormal))
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
    for name, (count, _) in columns[0].items():
        cells = " | ".join(f"{column[name][1]:.3f}" for column in columns)
        print(f"| {name} ({count}) | {cells} |")


if __name__ == "__main__":
    main()
