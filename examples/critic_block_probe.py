"""Density of the critic's features from several blocks: does an earlier block help?

For a run with a critic, fits one Gaussian (Ledoit-Wolf) per embedding on the run's own
training normals (its data folder minus the held-out films) and prints the AUROC of the
Mahalanobis distance per labelled folder. Embeddings: each block's features, max-pooled
as the network pools them, globally averaged, flip-averaged if the run's critic scores
two views, and embedded as the run's density is (``l2``: L2-normalised; ``sqrt``: their
square roots, L2-normalised); and concatenations of the embedded blocks, L2-normalised
again. ``block 4`` is the run's own ``density``.

    python examples/critic_block_probe.py --model RUN \\
        --data ../shared/data/chest_xray/val --data ../shared/data/chest_xray/test_dev
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
    load_labelled_images,
    print_auroc_table,
    probe_arguments,
    run_embedding,
    training_normals,
)

from anomaly.checkpoint import load_checkpoint
from anomaly.data import uint8_to_model
from anomaly.density import fit_density, mahalanobis
from anomaly.evaluate import auroc
from anomaly.families.critic.network import OpacityCritic
from anomaly.families.critic.scorer import embed_pooled
from anomaly.score import Scorer

COMBINATIONS = {"block 2": [1], "block 3": [2], "block 4": [3], "blocks 3+4": [2, 3],
                "blocks 2+3+4": [1, 2, 3]}


@torch.no_grad()
def block_embeddings(critic: OpacityCritic, images: torch.Tensor, views: int,
                     embedding: str = "l2", batch_size: int = 64) -> list[torch.Tensor]:
    """Per block (N, C_b): pooled (summed with the mirror image's for 2 views), then
    embedded (:func:`~anomaly.families.critic.scorer.embed_pooled`)."""
    per_block: list[list[torch.Tensor]] = [[] for _ in critic.blocks]
    for start in range(0, len(images), batch_size):
        batch = images[start: start + batch_size]
        sums = None
        for view in (batch, batch.flip(-1))[:views]:
            x, pooled = view, []
            for block in critic.blocks:
                x = critic.pool(block(x))
                pooled.append(x.mean(dim=(2, 3)))
            sums = pooled if sums is None else [a + b for a, b in zip(sums, pooled)]
        for index, value in enumerate(sums):
            per_block[index].append(embed_pooled(value, embedding))
    return [torch.cat(chunks) for chunks in per_block]


def combined(blocks: list[torch.Tensor], indices: list[int]) -> torch.Tensor:
    """Embedded blocks side by side, the whole L2-normalised again."""
    return F.normalize(torch.cat([blocks[i] for i in indices], dim=1), dim=1)


def main(argv=None) -> None:
    args = probe_arguments(__doc__, argv)
    state = load_checkpoint(args.model)
    embedding = run_embedding(state)
    scorer = Scorer.from_state(state, mode="critic", device="cpu")
    critic, views = scorer.family.critic.eval(), scorer.family.views
    train = uint8_to_model(training_normals(state, scorer.preprocess_config))
    train_blocks = block_embeddings(critic, train, views, embedding)
    densities = {name: fit_density(combined(train_blocks, idx).numpy())
                 for name, idx in COMBINATIONS.items()}
    columns = {}
    for folder_path in args.data:
        labels, images = load_labelled_images(folder_path, scorer.preprocess_config)
        blocks = block_embeddings(critic, images, views, embedding)
        columns[Path(folder_path).name] = {
            name: auroc(labels, mahalanobis(combined(blocks, idx), densities[name]).numpy())
            for name, idx in COMBINATIONS.items()}
    print(f"training normals: {len(train)}; embedding: {embedding}")
    print_auroc_table("embedding", columns)


if __name__ == "__main__":
    main()
