"""AUROC of the opacity critic's density fitted on its training films and varied copies.

The density is refitted (as training does) on the embeddings of the run's training
normals alone (``0 copies``: the run's own density) and together with ``--copies N``
copies of each film changed as in training (the run's mirror, gamma, zoom, tilt and
shift, :func:`~anomaly.families.critic.synthesis.vary_as_configured`, fixed seed): a
Gaussian that has seen more acquisitions. Each labelled folder is scored with the film
alone. No label chooses anything.

    python examples/critic_varied_density_probe.py --model RUN --copies 1 4 \
        --data ../shared/data/chest_xray/test_dev --data ../shared/data/chest_xray/val
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
from anomaly.families.critic.config import CriticConfig
from anomaly.families.critic.network import OpacityCritic
from anomaly.families.critic.scorer import critic_embedding
from anomaly.families.critic.synthesis import vary_as_configured


@torch.no_grad()
def embed(critic: OpacityCritic, images: torch.Tensor, config: CriticConfig | None = None,
          generator: torch.Generator | None = None, batch_size: int = 128,
          embedding: str = "l2") -> torch.Tensor:
    """Embeddings (N, C, ``embedding`` as the run's) of images (N, 1, S, S) in [-1, 1],
    each changed as in training first when ``config`` is given."""
    parts = []
    for start in range(0, len(images), batch_size):
        batch = images[start: start + batch_size]
        if config is not None:
            batch = vary_as_configured(batch, config, generator)
        parts.append(critic_embedding(critic, batch, 1, embedding))
    return torch.cat(parts)


def main(argv=None) -> None:
    def copies_option(parser) -> None:
        parser.add_argument("--copies", type=int, nargs="+", default=[], metavar="N",
                            help="varied copies of each training film (one row each)")

    args = probe_arguments(__doc__, argv, copies_option)
    if any(n < 1 for n in args.copies):
        raise SystemExit("--copies: each count must be at least 1")
    copies = [0, *args.copies]
    state = load_checkpoint(args.model)
    critic, preprocess_config, train = critic_and_its_training_normals(state)
    embedding = run_embedding(state)
    config = CriticConfig.from_saved(state["critic"].get("config", {}))
    train = uint8_to_model(train)
    generator = torch.Generator().manual_seed(0)
    embeddings = [embed(critic, train, embedding=embedding)]
    embeddings += [embed(critic, train, config, generator, embedding=embedding)
                   for _ in range(max(copies))]
    fitted = {n: fit_density(torch.cat(embeddings[: n + 1]).numpy()) for n in copies}
    columns = {}
    for folder_path in args.data:
        labels, images = load_labelled_images(folder_path, preprocess_config)
        tested = embed(critic, images, embedding=embedding)
        columns[Path(folder_path).name] = {
            f"{n} copies": auroc(labels, mahalanobis(tested, fitted[n]).numpy()) for n in copies}
    print(f"{len(train)} training normals embedded, {max(copies)} varied copies of each")
    print_auroc_table("density fitted on", columns)


if __name__ == "__main__":
    main()
