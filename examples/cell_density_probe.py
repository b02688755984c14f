"""Probe: a Gaussian per feature cell inside the lung field (PaDiM's idea) on a critic.

The default ``density`` pools the discriminator's 4x4 feature map into one vector, so
everything on the film counts, borders, text and devices included. Here each cell of the
map gets its own Gaussian (Ledoit-Wolf) of its L2-normalised feature vector over the
training normals (image and mirror image, the mirror's map flipped back), and an image
scores the mean Mahalanobis distance over the cells that lie mostly inside the lung
prior. Prints the AUROC per labelled folder; nothing is stored.

    python examples/cell_density_probe.py --model RUN \
        --data ../shared/data/chest_xray/val --data ../shared/data/chest_xray/test_dev
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
import torch.nn.functional as F

from anomaly.checkpoint import load_checkpoint
from anomaly.data import find_images, load_images, scan_labelled_folder, uint8_to_model
from anomaly.density import fit_density, mahalanobis
from anomaly.evaluate import auroc
from anomaly.score import Scorer


def trunk_map(discriminator, x: torch.Tensor, map_size: int) -> torch.Tensor:
    """The discriminator's activations at the last layer whose map is map_size wide."""
    kept = None
    for layer in discriminator.trunk:
        x = layer(x)
        if isinstance(layer, torch.nn.LeakyReLU) and x.shape[-1] == map_size:
            kept = x
    if kept is None:
        raise SystemExit(f"the critic has no {map_size}x{map_size} feature map")
    return kept


@torch.no_grad()
def cell_vectors(discriminator, images: torch.Tensor, map_size: int = 4, batch: int = 64
                 ) -> torch.Tensor:
    """(N, cells, C) L2-normalised cell features, averaged with the mirror image's."""
    out = []
    for i in range(0, len(images), batch):
        x = uint8_to_model(images[i: i + batch])
        plain = trunk_map(discriminator, x, map_size)
        mirrored = trunk_map(discriminator, x.flip(-1), map_size).flip(-1)
        cells = F.normalize(plain, dim=1) + F.normalize(mirrored, dim=1)
        out.append(F.normalize(cells, dim=1).flatten(2).transpose(1, 2))  # (B, cells, C)
    return torch.cat(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run directory or checkpoint")
    parser.add_argument("--data", action="append", required=True, help="labelled folder")
    parser.add_argument("--train", help="the run's normal training folder (default: its own)")
    parser.add_argument("--lung-share", type=float, default=0.3,
                        help="keep cells whose area is at least this much lung prior")
    parser.add_argument("--map-size", type=int, default=4,
                        help="feature map to model: 4 (the last, default), 8 or 16")
    args = parser.parse_args(argv)
    state = load_checkpoint(args.model)
    scorer = Scorer.from_state(state, mode="discriminator", score="density", device="cpu")
    held = {str(p) for p in state.get("holdout_paths", [])}
    train_paths = [p for p in find_images(args.train or state["data_dir"]) if str(p) not in held]
    train = cell_vectors(scorer.family.discriminator,
                         load_images(train_paths, scorer.preprocess_config,
                                     progress=False).images, args.map_size)
    grid = int(round(train.shape[1] ** 0.5))
    share = F.adaptive_avg_pool2d(state["lung_prior"].float()[None, None], grid).flatten()
    cells = [i for i in range(train.shape[1]) if share[i] >= args.lung_share]
    densities = {i: fit_density(train[:, i].numpy()) for i in cells}
    print(f"{len(cells)} of {train.shape[1]} cells inside the lung prior")
    for folder_path in args.data:
        folder = scan_labelled_folder(folder_path)
        loaded = load_images(folder.paths, scorer.preprocess_config, progress=False)
        label_of = dict(zip(folder.paths, folder.binary_labels))
        labels = np.array([label_of[p] for p in loaded.paths])
        vectors = cell_vectors(scorer.family.discriminator, loaded.images, args.map_size)
        score = torch.stack([mahalanobis(vectors[:, i], densities[i]) for i in cells]).mean(0)
        print(f"{Path(folder_path).name}: cell density AUROC {auroc(labels, score.numpy()):.3f}")


if __name__ == "__main__":
    main()
