"""AUROC of the opacity critic's density from each epoch's weights, their average and ensemble.

A run's critic stage saved once per epoch, each copy kept (``examples/keep_checkpoints.sh``
copies the run's checkpoint whenever it changes). For each epoch from ``--from`` on, the
critic of that epoch; then, for each ``--average N``, the weights of the last N epochs
averaged (stochastic weight averaging; the BatchNorm statistics recomputed on training
batches made as in training), and the ensemble of those epochs' densities (each
standardised on the held-out normals, summed). Each density is fitted on the run's
training normals as training does, embedded as the run's density is; each folder is
scored with the film alone, overall and for the anomalous files whose names hold each
``--kind`` against every normal. No label chooses anything.

    python examples/critic_average_probe.py --model RUN --snapshots DIR --average 5 10 15 \
        --data ../shared/data/chest_xray/test_dev --data ../shared/data/chest_xray/val
"""

# ruff: noqa: E402
from __future__ import annotations

import copy
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from critic_batchnorm_probe import recompute_batchnorm, run_synthesis, standardised_densities
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


def snapshots_by_epoch(folder: Path) -> dict[int, dict]:
    """The critic weights of each kept checkpoint in ``folder``, by their epoch (the
    last copy of an epoch wins)."""
    weights = {}
    for path in sorted(folder.glob("*.pt")):
        part = load_checkpoint(path).get("critic", {})
        if "network" in part:
            weights[int(part["epoch"])] = part["network"]
    if not weights:
        raise SystemExit(f"{folder}: no checkpoint with a critic in it")
    return weights


def averaged(weights: list[dict]) -> dict:
    """The mean of state dicts' floating tensors (others, such as BatchNorm's batch count,
    from the last)."""
    return {key: torch.stack([w[key].float() for w in weights]).mean(0).to(value.dtype)
            if value.is_floating_point() else value
            for key, value in weights[-1].items()}


def main(argv=None) -> None:
    def options(parser) -> None:
        parser.add_argument("--snapshots", type=Path, required=True,
                            help="folder of the run's checkpoints, one or more per epoch")
        parser.add_argument("--from", dest="first", type=int, default=15,
                            help="first epoch given its own row")
        parser.add_argument("--average", type=int, nargs="+", default=[5, 10, 15],
                            metavar="N", help="average the last N epochs (one row each)")
        add_kind_option(parser)

    args = probe_arguments(__doc__, argv, options)
    kinds = chosen_kinds(args)
    state = load_checkpoint(args.model)
    critic, preprocess_config, train = critic_and_its_training_normals(state)
    embedding = run_embedding(state)
    config, prior = run_synthesis(state, train, preprocess_config.image_size)
    held_out = held_out_normals(state, preprocess_config)
    snapshots = snapshots_by_epoch(args.snapshots)
    last = max(snapshots)
    if any(n < 1 or any(e not in snapshots for e in range(last - n + 1, last + 1))
           for n in args.average):
        raise SystemExit(f"--average: each N must be 1 or more, with every epoch of the last "
                         f"N kept (kept: {sorted(snapshots)})")
    if args.first > last:
        raise SystemExit(f"--from {args.first}: the last epoch kept is {last}")
    folders = labelled_folders(args.data, preprocess_config, kinds)

    def network_of(weights: dict):
        network = copy.deepcopy(critic)
        network.load_state_dict(weights)
        return network.eval()

    print_subgroup_header(f"critic ({len(snapshots)} epochs kept)", folders, kinds)
    per_epoch = {}
    for epoch in sorted(e for e in snapshots if e >= min(args.first, last - max(args.average) + 1)):
        per_epoch[epoch] = standardised_densities(network_of(snapshots[epoch]), train, held_out,
                                                  folders, embedding)
        if epoch >= args.first:
            print_subgroup_row(f"epoch {epoch}", folders, per_epoch[epoch], kinds)
    for n in args.average:
        epochs = range(last - n + 1, last + 1)
        network = network_of(averaged([snapshots[e] for e in epochs]))
        recompute_batchnorm(network, train, "as trained", config, prior)
        print_subgroup_row(f"weights of epochs {epochs[0]}-{last} averaged", folders,
                           standardised_densities(network, train, held_out, folders, embedding),
                           kinds)
        print_subgroup_row(f"densities of epochs {epochs[0]}-{last} summed", folders,
                           {name: sum(per_epoch[e][name] for e in epochs) for name in folders},
                           kinds)


if __name__ == "__main__":
    main()
