"""Probe: average the scores of several runs (seeds), each standardised label-free.

Each run's score (default ``density``, mode ``discriminator``) is standardised by the
mean and standard deviation of the same score on that run's held-out normal training
films (stored in its checkpoint), and the standardised scores are averaged per image.
Prints the AUROC of every run and of the average per labelled folder.

    python examples/seed_ensemble.py --model runs/final_s0/run --model runs/final_s1/run \
        --model runs/final_s2/run --data ../shared/data/chest_xray/val \
        --data ../shared/data/chest_xray/test_dev
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from anomaly.data import scan_labelled_folder
from anomaly.evaluate import auroc
from anomaly.evaluate_model import heldout_normal_scores
from anomaly.score import Scorer
from anomaly.standardise import standardised


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="run (repeatable)")
    parser.add_argument("--data", action="append", required=True, help="labelled folder")
    parser.add_argument("--score", default="density", help="score kind of every run")
    parser.add_argument("--mode", default="critic", help="scoring mode of every run")
    args = parser.parse_args(argv)
    scorers = [Scorer.from_checkpoint(m, mode=args.mode, score=args.score, device="cpu")
               for m in args.model]
    normals = [np.asarray(heldout_normal_scores(s, log=lambda *a: None)) for s in scorers]
    for folder_path in args.data:
        folder = scan_labelled_folder(folder_path)
        label_of = dict(zip(folder.paths, folder.binary_labels))
        by_run, labels = [], None
        for scorer, normal, model in zip(scorers, normals, args.model):
            result = scorer.score_paths(folder.paths, progress=False)
            labels = np.array([label_of[p] for p in result.paths])
            score = np.asarray(result.score)
            print(f"{Path(folder_path).name}: {model}: AUROC {auroc(labels, score):.3f}")
            by_run.append(standardised(score, normal))
        print(f"{Path(folder_path).name}: average of {len(scorers)} runs: AUROC "
              f"{auroc(labels, np.mean(by_run, axis=0)):.3f}")


if __name__ == "__main__":
    main()
