"""AUROC of the opacity critic's density fitted on its training films and varied copies.

The density is refitted (as training does) on the embeddings of the run's training
normals alone (``0 copies``: the run's own density) and together with ``--copies N``
copies of each film varied one of these ways (``--variation``, repeatable; fixed seed):

- ``training``: as the run's training varies films (its mirror, gamma, zoom, tilt, shift
  and sharpness, :func:`~anomaly.families.critic.synthesis.vary_as_configured`);
- ``contrast``: mirrored, gamma 0.6-1.6 and a blur or sharpening up to 0.5, framing kept;
- ``framing``: mirrored, the run's gamma, zoom 0.85-1.2, tilt up to 8 degrees and shift up
  to 6% of the side.

A Gaussian that has seen more acquisitions is wider along their changes, so its distance
weighs them less. Each labelled folder is scored with the film alone, every film and each
``--kind`` of anomalous film. No label chooses anything.

    python examples/critic_varied_density_probe.py --model RUN --copies 1 4 \
        --data ../shared/data/chest_xray/test_dev --data ../shared/data/chest_xray/val
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
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
from anomaly.families.critic.config import CriticConfig
from anomaly.families.critic.network import OpacityCritic
from anomaly.families.critic.scorer import critic_embedding
from anomaly.families.critic.synthesis import vary_acquisition, vary_as_configured

VARIATIONS = ("training", "contrast", "framing")


def vary(images: torch.Tensor, variation: str, config: CriticConfig,
         generator: torch.Generator) -> torch.Tensor:
    """Images (B, 1, S, S) in [-1, 1] varied one of :data:`VARIATIONS`' ways."""
    if variation == "training":
        return vary_as_configured(images, config, generator)
    if variation == "contrast":
        return vary_acquisition(images, (0.6, 1.6), generator=generator, sharpness=0.5)
    return vary_acquisition(images, tuple(config.gamma_range),
                            int(round(0.06 * images.shape[-1])), (0.85, 1.2), 8.0,
                            generator=generator)


@torch.no_grad()
def embed(critic: OpacityCritic, images: torch.Tensor, embedding: str,
          varied=None, batch_size: int = 128) -> torch.Tensor:
    """Embeddings (N, C, ``embedding`` as the run's) of images (N, 1, S, S) in [-1, 1],
    each passed through ``varied`` (images -> images) first when it is given."""
    parts = []
    for start in range(0, len(images), batch_size):
        batch = images[start: start + batch_size]
        if varied is not None:
            batch = varied(batch)
        parts.append(critic_embedding(critic, batch, 1, embedding))
    return torch.cat(parts)


def main(argv=None) -> None:
    def options(parser) -> None:
        add_kind_option(parser)
        parser.add_argument("--copies", type=int, nargs="+", default=[], metavar="N",
                            help="varied copies of each training film (one row each)")
        parser.add_argument("--variation", action="append", choices=VARIATIONS,
                            default=None, help="how the copies are varied (repeatable; "
                                               "default: training)")

    args = probe_arguments(__doc__, argv, options)
    if any(n < 1 for n in args.copies):
        raise SystemExit("--copies: each count must be at least 1")
    kinds, variations = chosen_kinds(args), args.variation or ["training"]
    state = load_checkpoint(args.model)
    critic, preprocess_config, train = critic_and_its_training_normals(state)
    embedding = run_embedding(state)
    config = CriticConfig.from_saved(state["critic"].get("config", {}))
    train = uint8_to_model(train)
    films = embed(critic, train, embedding)
    fitted = {"0 copies": fit_density(films.numpy())}
    for variation in variations:
        generator = torch.Generator().manual_seed(0)
        varied = partial(vary, variation=variation, config=config, generator=generator)
        copies = [embed(critic, train, embedding, varied)
                  for _ in range(max(args.copies, default=0))]
        for n in args.copies:
            fitted[f"{n} copies, {variation}"] = fit_density(
                torch.cat([films, *copies[:n]]).numpy())
    folders = labelled_folders(args.data, preprocess_config, kinds)
    scores = {name: {} for name in fitted}
    for folder, (_, _, images) in folders.items():
        tested = embed(critic, images, embedding)
        for name, density in fitted.items():
            scores[name][folder] = mahalanobis(tested, density).numpy()
    print(f"{len(train)} training normals embedded, {max(args.copies, default=0)} varied "
          f"copies of each")
    print_subgroup_header("density fitted on", folders, kinds)
    for name, by_folder in scores.items():
        print_subgroup_row(name, folders, by_folder, kinds)


if __name__ == "__main__":
    main()
