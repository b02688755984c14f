"""Scoring speed: a public-style AnoGAN loop against the toolkit's batched Scorer modes.

Scores the same preprocessed images with
  (a) reference: one image at a time, 500 Adam steps on z, D features of x recomputed
      every step (the way public AnoGAN implementations do it), timed on a few images;
  (b) Scorer mode ``search`` (batched, features of x computed once);
  (c) Scorer mode ``encoder`` and (d) ``encoder-search`` when the checkpoint has an encoder;
  (e) Scorer mode ``discriminator`` (the density score) when it has a fitted density.
Prints seconds/image, images/second and speed-up against (a), FLOPs per image for one
G, D.features and E forward pass, the measured matmul rate and the fraction of it each
mode achieves. Preprocessing (file reading, CLAHE) is done once beforehand and not timed.

    python bench/bench_score.py --model runs/cxr --data ../shared/data/chest_xray/test_dev
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from anomaly.checkpoint import load_checkpoint
from anomaly.data import find_images, load_images, uint8_to_model
from anomaly.device import resolve_device
from anomaly.families.dcgan import DEFAULT_ITERATIONS, available_modes
from anomaly.score import Scorer
from bench.common import (
    machine_info,
    markdown_table,
    matmul_gflops,
    median_time,
    print_machine,
    synchronize,
)

BACKWARD_FACTOR = 3  # forward + backward of one search step ~ 3 forward passes (approximate)


def reference_score(scorer: Scorer, image: torch.Tensor, iterations: int) -> float:
    """Score one image (1, 1, S, S) the way public AnoGAN code does: batch of 1, D features
    of x recomputed at every step, loss (1-lam)*mean|x-G(z)| + lam*mean|f(x)-f(G(z))|.

    Starts from the same seeded z, learning rate and Adam betas as the Scorer, so its
    result should match mode ``search`` on CPU (float32)."""
    family = scorer.family
    generator, discriminator, lam = family.generator, family.discriminator, family.lam
    image = image.to(scorer.device)
    z = torch.randn(1, family.latent_dim, generator=torch.Generator().manual_seed(family.seed))
    z = z.to(scorer.device).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=family.lr, betas=(0.9, 0.999))
    for _ in range(iterations):
        optimizer.zero_grad()
        fake = generator(z)
        residual = torch.mean(torch.abs(image - fake))
        discrimination = torch.mean(torch.abs(discriminator.features(image)
                                              - discriminator.features(fake)))
        loss = (1 - lam) * residual + lam * discrimination
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        fake = generator(z)
        residual = torch.mean(torch.abs(image - fake))
        discrimination = torch.mean(torch.abs(discriminator.features(image)
                                              - discriminator.features(fake)))
        return float((1 - lam) * residual + lam * discrimination)


def forward_flops(module_fn, example: torch.Tensor) -> int:
    """FLOPs of one forward pass, counted by torch's FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module_fn(example)
    return counter.get_total_flops()


def mode_flops(mode: str, iterations: int, g: int, f: int, e: int) -> int:
    """Approximate FLOPs to score one image: forward passes, search steps counted x3."""
    step = BACKWARD_FACTOR * (g + f)
    final = g + f  # G(z) and features of G(z) for the reported score
    if mode == "reference":
        return iterations * (step + f) + final + f  # f(x) recomputed every step
    if mode == "search":
        return f + iterations * step + final
    if mode == "discriminator":
        return 2 * f  # the image and its mirror image
    return f + e + iterations * step + final  # encoder, encoder-search


def score_all(scorer: Scorer, images: torch.Tensor) -> np.ndarray:
    """Score images in the Scorer's batches, as score_paths does."""
    scores = [scorer.score_tensor(images[i : i + scorer.batch_size]).score
              for i in range(0, len(images), scorer.batch_size)]
    return np.concatenate(scores)


def load_inputs(data: str, count: int, scorer: Scorer) -> tuple[torch.Tensor, int]:
    """``count`` preprocessed images (cycling through the folder if it has fewer)."""
    paths = find_images(data)
    distinct = min(count, len(paths))
    loaded = load_images(paths[:distinct], scorer.preprocess_config)
    images = uint8_to_model(loaded.images)
    if len(images) == 0:
        raise SystemExit(f"{data}: no readable images")
    index = torch.arange(count) % len(images)
    return images[index], len(images)


def profile(scorer: Scorer, images: torch.Tensor, rows: int) -> None:
    """Print torch.profiler's top operators for one batch."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    sort = "self_cpu_time_total"
    if scorer.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        sort = "self_cuda_time_total"
    batch = images[: scorer.batch_size]
    scorer.score_tensor(batch)  # warm-up
    with torch_profile(activities=activities) as prof:
        scorer.score_tensor(batch)
        synchronize(scorer.device)
    print(f"\n### Profile: mode {scorer.mode}, {scorer.iterations} iterations, "
          f"batch of {len(batch)}\n")
    print(prof.key_averages().table(sort_by=sort, row_limit=rows))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="run directory or checkpoint .pt")
    parser.add_argument("--data", required=True, help="folder of images (found recursively)")
    parser.add_argument("--images", type=int, default=64, help="images scored by each Scorer mode")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; medians are reported")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--iterations", type=int, default=500,
                        help="search steps for the reference and mode search")
    parser.add_argument("--encoder-search-iterations", type=int,
                        default=DEFAULT_ITERATIONS["encoder-search"])
    parser.add_argument("--reference-images", type=int, default=2,
                        help="images scored by the slow reference loop")
    parser.add_argument("--batch-size", type=int, default=64, help="Scorer batch size")
    parser.add_argument("--no-amp", action="store_true",
                        help="float32 on CUDA too (the Scorer uses float16 autocast by default)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--matmul-size", type=int,
                        help="side of the square matmul timed for the peak rate "
                             "(default 2048 on CPU, 8192 on CUDA)")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top ops for modes encoder and search")
    parser.add_argument("--profile-iterations", type=int, default=20,
                        help="search steps in the profiled search batch")
    parser.add_argument("--json", help="write the figures to this JSON file")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    state = load_checkpoint(args.model)
    modes = available_modes(state)  # the DCGAN's (the critic: bench_critic.py)
    if "search" not in modes:
        raise SystemExit(f"{args.model}: no trained DCGAN generator to time the search with")
    options = dict(device=str(device), batch_size=args.batch_size, amp=not args.no_amp)
    iterations = {"discriminator": 0, "search": args.iterations, "encoder": 0,
                  "encoder-search": args.encoder_search_iterations}
    # every score kind of a mode computes the same components, so the kind does not change
    # the time; "anogan" is the one the reference computes, and it needs no calibration;
    # the discriminator mode has no reconstruction, so it is timed with its density
    scorers = {mode: Scorer.from_state(
                   state, mode=mode, score="density" if mode == "discriminator" else "anogan",
                   iterations=iterations[mode] if "search" in mode else None, **options)
               for mode in modes}
    search = scorers["search"]
    images, distinct = load_inputs(args.data, args.images, search)
    arch = search.family.generator.arch
    info = machine_info(device)
    print("# Scoring benchmark\n")
    print_machine(info)
    print(f"Model: {args.model} ({arch.image_size}x{arch.image_size}, latent {arch.latent_dim}, "
          f"widths G {arch.generator_width} / D {arch.discriminator_width}); modes: "
          f"{', '.join(modes)}; mixed precision: {search.family.use_amp}")
    print(f"Images: {len(images)} ({distinct} distinct files from {args.data}), preprocessed "
          f"once and not timed; reference on {args.reference_images}; medians of "
          f"{args.repeats} runs.\n")

    # FLOPs of single forward passes, and the machine's matmul rate
    z = torch.zeros(1, arch.latent_dim, device=device)
    x = images[:1].to(device)
    g = forward_flops(search.family.generator, z)
    f = forward_flops(search.family.discriminator.features, x)
    e = forward_flops(search.family.encoder, x) if search.family.encoder is not None else 0
    size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    peak = matmul_gflops(device, size)
    print("## Work per image\n")
    print(markdown_table(["forward pass", "MFLOP/image"],
                         [["G(z)", g / 1e6], ["D.features(x)", f / 1e6],
                          ["E(x)", e / 1e6 if e else None]]))
    print(f"\nMeasured float32 matmul rate ({size}x{size} torch.mm): {peak:.1f} GFLOP/s\n")

    rows, figures = [], []

    def record(name: str, mode_iterations: int, count: int, seconds: float, times: list[float],
               mean_score: float) -> None:
        per_image = seconds / count
        flops = mode_flops("reference" if name == "reference" else name, mode_iterations,
                           g, f, e)
        achieved = flops / per_image / 1e9
        figures.append({"method": name, "iterations": mode_iterations, "images": count,
                        "seconds_per_image": per_image, "images_per_second": 1 / per_image,
                        "gflop_per_image": flops / 1e9, "achieved_gflops": achieved,
                        "fraction_of_matmul_rate": achieved / peak, "mean_score": mean_score,
                        "run_seconds": times})
        rows.append([name, mode_iterations, count, per_image, 1 / per_image, None,
                     flops / 1e9, achieved, f"{100 * achieved / peak:.1f}%", mean_score])

    # (a) reference, one image at a time
    reference_count = max(1, min(args.reference_images, len(images)))
    reference_images = images[:reference_count]
    reference_scores: list[float] = []

    def run_reference() -> None:
        reference_scores[:] = [reference_score(search, reference_images[i : i + 1],
                                               args.iterations)
                               for i in range(reference_count)]

    reference_score(search, reference_images[:1], min(2, args.iterations))  # warm-up
    seconds, times = median_time(run_reference, device, args.repeats)
    record("reference", args.iterations, reference_count, seconds, times,
           float(np.mean(reference_scores)))

    # (b)-(d) the toolkit's Scorer, batched
    check = None
    for mode in ("discriminator", "search", "encoder", "encoder-search"):
        if mode not in scorers:
            continue
        scorer = scorers[mode]
        scorer.family.iterations, steps = min(2, iterations[mode]), iterations[mode]
        scorer.score_tensor(images[: args.batch_size])  # warm-up
        scorer.family.iterations = steps
        result: list[np.ndarray] = []
        seconds, times = median_time(lambda s=scorer, r=result: r.append(score_all(s, images)),
                                     device, args.repeats)
        record(mode, steps, len(images), seconds, times, float(result[-1].mean()))
        if mode == "search":
            check = float(np.abs(result[-1][:reference_count] - reference_scores).max())

    reference_per_image = figures[0]["seconds_per_image"]
    for row, figure in zip(rows, figures):
        figure["speedup_vs_reference"] = reference_per_image / figure["seconds_per_image"]
        row[5] = f"{figure['speedup_vs_reference']:.1f}x"
    print("## Results\n")
    print(markdown_table(
        ["method", "iterations", "images", "seconds/image", "images/second",
         "speed-up vs reference", "GFLOP/image", "achieved GFLOP/s", "of matmul rate",
         "mean score"], rows))
    print(f"\nGFLOP/image counts each search step as {BACKWARD_FACTOR}x the forward FLOPs of "
          "G + D.features (an approximation: with frozen weights the backward pass only needs "
          "input gradients, so the true figure is lower).")
    print(f"Reference vs mode search on the same {reference_count} image(s): max |score "
          f"difference| = {check:.2e} (same start z, lr and Adam settings).")

    if args.profile:
        for mode in ("encoder", "search"):
            if mode in scorers:
                scorer = scorers[mode]
                if mode == "search":
                    scorer.family.iterations = min(args.iterations, args.profile_iterations)
                profile(scorer, images, rows=15)
    if args.json:
        out = {"machine": info, "settings": vars(args), "forward_flops":
               {"generator": g, "discriminator_features": f, "encoder": e or None},
               "matmul_gflops": peak, "matmul_size": size, "results": figures,
               "reference_vs_search_max_abs_diff": check}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
