"""AUROC of the opacity critic's density when its last block is pooled other ways.

The run's density pools the last block's features by a 2x2 max-pool then a mean over the
whole film (with two views, the film's cells and its mirror's mirrored back, summed). Each
variant pools the same max-pooled cells otherwise, embeds the result as
the run's density does (``l2`` or ``sqrt``), refits a Gaussian on the run's training
normals and scores each labelled folder, every film and each kind of pneumonia:

- ``mean`` (the run's own ``density``, reproduced);
- ``lung-prior mean``: the cells weighted by the run's lung prior (where lungs lie in
  the training normals), so the neck, shoulders and abdomen weigh little;
- ``lung-field mean``: weighted evenly inside the lung field the map is kept to;
- ``mean and spread``: the mean's embedding beside that of each channel's spread over
  the cells (a texture statistic), the two L2-normalised together;
- ``GeM (p=3)``: the generalised mean, between the mean and the maximum.

No label chooses anything.

    python examples/critic_pooling_probe.py --model RUN \\
        --data ../shared/data/chest_xray/test_dev --data ../shared/data/chest_xray/val
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from probe_common import (
    add_kind_option,
    chosen_kinds,
    critic_and_its_training_normals,
    film_cells,
    labelled_folders,
    print_subgroup_header,
    print_subgroup_row,
    probe_arguments,
    run_embedding,
    run_views,
)

from anomaly.checkpoint import load_checkpoint
from anomaly.data import uint8_to_model
from anomaly.density import fit_density, mahalanobis
from anomaly.families.critic.network import OpacityCritic
from anomaly.families.critic.scorer import embed_pooled
from anomaly.lungs import checkpoint_lung_prior, lung_field

GEM_POWER = 3.0


def cell_weights(weights: torch.Tensor, cells: int) -> torch.Tensor:
    """A (S, S) weighting averaged down to (cells, cells), summing to 1."""
    pooled = F.adaptive_avg_pool2d(weights.float().reshape(1, 1, *weights.shape[-2:]), cells)
    return (pooled / pooled.sum())[0, 0]


def poolings(cells: torch.Tensor, prior: torch.Tensor, field: torch.Tensor,
             embedding: str) -> dict[str, torch.Tensor]:
    """Each variant's embedding (B, C or 2C) of max-pooled cells (B, C, H, W)."""
    by_prior, by_field = (cell_weights(w, cells.shape[-1]) for w in (prior, field))
    mean = cells.mean(dim=(2, 3))
    spread = cells.std(dim=(2, 3))
    gem = cells.clamp(min=1e-6).pow(GEM_POWER).mean(dim=(2, 3)).pow(1 / GEM_POWER)
    return {
        "mean": embed_pooled(mean, embedding),
        "lung-prior mean": embed_pooled((cells * by_prior).sum(dim=(2, 3)), embedding),
        "lung-field mean": embed_pooled((cells * by_field).sum(dim=(2, 3)), embedding),
        "mean and spread": F.normalize(torch.cat(
            [embed_pooled(mean, embedding), embed_pooled(spread, embedding)], dim=1), dim=1),
        f"GeM (p={GEM_POWER:g})": embed_pooled(gem, embedding),
    }


@torch.no_grad()
def pooled_variants(critic: OpacityCritic, images: torch.Tensor, prior: torch.Tensor,
                    field: torch.Tensor, embedding: str, views: int = 1, batch_size: int = 64
                    ) -> dict[str, torch.Tensor]:
    """:func:`poolings` of images (N, 1, S, S), in pieces of ``batch_size``."""
    pieces: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        cells = film_cells(critic, images[start: start + batch_size], views)
        for name, value in poolings(cells, prior, field, embedding).items():
            pieces.setdefault(name, []).append(value)
    return {name: torch.cat(parts) for name, parts in pieces.items()}


def main(argv=None) -> None:
    args = probe_arguments(__doc__, argv, extra=add_kind_option)
    kinds = chosen_kinds(args)
    state = load_checkpoint(args.model)
    critic, config, train = critic_and_its_training_normals(state)
    embedding, views = run_embedding(state), run_views(state)
    prior = checkpoint_lung_prior(state, config.image_size)
    field = lung_field(prior)
    train_variants = pooled_variants(critic, uint8_to_model(train), prior, field, embedding,
                                     views)
    fitted = {name: fit_density(value.numpy()) for name, value in train_variants.items()}
    folders = labelled_folders(args.data, config, kinds)
    scores = {name: {} for name in fitted}
    for folder, (_, _, images) in folders.items():
        variants = pooled_variants(critic, images, prior, field, embedding, views)
        for name, value in variants.items():
            scores[name][folder] = mahalanobis(value, fitted[name]).numpy()
    print(f"{len(train)} training normals embedded ({embedding}, {views} view(s))")
    print_subgroup_header("pooling", folders, kinds)
    for name, by_folder in scores.items():
        print_subgroup_row(name, folders, by_folder, kinds)


if __name__ == "__main__":
    main()
