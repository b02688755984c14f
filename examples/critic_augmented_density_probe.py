"""AUROC of the opacity critic's density when it is fitted on varied copies of the
training normals as well as the films themselves.

The run's density is a Gaussian of the training normals' embeddings, each film seen
once. Films from another hospital differ in contrast, sharpness and framing; a Gaussian
that has also seen the training films varied that way is wider along those directions,
so the Mahalanobis distance weighs them less. Each variant refits the density on the
films plus ``--copies`` varied copies of each (the same network, embedding and views;
nothing retrained) and scores each labelled folder as the run does:

- ``the films alone`` (the run's own ``density``, reproduced);
- ``as training varies them``: the run's own training variation (mirror, gamma, zoom,
  tilt, shift, sharpness as its config sets them);
- ``wider contrast and sharpness``: gamma 0.6-1.6 and blur or sharpening up to 0.5,
  mirrored, no change of framing;
- ``wider framing``: zoom 0.85-1.2, tilt up to 8 degrees, shift up to 6% of the side,
  mirrored, the run's gamma.

No label chooses anything.

    python examples/critic_augmented_density_probe.py --model RUN \\
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
from anomaly.families.critic.config import CriticConfig
from anomaly.families.critic.scorer import embed_pooled
from anomaly.families.critic.synthesis import vary_acquisition, vary_as_configured


def add_options(parser) -> None:
    """This probe's options beside the common ones."""
    add_kind_option(parser)
    parser.add_argument("--copies", type=int, default=4,
                        help="varied copies of each training normal (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the variation")


@torch.no_grad()
def embed(critic, images: torch.Tensor, embedding: str, views: int,
          batch_size: int = 64) -> torch.Tensor:
    """The run's embedding (N, C) of images (N, 1, S, S) in [-1, 1]."""
    parts = [embed_pooled(film_cells(critic, images[i: i + batch_size], views)
                          .mean(dim=(2, 3)), embedding)
             for i in range(0, len(images), batch_size)]
    return torch.cat(parts)


def variations(config: CriticConfig):
    """Each variant's function (images, generator) -> varied images, or None (none)."""
    side_shift = 0.06
    return {
        "the films alone": None,
        "as training varies them": lambda x, g: vary_as_configured(x, config, g),
        "wider contrast and sharpness": lambda x, g: vary_acquisition(
            x, (0.6, 1.6), generator=g, sharpness=0.5),
        "wider framing": lambda x, g: vary_acquisition(
            x, tuple(config.gamma_range), int(round(side_shift * x.shape[-1])),
            (0.85, 1.2), 8.0, generator=g),
    }


def main(argv=None) -> None:
    args = probe_arguments(__doc__, argv, extra=add_options)
    kinds = chosen_kinds(args)
    state = load_checkpoint(args.model)
    critic, preprocess, train = critic_and_its_training_normals(state)
    critic_config = CriticConfig.from_saved(state["critic"]["config"])
    embedding, views = run_embedding(state), run_views(state)
    train = uint8_to_model(train)
    films = embed(critic, train, embedding, views)
    fitted = {}
    for name, vary in variations(critic_config).items():
        parts = [films]
        generator = torch.Generator().manual_seed(args.seed)
        for _ in range(args.copies if vary is not None else 0):
            parts.append(embed(critic, vary(train, generator), embedding, views))
        fitted[name] = fit_density(torch.cat(parts).numpy())
    folders = labelled_folders(args.data, preprocess, kinds)
    scores = {name: {} for name in fitted}
    for folder, (_, _, images) in folders.items():
        embedded = embed(critic, images, embedding, views)
        for name, density in fitted.items():
            scores[name][folder] = mahalanobis(embedded, density).numpy()
    print(f"{len(train)} training normals, {args.copies} varied copies each "
          f"({embedding}, {views} view(s))")
    print_subgroup_header("density fitted on", folders, kinds)
    for name, by_folder in scores.items():
        print_subgroup_row(name, folders, by_folder, kinds)


if __name__ == "__main__":
    main()
