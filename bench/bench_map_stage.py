"""Training speed of the critic's map stage: one step of the head on the frozen critic.

Times the three parts of a step of ``train_map.train_map_head`` on real training films,
the run's own critic and head: making the batch (acquisition varied, opacities pasted,
targets), the frozen critic's block features, and the head's update (forward, loss,
backward, AdamW); the critic in PyTorch's default (NCHW) layout and in channels-last, the
layout the stage uses. Prints the machine, medians of ``--repeats`` steps and a Markdown
table; ``--json OUT`` keeps the figures.

Usage:
    PYTHONPATH=. python bench/bench_map_stage.py --model RUN --data DIR [--images 64]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from anomaly.checkpoint import load_checkpoint, load_weights  # noqa: E402
from anomaly.data import find_images, load_images  # noqa: E402
from anomaly.families.critic.config import CriticConfig  # noqa: E402
from anomaly.families.critic.network import CriticArchitecture, OpacityCritic  # noqa: E402
from anomaly.families.critic.train_map import map_loss, opacity_batch, placement_prior  # noqa: E402
from anomaly.preprocess import PreprocessConfig  # noqa: E402
from bench.common import machine_info, markdown_table, median_time, print_machine  # noqa: E402

LAYOUTS = {"NCHW (default)": torch.contiguous_format, "channels-last": torch.channels_last}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a critic run (directory or checkpoint)")
    parser.add_argument("--data", required=True, help="folder of training normals (recursive)")
    parser.add_argument("--images", type=int, default=64, help="films read (batches drawn from)")
    parser.add_argument("--repeats", type=int, default=10, help="steps timed per part")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--json", help="write the figures here")
    return parser.parse_args(argv)


def time_layout(part: dict, batch, layout: torch.memory_format, device: torch.device,
                repeats: int) -> tuple[float, float]:
    """Median seconds of the frozen critic's block features and of the head's update on
    ``batch``, the critic's weights in ``layout``."""
    critic = OpacityCritic(CriticArchitecture(**part["architecture"]))
    load_weights(critic, part["network"], "critic")
    critic = critic.to(memory_format=layout).eval().requires_grad_(False)
    head = critic.map_head.requires_grad_(True)
    optimizer = torch.optim.AdamW(head.parameters(), 1e-4)
    inputs = batch.inputs.contiguous(memory_format=layout)

    def features() -> list[torch.Tensor]:
        with torch.no_grad():
            return critic.block_features(inputs)

    block_features = features()

    def update() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = head(block_features, critic.arch.image_size)
        map_loss(logits.float(), batch.targets).backward()
        optimizer.step()

    update()  # warm-up
    forward, _ = median_time(features, device, repeats)
    head_step, _ = median_time(update, device, repeats)
    return forward, head_step


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    state = load_checkpoint(args.model)
    part = state.get("critic", {})
    if not part.get("architecture", {}).get("map_width"):
        raise SystemExit(f"{args.model}: this run has no critic map head")
    config = CriticConfig.from_saved(part.get("config", {}))
    paths = find_images(args.data)[: args.images]
    films = load_images(paths, PreprocessConfig(**state["preprocess"]), progress=False).images
    prior = placement_prior(config, films, torch.as_tensor(state["lung_prior"]))
    batch_size = min(config.batch_size, len(films))
    batch = opacity_batch(films[:batch_size], config, prior, config.synthesis)

    make, _ = median_time(lambda: opacity_batch(films[:batch_size], config, prior,
                                                config.synthesis), device, args.repeats)
    rows, figures = [], {"machine": machine_info(device), "batch_size": batch_size}
    for name, layout in LAYOUTS.items():
        forward, head_step = time_layout(part, batch, layout, device, args.repeats)
        step = make + forward + head_step
        rows.append([name, make, forward, head_step, step])
        figures[name] = {"batch_s": make, "critic_forward_s": forward,
                         "head_update_s": head_step, "step_s": step}

    print_machine(figures["machine"])
    print(f"critic map stage, {batch_size} films per step, medians of {args.repeats}\n")
    print(markdown_table(["frozen critic's layout", "batch (s)", "critic features (s)",
                          "head update (s)", "step (s)"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
