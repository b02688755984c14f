"""AUROC of a density per cell of the critic's map (PaDiM-style) beside the default's.

The critic's last map after its pool (8 x 8 cells of 256 features at 128 px; each film's
map averaged with its mirror image's map flipped back, so the cells stay where they
are) gets one Gaussian per cell (mean, Ledoit-Wolf covariance) fitted on the run's
training normals. A film's cell distances are pooled into one score: their mean, their
maximum, the mean over the cells the lung prior covers most, and the mean of the 8
largest. The default's global density is printed beside them. No label chooses anything.

    python examples/critic_cell_probe.py --model RUN \
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
import torch.nn.functional as F
from probe_common import (
    critic_and_its_training_normals,
    film_cells,
    load_labelled_images,
    print_auroc_table,
    probe_arguments,
    run_embedding,
    run_views,
)

from anomaly.checkpoint import load_checkpoint
from anomaly.data import uint8_to_model
from anomaly.density import fit_density, mahalanobis
from anomaly.evaluate import auroc
from anomaly.families.critic.network import OpacityCritic
from anomaly.families.critic.scorer import critic_embedding


@torch.no_grad()
def cell_features(critic: OpacityCritic, images: torch.Tensor, views: int,
                  embedding: str = "l2", batch_size: int = 128
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cells (N, h*w, C) of the pooled map, mirror-averaged in place; embeddings (N, C)
    with the run's ``views`` and ``embedding``)."""
    cells, embeddings = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start: start + batch_size]
        cells.append((film_cells(critic, batch, views=2) / 2).flatten(2).transpose(1, 2))
        embeddings.append(critic_embedding(critic, batch, views, embedding))
    return torch.cat(cells), torch.cat(embeddings)


def cell_distances(cells: torch.Tensor, densities: list[dict]) -> np.ndarray:
    """Mahalanobis distance (N, h*w) of each cell from its own Gaussian."""
    return torch.stack([mahalanobis(cells[:, i], d) for i, d in enumerate(densities)],
                       1).numpy()


def main(argv=None) -> None:
    args = probe_arguments(__doc__, argv)
    state = load_checkpoint(args.model)
    critic, config, train = critic_and_its_training_normals(state)
    train = uint8_to_model(train)
    views, embedding = run_views(state), run_embedding(state)
    train_cells, _ = cell_features(critic, train, views, embedding)
    densities = [fit_density(train_cells[:, i].numpy()) for i in range(train_cells.shape[1])]
    side = int(round(train_cells.shape[1] ** 0.5))
    lung = F.adaptive_avg_pool2d(torch.as_tensor(state["lung_prior"]).float()[None, None],
                                 side).flatten().numpy()
    lung_cells = lung >= min(0.5, lung.max())  # at least the best-covered cell
    columns = {}
    for folder_path in args.data:
        labels, images = load_labelled_images(folder_path, config)
        cells, embeddings = cell_features(critic, images, views, embedding)
        distances = cell_distances(cells, densities)
        column = {"global density (the default)": auroc(
            labels, mahalanobis(embeddings, state["critic"]["density"]).numpy())}
        column["cells: mean"] = auroc(labels, distances.mean(1))
        column["cells: max"] = auroc(labels, distances.max(1))
        column[f"cells: mean over the {lung_cells.sum()} lung cells"] = auroc(
            labels, distances[:, lung_cells].mean(1))
        column["cells: mean of the 8 largest"] = auroc(
            labels, np.sort(distances, 1)[:, -8:].mean(1))
        columns[Path(folder_path).name] = column
    print(f"{len(train)} training normals, {len(densities)} cells")
    print_auroc_table("density", columns)


if __name__ == "__main__":
    main()
