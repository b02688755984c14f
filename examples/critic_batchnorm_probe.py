"""AUROC of the opacity critic's density with its BatchNorm statistics recomputed.

Training leaves each BatchNorm layer with running statistics of the batches it was
trained on: films with their acquisition varied, half of them given opacities. The
density, though, is fitted on the clean training normals and scores clean films. Here the
statistics of its blocks are recomputed (a cumulative mean over the run's training
normals, batches of 64) on batches made as in training (``as trained``), on the films varied without
opacities (``varied``) or on the films as they are (``clean``); then the density is
refitted on the training normals, as training does, and each folder is scored with the
film alone: overall and for the anomalous files whose names hold each ``--kind``,
against every normal. Last, the run's own density and each recomputed one, each
standardised on the held-out normals, summed. No label chooses anything.

    python examples/critic_batchnorm_probe.py --model RUN \
        --data ../shared/data/chest_xray/test_dev --data ../shared/data/chest_xray/val
"""

# ruff: noqa: E402
from __future__ import annotations

import copy
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
    held_out_normals,
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
from anomaly.families.critic.synthesis import vary_as_configured
from anomaly.families.critic.train_map import opacity_batch, placement_prior
from anomaly.lungs import checkpoint_lung_prior
from anomaly.standardise import standardised

BATCHES = ("as trained", "varied", "clean")


@torch.no_grad()
def recompute_batchnorm(critic, films: torch.Tensor, batches: str, config: CriticConfig,
                        prior: torch.Tensor, blocks: list[int] | None = None,
                        batch_size: int = 64) -> None:
    """Recompute the running statistics of the BatchNorm layers of ``critic``'s
    ``blocks`` (numbered from 1; None: every block, not the map head's layers, which the
    density never runs) as a cumulative mean over the uint8 films (N, 1, S, S) in
    batches of ``batch_size`` (training's are ``config.batch_size``), made as in
    training (``as trained``: varied, half with opacities), varied without opacities
    (``varied``) or as they are (``clean``); the other layers keep theirs. Fixed seed;
    leaves ``critic`` in eval mode."""
    torch.manual_seed(0)
    critic.eval()
    chosen = critic.blocks.modules() if blocks is None else (
        module for index in blocks for module in critic.blocks[index - 1].modules())
    for module in chosen:
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
            module.train()
    order = torch.randperm(len(films))
    for start in range(0, len(films), batch_size):
        batch = films[order[start: start + batch_size]]
        if batches == "as trained":
            inputs = opacity_batch(batch, config, prior, config.synthesis).inputs
        elif batches == "varied":
            inputs = vary_as_configured(uint8_to_model(batch), config)
        else:
            inputs = uint8_to_model(batch)
        critic.feature_map(inputs)
    critic.eval()


def run_synthesis(state: dict, train: torch.Tensor, image_size: int
                  ) -> tuple[CriticConfig, torch.Tensor]:
    """A run's critic settings and the placement prior its opacities were pasted inside,
    from its checkpoint ``state`` and uint8 training normals: what
    :func:`recompute_batchnorm` needs to make batches as in training."""
    config = CriticConfig.from_saved(state["critic"].get("config", {}))
    return config, placement_prior(config, train, checkpoint_lung_prior(state, image_size))


def standardised_densities(critic, train: torch.Tensor, held_out: torch.Tensor,
                           folders: dict[str, tuple], embedding: str = "l2"
                           ) -> dict[str, np.ndarray]:
    """Each folder's density (fitted on the uint8 training normals, as training does, on
    ``embedding`` embeddings) standardised on the held-out normals' (in [-1, 1]), by
    folder name."""
    density = fit_density(embed(critic, uint8_to_model(train), embedding=embedding).numpy())
    normal = mahalanobis(embed(critic, held_out, embedding=embedding), density).numpy()
    return {name: standardised(mahalanobis(embed(critic, images, embedding=embedding),
                                           density).numpy(), normal)
            for name, (_, _, images) in folders.items()}


def main(argv=None) -> None:
    def options(parser) -> None:
        add_kind_option(parser)
        parser.add_argument("--blocks", nargs="+", default=[], metavar="DIGITS",
                            help="also recompute on clean films only these blocks' layers "
                                 "(e.g. 4 or 34; numbered from 1): one row each")

    args = probe_arguments(__doc__, argv, options)
    kinds = chosen_kinds(args)
    state = load_checkpoint(args.model)
    critic, preprocess_config, train = critic_and_its_training_normals(state)
    embedding = run_embedding(state)
    numbers = {str(n) for n in range(1, len(critic.blocks) + 1)}
    if any(not b or not set(b) <= numbers or len(set(b)) < len(b) for b in args.blocks):
        raise SystemExit(f"--blocks: each must be distinct block numbers 1-{len(critic.blocks)} "
                         f"run together (e.g. 4 or 34), not {args.blocks}")
    config, prior = run_synthesis(state, train, preprocess_config.image_size)
    folders = labelled_folders(args.data, preprocess_config, kinds)
    networks = {"the run's own statistics": critic}
    for batches in BATCHES:
        networks[f"recomputed on batches {batches}"] = copy.deepcopy(critic)
        recompute_batchnorm(networks[f"recomputed on batches {batches}"], train, batches,
                            config, prior)
    for blocks in args.blocks:
        title = f"recomputed on batches clean, block{'s' * (len(blocks) > 1)} {blocks} only"
        networks[title] = copy.deepcopy(critic)
        recompute_batchnorm(networks[title], train, "clean", config, prior,
                            [int(b) for b in blocks])
    held_out = held_out_normals(state, preprocess_config)
    print_subgroup_header("BatchNorm statistics", folders, kinds)
    standardised = {}  # by network: by folder: scores standardised on the held-out normals
    for title, network in networks.items():
        standardised[title] = standardised_densities(network, train, held_out, folders,
                                                     embedding)
        print_subgroup_row(title, folders, standardised[title], kinds)
    own = standardised["the run's own statistics"]
    for batches in BATCHES[1:]:
        other = standardised[f"recomputed on batches {batches}"]
        print_subgroup_row(
            f"the run's own and those recomputed on batches {batches}, densities summed",
            folders, {name: own[name] + other[name] for name in folders}, kinds)


if __name__ == "__main__":
    main()
