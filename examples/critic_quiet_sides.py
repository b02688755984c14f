"""The critic's ``quiet`` component taken without a direction: does it still help?

``density+quiet`` adds ``quiet`` (minus the log of the pooled features' norm) to the
density, each standardised on the run's held-out normals, with the sign that makes a
quieter film more abnormal, a sign first read off labelled films. Two scores that need no
sign are set beside it: ``density + abs(quiet)`` (the standardised quiet's distance from the
normals' mean, either way) and ``joint`` (the Mahalanobis distance over the embedding and
the standardised quiet together: sqrt(density^2 + quiet_z^2)). And the density summed with
lung brightness (the no-GAN baseline, whose sign is its definition: a brighter lung field
is more opaque), each standardised likewise. Each is scored by kind of pneumonia, beside
the density and lung brightness. No abnormal film fits anything.

    python examples/critic_quiet_sides.py --model RUN --data ../shared/data/chest_xray/test_dev
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from probe_common import (
    add_kind_option,
    chosen_kinds,
    labelled_folders,
    print_subgroup_header,
    print_subgroup_row,
    probe_arguments,
)

from anomaly.checkpoint import load_checkpoint
from anomaly.score import Scorer
from anomaly.standardise import standardised


def sided_scores(components: dict[str, np.ndarray], normal: dict[str, list[float]]
                 ) -> dict[str, np.ndarray]:
    """Each score of this probe from a batch's components and the held-out normals'."""
    density = np.asarray(components["density"], dtype=np.float64)
    density_z = standardised(density, normal["density"])
    quiet_z = standardised(components["quiet"], normal["quiet"])
    return {"density": density,
            "density+quiet (quieter = abnormal)": density_z + quiet_z,
            "density + abs(quiet) (either way)": density_z + np.abs(quiet_z),
            "joint: sqrt(density² + quiet_z²)": np.sqrt(density ** 2 + quiet_z ** 2),
            "density+brightness (brighter = abnormal)":
                density_z + standardised(components["brightness"], normal["brightness"]),
            "lung brightness": np.asarray(components["brightness"], dtype=np.float64)}


def main(argv=None) -> None:
    args = probe_arguments(__doc__, argv, extra=add_kind_option)
    kinds = chosen_kinds(args)
    state = load_checkpoint(args.model)
    scorer = Scorer.from_state(state, mode="critic", score="density+quiet", device="cpu")
    folders = labelled_folders(args.data, scorer.preprocess_config, kinds)
    scores: dict[str, dict[str, np.ndarray]] = {}
    for name, (_, _, films) in folders.items():
        pieces = [scorer.score_tensor(films[start: start + 64], heatmaps=False).components
                  for start in range(0, len(films), 64)]
        components = {c: np.concatenate([piece[c] for piece in pieces])
                      for c in ("density", "quiet", "brightness")}
        for score, values in sided_scores(components, scorer.normal_components).items():
            scores.setdefault(score, {})[name] = values
    print_subgroup_header("score", folders, kinds)
    for score, by_folder in scores.items():
        print_subgroup_row(score, folders, by_folder, kinds)


if __name__ == "__main__":
    main()
