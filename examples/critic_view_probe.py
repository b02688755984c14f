"""AUROC of the opacity critic's density under other test-time views and densities.

Each variant embeds the run's training normals the same way, refits its density on them
(as training does) and scores each labelled folder: ``one view`` (the film alone: the
default, ``critic_score_views: 1``), ``mirror`` (film and mirror image averaged:
``critic_score_views: 2``),
``one view, density of films and mirrors`` (one pass per film, the Gaussian fitted on
the training films and their mirror images as separate samples), ``mirror, kNN`` (mean
cosine distance to the 10 nearest training embeddings instead of the Gaussian) and, with
``--gamma``, ``mirror x gamma`` (also gamma 0.8 and 1.25, the training range's ends: six
passes). No label chooses anything.

    python examples/critic_view_probe.py --model RUN [--gamma] \
        --data ../shared/data/chest_xray/val --data ../shared/data/chest_xray/test_dev
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from probe_common import (
    critic_and_its_training_normals,
    load_labelled_images,
    print_auroc_table,
    probe_arguments,
    run_embedding,
)

from anomaly.checkpoint import load_checkpoint
from anomaly.data import uint8_to_model
from anomaly.density import fit_density, mahalanobis
from anomaly.evaluate import auroc
from anomaly.families.critic.network import OpacityCritic
from anomaly.families.critic.scorer import embed_pooled

GAMMAS = (1.0, 0.8, 1.25)


@torch.no_grad()
def pooled_views(critic: OpacityCritic, images: torch.Tensor, gammas: tuple[float, ...],
                 batch_size: int = 128) -> dict[tuple[float, bool], torch.Tensor]:
    """Pooled features (N, C) of images (N, 1, S, S) under each (gamma, mirrored) view."""
    views: dict[tuple[float, bool], list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        batch = images[start: start + batch_size]
        for gamma in gammas:
            varied = ((batch + 1) / 2).clamp(0, 1).pow(gamma) * 2 - 1
            for mirrored in (False, True):
                view = varied.flip(-1) if mirrored else varied
                views.setdefault((gamma, mirrored), []).append(
                    critic.pooled(critic.feature_map(view)).float())
    return {key: torch.cat(parts) for key, parts in views.items()}


def embeddings(views: dict, keys: list[tuple[float, bool]], embedding: str = "l2"
               ) -> torch.Tensor:
    """The sum of the chosen views' pooled features, embedded as the run's density is
    (:func:`~anomaly.families.critic.scorer.embed_pooled`)."""
    return embed_pooled(sum(views[key] for key in keys), embedding)


VARIANTS = {
    "one view": [(1.0, False)],
    "mirror": [(1.0, False), (1.0, True)],
    "mirror x gamma": [(g, m) for g in GAMMAS for m in (False, True)],
}


def knn_distance(train: torch.Tensor, test: torch.Tensor, k: int = 10) -> np.ndarray:
    """Mean cosine distance of each test embedding to its k nearest training embeddings."""
    similarity = test @ train.T
    return (1 - similarity.topk(k, dim=1).values).mean(1).numpy()


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    with_gamma = "--gamma" in argv
    args = probe_arguments(__doc__, [a for a in argv if a != "--gamma"])
    gammas = GAMMAS if with_gamma else GAMMAS[:1]
    variants = {k: v for k, v in VARIANTS.items() if with_gamma or k != "mirror x gamma"}
    state = load_checkpoint(args.model)
    critic, config, train = critic_and_its_training_normals(state)
    train, embedding = uint8_to_model(train), run_embedding(state)

    def embedded(views: dict, keys: list[tuple[float, bool]]) -> torch.Tensor:
        return embeddings(views, keys, embedding)

    train_views = pooled_views(critic, train, gammas)
    fitted = {name: fit_density(embedded(train_views, keys).numpy())
              for name, keys in variants.items()}
    both_orientations = torch.cat([embedded(train_views, [(1.0, False)]),
                                   embedded(train_views, [(1.0, True)])])
    fitted_both = fit_density(both_orientations.numpy())
    columns = {}
    for folder_path in args.data:
        labels, images = load_labelled_images(folder_path, config)
        views = pooled_views(critic, images, gammas)
        column = {name: auroc(labels, mahalanobis(embedded(views, keys), fitted[name]).numpy())
                  for name, keys in variants.items()}
        column["one view, density of films and mirrors"] = auroc(labels, mahalanobis(
            embedded(views, [(1.0, False)]), fitted_both).numpy())
        keys = VARIANTS["mirror"]
        column["mirror, kNN (k=10)"] = auroc(labels, knn_distance(
            embedded(train_views, keys), embedded(views, keys)))
        columns[Path(folder_path).name] = column
    print(f"{len(train)} training normals embedded ({embedding})")
    print_auroc_table("view / density", columns)


if __name__ == "__main__":
    main()
