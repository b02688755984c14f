"""Which way opacities move the critic's ``quiet`` component, without any label.

The run's held-out normal films are scored as they are and again with synthetic lesions
pasted into their lungs: the training recipe's blobs and the two evaluation recipes that
no family trains on (``consolidation``, ``patches``; :mod:`anomaly.eval_lesions`), each
drawn from a fixed seed. For each recipe it prints the AUROC of the lesioned films against
their own clean ones for ``quiet`` (above 0.5: lesions quieten the critic's features, so
a higher ``quiet`` is the abnormal side) and, beside it, ``density``. No labelled film is
read.

    python examples/critic_quiet_probe.py --model RUN
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from probe_common import held_out_normals

from anomaly.checkpoint import load_checkpoint
from anomaly.eval_lesions import RECIPES, paste_lesions
from anomaly.evaluate import auroc
from anomaly.families.critic.synthesis import paste_opacities, soft_lung_prior
from anomaly.lungs import checkpoint_lung_prior
from anomaly.score import Scorer


def lesioned(recipe: str, films: torch.Tensor, prior: torch.Tensor, seed: int) -> torch.Tensor:
    """The films (N, 1, S, S) in [-1, 1] with one recipe's lesions, drawn from ``seed``."""
    if recipe == "blobs":
        generator = torch.Generator().manual_seed(seed)
        return paste_opacities(films, soft_lung_prior(prior), generator=generator)[0]
    return paste_lesions(recipe, films, prior, seed)[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run directory or checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="of the lesions (default 0)")
    args = parser.parse_args(argv)
    state = load_checkpoint(args.model)
    scorer = Scorer.from_state(state, mode="critic", device="cpu")
    prior = checkpoint_lung_prior(state, scorer.preprocess_config.image_size)
    films = held_out_normals(state, scorer.preprocess_config)
    clean = scorer.score_tensor(films)
    labels = np.r_[np.zeros(len(films)), np.ones(len(films))]
    print(f"{len(films)} held-out normal films, each also with lesions (seed {args.seed})")
    print("| lesions | quiet: AUROC lesioned vs clean | density: AUROC |")
    print("|---|---|---|")
    for recipe in ("blobs", *RECIPES):
        changed = scorer.score_tensor(lesioned(recipe, films, prior, args.seed))
        cells = [auroc(labels, np.r_[getattr(clean, name), getattr(changed, name)])
                 for name in ("quiet", "density")]
        print(f"| {recipe} | " + " | ".join(f"{value:.3f}" for value in cells) + " |")


if __name__ == "__main__":
    main()
