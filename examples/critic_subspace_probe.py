"""Which directions of the critic's feature space the density should measure.

The critic's density is the Mahalanobis distance of a film's pooled, L2-normalised
block-4 features from a Gaussian of the training normals' (Ledoit-Wolf covariance). Here
the same distance is split along the principal axes of the training normals' features:
the distance within the leading axes that hold a share of their variance (the directions
normal films vary along), and within the remaining ones (the directions they barely vary
along, where a film from another hospital may also stray). Each is scored by kind of
pneumonia, beside the run's own density. No abnormal film fits or chooses anything.

    python examples/critic_subspace_probe.py --model RUN --data ../shared/data/chest_xray/test_dev
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from critic_varied_density_probe import embed
from probe_common import (
    add_kind_option,
    chosen_kinds,
    critic_and_its_training_normals,
    labelled_folders,
    print_subgroup_header,
    print_subgroup_row,
    probe_arguments,
    run_embedding,
)

from anomaly.checkpoint import load_checkpoint
from anomaly.data import uint8_to_model
from anomaly.density import fit_density, mahalanobis

SHARES = (0.5, 0.8, 0.9, 0.95, 0.99)  # of the training normals' variance


def principal_axes(train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training embeddings' (N, C) mean (C,), principal axes (C, C) as columns from
    the largest variance down, and each axis's share of the variance (C,)."""
    mean = train.mean(0)
    _, singular, axes = np.linalg.svd(train - mean, full_matrices=False)
    variance = singular ** 2
    return mean, axes.T, variance / variance.sum()


def split_distances(train: np.ndarray, films: np.ndarray, share: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Squared Mahalanobis distances (N,) of ``films`` within the leading principal axes
    of ``train`` that hold ``share`` of its variance, and within the rest (each with its
    own Ledoit-Wolf Gaussian of the training embeddings projected there)."""
    mean, axes, shares = principal_axes(train)
    kept = int(np.searchsorted(np.cumsum(shares), share) + 1)
    parts = []
    for block in (axes[:, :kept], axes[:, kept:]):
        density = fit_density((train - mean) @ block)
        projected = torch.from_numpy(((films - mean) @ block).astype(np.float32))
        parts.append(mahalanobis(projected, density).numpy() ** 2)
    return parts[0], parts[1]


def main(argv=None) -> None:
    args = probe_arguments(__doc__, argv, extra=add_kind_option)
    kinds = chosen_kinds(args)
    state = load_checkpoint(args.model)
    critic, preprocess_config, train = critic_and_its_training_normals(state)
    embedding = run_embedding(state)
    train_embeddings = embed(critic, uint8_to_model(train),
                             embedding=embedding).numpy().astype(np.float64)
    folders = labelled_folders(args.data, preprocess_config, kinds)
    films = {name: embed(critic, images, embedding=embedding).numpy().astype(np.float64)
             for name, (_, _, images) in folders.items()}
    _, _, shares = principal_axes(train_embeddings)
    print(f"{len(train_embeddings)} training normals, {train_embeddings.shape[1]} features; "
          "axes holding " + ", ".join(
              f"{share:.0%}: {int(np.searchsorted(np.cumsum(shares), share) + 1)}"
              for share in SHARES))
    print_subgroup_header("density within", folders, kinds)
    own = fit_density(train_embeddings)
    print_subgroup_row("every axis (the run's density, refitted)", folders, {
        name: mahalanobis(torch.from_numpy(e.astype(np.float32)), own).numpy()
        for name, e in films.items()}, kinds)
    for share in SHARES:
        split = {name: split_distances(train_embeddings, e, share) for name, e in films.items()}
        print_subgroup_row(f"the axes holding {share:.0%} of the variance", folders,
                           {name: parts[0] for name, parts in split.items()}, kinds)
        print_subgroup_row(f"the other axes (beyond {share:.0%})", folders,
                           {name: parts[1] for name, parts in split.items()}, kinds)


if __name__ == "__main__":
    main()
