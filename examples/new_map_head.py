"""Copy a trained critic run, giving its critic a map head of another architecture.

How the results page's head-architecture rows are made: the critic, its density and the
weights of every map-head layer whose shape is unchanged are kept; the other layers start
fresh (seeded), and the head's own stage starts again at epoch 0, so resuming the copy
with ``critic: {map_levels: N, map_epochs: 20}`` trains it as a default run's stage would
(whose head, trained beside the critic, would have had every level from the start):

    python examples/new_map_head.py runs/c0s0/run runs/c4s0/run --map-levels 4
    printf "critic:\\n  map_levels: 4\\n  map_epochs: 20\\n" > more.yaml
    anomaly train-gan --data ../shared/data/chest_xray/train/NORMAL --out runs/c4s0/run \\
        --resume --config more.yaml
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from anomaly.checkpoint import load_checkpoint, resolve_checkpoint_path, save_checkpoint
from anomaly.families.critic.config import MAP_LEVELS
from anomaly.families.critic.network import CriticArchitecture, OpacityCritic

STAGE_KEYS = ("map_epoch", "map_optimizer", "map_schedule", "map_order_rng", "map_torch_rng",
              "map_normal_level")


def layer_of(name: str) -> str:
    """The layer a state-dict entry belongs to (``map_head.up_full.0.weight`` ->
    ``map_head.up_full``)."""
    parts = name.split(".")[:-1]
    while parts and parts[-1].isdigit():
        parts.pop()
    return ".".join(parts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a trained run folder with a critic")
    parser.add_argument("out", type=Path, help="the new run folder (must not exist)")
    parser.add_argument("--map-levels", type=int, choices=MAP_LEVELS, required=True)
    parser.add_argument("--seed", type=int, default=7, help="seed of the fresh layers")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out}: already exists")
    state = load_checkpoint(args.run)
    part = state.get("critic") or {}
    if not part.get("architecture", {}).get("map_width"):
        parser.error(f"{args.run}: holds no critic with a map head")
    shutil.copytree(args.run, args.out, ignore=shutil.ignore_patterns("events.out.*"))
    old_levels = part["architecture"].get("map_levels", 3)
    arch = {**part["architecture"], "map_levels": args.map_levels}
    torch.manual_seed(args.seed)
    fresh = OpacityCritic(CriticArchitecture(**arch)).state_dict()
    old = part["network"]
    kept = [name for name, value in fresh.items()
            if name in old and old[name].shape == value.shape]
    part = {key: value for key, value in part.items() if key not in STAGE_KEYS}
    part["network"] = {name: old[name] if name in kept else value
                       for name, value in fresh.items()}
    part["architecture"] = arch
    part["config"] = {**part.get("config", {}), "map_levels": args.map_levels}
    state["critic"] = part
    state["train_config"]["critic"]["map_levels"] = args.map_levels
    save_checkpoint(state, resolve_checkpoint_path(args.out))
    config_file = args.out / "config.yaml"
    if config_file.exists():
        text = config_file.read_text()
        config_file.write_text(text.replace(f"map_levels: {old_levels}",
                                            f"map_levels: {args.map_levels}"))
    fresh_names = sorted({layer_of(name) for name in fresh if name not in kept})
    print(f"{args.out}: map_levels {args.map_levels}; fresh layers: {', '.join(fresh_names)}")


if __name__ == "__main__":
    main()
