"""Training throughput: a PyTorch-DCGAN-example data pipeline against the toolkit's.

Both paths run the same DCGAN (anomaly.families.dcgan.networks) with the same D and G updates; only the
way batches are produced differs:
  (a) reference: every image decoded from disk every epoch with PIL and the DCGAN
      example's transforms (Resize, CenterCrop, Grayscale, ToTensor, Normalize) through a
      DataLoader with worker processes, as torchvision.datasets.ImageFolder does;
  (b) toolkit: images read once with anomaly.data.load_images (CLAHE preprocessing) into
      an in-memory uint8 tensor, batches indexed from it (as anomaly.train.train_run does);
  (c) on CPUs with native bfloat16 (AVX512-BF16/AMX), (b) plus bfloat16 autocast, as
      train_run does with ``cpu_bf16: true``.
A fixed number of steps is timed after a warm-up; medians of the repeats are printed.

    python bench/bench_train.py --data ../shared/data/chest_xray/train/NORMAL
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from anomaly.config import load_config
from anomaly.data import find_images, load_images, uint8_to_model
from anomaly.device import autocast, cpu_bf16_supported, resolve_device
from anomaly.families.dcgan.networks import (
    Discriminator,
    GANArchitecture,
    Generator,
    init_dcgan_weights,
)
from anomaly.families.dcgan.train import gan_architecture  # noqa: E402
from anomaly.train import TrainConfig
from bench.common import machine_info, markdown_table, print_machine, synchronize


class FlatImageFolder(Dataset):
    """ImageFolder without class folders: decodes each file with PIL on every access."""

    def __init__(self, paths: list[Path], transform: Callable):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with open(self.paths[index], "rb") as handle:  # torchvision's pil_loader
            image = Image.open(handle).convert("RGB")
        return self.transform(image), 0


def dcgan_transform(image_size: int) -> Callable:
    """The PyTorch DCGAN example's transforms, with Grayscale for one channel."""
    return transforms.Compose([
        transforms.Resize(image_size),
        transforms.CenterCrop(image_size),
        transforms.Grayscale(1),
        transforms.ToTensor(),
        transforms.Normalize((0.5,), (0.5,)),
    ])


class GANStep:
    """One D update then one G update, as in the DCGAN example and anomaly.train."""

    def __init__(self, arch: GANArchitecture, device: torch.device, amp: bool, lr: float = 2e-4,
                 beta1: float = 0.5, label_smoothing: float = 0.0, seed: int = 0,
                 cpu_bf16: bool = False):
        torch.manual_seed(seed)
        self.arch, self.device = arch, device
        self.use_amp = (amp and device.type == "cuda") or (cpu_bf16 and device.type == "cpu")
        self.real_target = 1.0 - label_smoothing  # one-sided, as in anomaly.train
        self.generator = Generator(arch).to(device).apply(init_dcgan_weights).train()
        self.discriminator = Discriminator(arch).to(device).apply(init_dcgan_weights).train()
        self.optimizer_g = torch.optim.Adam(self.generator.parameters(), lr, (beta1, 0.999))
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr, (beta1, 0.999))
        scale = self.use_amp and device.type == "cuda"  # bfloat16 needs no loss scaling
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=scale)
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=scale)

    def __call__(self, real: torch.Tensor) -> tuple[float, float]:
        """Train on one batch (B, 1, S, S) in [-1, 1]; returns (loss D, loss G)."""
        device, use_amp = self.device, self.use_amp
        noise = torch.randn(real.shape[0], self.arch.latent_dim, device=device)
        # (1) Update D: maximise log D(x) + log(1 - D(G(z)))
        self.optimizer_d.zero_grad(set_to_none=True)
        with autocast(device, use_amp):
            fake = self.generator(noise)
            logits_real = self.discriminator(real).float()
            logits_fake = self.discriminator(fake.detach()).float()
            loss_d = (F.binary_cross_entropy_with_logits(
                logits_real, torch.full_like(logits_real, self.real_target))
                      + F.binary_cross_entropy_with_logits(logits_fake,
                                                           torch.zeros_like(logits_fake)))
        self.scaler_d.scale(loss_d).backward()
        self.scaler_d.step(self.optimizer_d)
        self.scaler_d.update()
        # (2) Update G: maximise log D(G(z))
        self.optimizer_g.zero_grad(set_to_none=True)
        with autocast(device, use_amp):
            logits_g = self.discriminator(fake).float()
            loss_g = F.binary_cross_entropy_with_logits(logits_g, torch.ones_like(logits_g))
        self.scaler_g.scale(loss_g).backward()
        self.scaler_g.step(self.optimizer_g)
        self.scaler_g.update()
        return loss_d.item(), loss_g.item()  # both training loops log these every step


def reference_batches(paths: list[Path], image_size: int, batch_size: int, workers: int,
                      device: torch.device) -> Iterator[torch.Tensor]:
    """Endless batches, decoding every file every epoch, as ``for data in dataloader``."""
    loader = DataLoader(FlatImageFolder(paths, dcgan_transform(image_size)),
                        batch_size=batch_size, shuffle=True, num_workers=workers,
                        drop_last=True, pin_memory=device.type == "cuda")
    while True:  # one pass of this loop is one epoch; the workers restart each epoch
        for images, _ in loader:
            yield images.to(device, non_blocking=True)


def toolkit_batches(images: torch.Tensor, batch_size: int, device: torch.device,
                    seed: int = 0) -> Iterator[torch.Tensor]:
    """Endless batches indexed from the in-memory uint8 tensor, as train_run does."""
    images = images.to(device)
    order_rng = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(images), generator=order_rng)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield uint8_to_model(images[order[start : start + batch_size].to(device)])


def time_steps(step: GANStep, batches: Iterator[torch.Tensor], warmup: int, steps: int,
               repeats: int, device: torch.device) -> list[float]:
    """Seconds for ``steps`` training steps, per repeat, after ``warmup`` steps."""
    for _ in range(warmup):
        step(next(batches))
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step(next(batches))
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of training images (recursive)")
    parser.add_argument("--config", help="training YAML: image size, widths, latent, batch size")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--latent-dim", type=int, default=100)
    parser.add_argument("--width", type=int, default=64, help="G and D width (ngf = ndf)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--max-images", type=int, help="use only the first N files")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--json", help="write the figures to this JSON file")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.config:
        config = load_config(TrainConfig, args.config)
    else:
        config = TrainConfig(image_size=args.image_size, batch_size=args.batch_size,
                             latent_dim=args.latent_dim, generator_width=args.width,
                             discriminator_width=args.width)
    arch = gan_architecture(config)
    paths = find_images(args.data)[: args.max_images]
    batch_size = min(config.batch_size, len(paths))
    info = machine_info(device)
    print("# Training throughput benchmark\n")
    print_machine(info)
    print(f"Data: {len(paths)} files from {args.data}; DCGAN {arch.image_size}x{arch.image_size}, "
          f"latent {arch.latent_dim}, widths G {arch.generator_width} / D "
          f"{arch.discriminator_width}; batch {batch_size}; {args.steps} timed steps after "
          f"{args.warmup} warm-up, medians of {args.repeats} runs; mixed precision: "
          f"{not args.no_amp and device.type == 'cuda'}.\n")

    step_options = dict(amp=not args.no_amp, lr=config.lr, beta1=config.beta1,
                        label_smoothing=config.label_smoothing, seed=config.seed)
    reference = GANStep(arch, device, **step_options)
    reference_times = time_steps(
        reference, reference_batches(paths, arch.image_size, batch_size, args.workers, device),
        args.warmup, args.steps, args.repeats, device)

    start = time.perf_counter()
    loaded = load_images(paths, config.preprocess_config())
    load_seconds = time.perf_counter() - start
    toolkit = GANStep(arch, device, **step_options)
    toolkit_times = time_steps(toolkit, toolkit_batches(loaded.images, batch_size, device),
                               args.warmup, args.steps, args.repeats, device)

    bf16_times = None
    if device.type == "cpu" and cpu_bf16_supported():
        toolkit_bf16 = GANStep(arch, device, **{**step_options, "cpu_bf16": True})
        bf16_times = time_steps(toolkit_bf16, toolkit_batches(loaded.images, batch_size, device),
                                args.warmup, args.steps, args.repeats, device)

    images_per_run = args.steps * batch_size
    reference_rate = images_per_run / statistics.median(reference_times)
    toolkit_rate = images_per_run / statistics.median(toolkit_times)
    rows = [[f"reference: PIL decode + transforms every epoch, DataLoader({args.workers} workers)",
             reference_rate, batch_size / reference_rate, "1.0x"],
            ["toolkit: load_images once, batches from in-memory uint8 tensor", toolkit_rate,
             batch_size / toolkit_rate, f"{toolkit_rate / reference_rate:.2f}x"]]
    bf16_rate = None
    if bf16_times is not None:
        bf16_rate = images_per_run / statistics.median(bf16_times)
        rows.append(["toolkit + bfloat16 autocast on CPU (cpu_bf16: true)", bf16_rate,
                     batch_size / bf16_rate, f"{bf16_rate / reference_rate:.2f}x"])
    print("## Results\n")
    print(markdown_table(["data path", "images/second", "seconds/step", "ratio vs reference"],
                         rows))
    print(f"\nOne-off cost of the toolkit path, not in the rates above: load_images read and "
          f"preprocessed {len(loaded.paths)} files in {load_seconds:.2f} s "
          f"({len(loaded.paths) / load_seconds:.1f} images/second; a cache_dir lets later runs skip it).")
    if args.json:
        out = {"machine": info, "settings": vars(args), "batch_size": batch_size,
               "reference_images_per_second": reference_rate,
               "toolkit_images_per_second": toolkit_rate,
               "ratio": toolkit_rate / reference_rate,
               "toolkit_cpu_bf16_images_per_second": bf16_rate,
               "toolkit_cpu_bf16_run_seconds": bf16_times,
               "reference_run_seconds": reference_times, "toolkit_run_seconds": toolkit_times,
               "load_images_seconds": load_seconds, "loaded_images": len(loaded.paths)}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
