"""AUROC of the opacity critic's components and of simple label-free combinations.

How the README's probe lines for the opacity critic are measured: one pass of the critic
(mode ``critic``) over each labelled folder; ``z(a)+z(b)`` sums two components, each
standardised by its mean and standard deviation on the run's held-out normal training
images (no label sets a weight).

    python examples/critic_probes.py --model RUN \
        --data ../shared/data/chest_xray/val --data ../shared/data/chest_xray/test_dev
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from probe_common import print_auroc_table, probe_arguments

from anomaly.checkpoint import load_checkpoint
from anomaly.data import scan_labelled_folder
from anomaly.evaluate import auroc
from anomaly.score import Scorer

PAIRS = [("logit", "brightness"), ("density", "brightness"), ("density", "logit")]


def main(argv=None) -> None:
    args = probe_arguments(__doc__, argv)
    state = load_checkpoint(args.model)
    scorer = Scorer.from_state(state, mode="critic", score="density", device="cpu")
    normals = scorer.score_paths([Path(p) for p in state["holdout_paths"]], progress=False)

    def standardised(result, name: str) -> np.ndarray:
        reference = np.asarray(getattr(normals, name))
        return (np.asarray(getattr(result, name)) - reference.mean()) / reference.std()

    columns = {}
    for folder_path in args.data:
        folder = scan_labelled_folder(folder_path)
        result = scorer.score_paths(folder.paths, progress=False)
        label_of = dict(zip(folder.paths, folder.binary_labels))
        labels = np.array([label_of[p] for p in result.paths])
        values = {name: np.asarray(getattr(result, name))
                  for name in ("density", "logit", "brightness")}
        for a, b in PAIRS:
            values[f"z({a})+z({b})"] = standardised(result, a) + standardised(result, b)
        columns[Path(folder_path).name] = {k: auroc(labels, v) for k, v in values.items()}
        density = np.asarray(result.density)
        print(f"{Path(folder_path).name}: density of normal films "
              f"{density[labels == 0].mean():.1f} ± {density[labels == 0].std():.1f}, of "
              f"anomalous films {density[labels == 1].mean():.1f} ± "
              f"{density[labels == 1].std():.1f}")
    print(f"held-out normal training films: density {np.mean(normals.density):.1f} ± "
          f"{np.std(normals.density):.1f}")
    print_auroc_table("component", columns)


if __name__ == "__main__":
    main()
