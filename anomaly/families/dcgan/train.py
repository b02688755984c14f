"""The DCGAN's training, top to bottom as the PyTorch DCGAN example reads: per batch
(1) update D, (2) update G, log to TensorBoard, save an atomic checkpoint every epoch;
then D's feature density, and f-AnoGAN's encoder (izi_f: (3) update E with G and D
frozen). ``anomaly.train.train_run`` calls :func:`train_dcgan` after the critic.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm import tqdm

from anomaly.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from anomaly.data import DataError, uint8_to_model
from anomaly.device import autocast, grad_scaler, resolve_device
from anomaly.errors import TrainingDiverged
from anomaly.families.dcgan.augment import diff_augment
from anomaly.families.dcgan.config import DCGANConfig
from anomaly.families.dcgan.density import fit_density_on_images
from anomaly.families.dcgan.monitor import reconstruction_panel
from anomaly.families.dcgan.networks import (
    Discriminator,
    Encoder,
    GANArchitecture,
    Generator,
    init_dcgan_weights,
)
from anomaly.io import display_path
from anomaly.lungs import lung_field_prior
from anomaly.monitor import watched_images

if TYPE_CHECKING:
    from anomaly.train import TrainConfig


def gan_architecture(config: TrainConfig) -> GANArchitecture:
    """The networks a run's config describes: its DCGAN section at the run's image size."""
    gan = config.section("dcgan")
    return GANArchitecture(config.image_size, 1, gan.latent_dim, gan.generator_width,
                           gan.discriminator_width, gan.max_channels, gan.spectral_norm)


def train_family(run, gan: DCGANConfig, state: dict) -> dict:
    """The family's training entry (:class:`anomaly.families.base.TrainingRun`): the
    DCGAN (``gan.epochs``), the feature density of its discriminator, then the f-AnoGAN
    encoder (``gan.encoder.epochs``); returns the run's state as saved."""
    state = train_dcgan(run.config, run.images, state, run.checkpoint, run.dist, run.device,
                        run.use_amp, run.writer, run.progress, run.log)
    if run.dist.is_main:
        fit_feature_density(run.checkpoint, run.images, run.device, gan.batch_size,
                            log=run.log)
        if gan.encoder.epochs > 0:
            train_encoder(run.checkpoint, gan.encoder.epochs, data_dir=run.data_dir,
                          progress=run.progress, log=run.log, fit_statistics=False)
        state = load_checkpoint(run.checkpoint)
    return state


def family_state(config: TrainConfig, generator: Generator, discriminator: Discriminator,
                 optimizer_g, optimizer_d, epoch: int, fixed_noise: torch.Tensor,
                 order_rng: torch.Generator) -> dict:
    """The DCGAN's part of a checkpoint."""
    return {
        "architecture": asdict(gan_architecture(config)),
        "epoch": epoch,
        "generator": generator.state_dict(),
        "discriminator": discriminator.state_dict(),
        "optimizer_g": optimizer_g.state_dict(),
        "optimizer_d": optimizer_d.state_dict(),
        "fixed_noise": fixed_noise.cpu(),
        "torch_rng": torch.get_rng_state(),
        "order_rng": order_rng.get_state(),
        "generator_trained": epoch > 0,
    }


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def train_dcgan(config: TrainConfig, images: torch.Tensor, state: dict, last: Path, dist,
                device: torch.device, use_amp: bool, writer, progress: bool = True,
                log=print) -> dict:
    """Train the DCGAN (G and D) on the normal films ``images``; return the run's state
    with the DCGAN's part, which is also saved to ``last`` every epoch.

    Per batch: (1) update D, (2) update G. Resumes from ``state`` when it holds a DCGAN.
    """
    from anomaly.families import with_part

    gan = config.section("dcgan")
    torch.manual_seed(config.seed)
    arch = gan_architecture(config)
    generator, discriminator = Generator(arch).to(device), Discriminator(arch).to(device)
    generator.apply(init_dcgan_weights)
    discriminator.apply(init_dcgan_weights)
    optimizer_g = torch.optim.Adam(generator.parameters(), gan.lr, (gan.beta1, gan.beta2))
    optimizer_d = torch.optim.Adam(discriminator.parameters(), gan.lr,
                                   (gan.beta1, gan.beta2))
    order_rng = torch.Generator().manual_seed(config.seed)
    fixed_noise = torch.randn(gan.sample_count, arch.latent_dim,
                              generator=torch.Generator().manual_seed(config.seed + 1))
    start_epoch = 0
    if "generator" in state:
        load_weights(generator, state["generator"], "generator")
        load_weights(discriminator, state["discriminator"], "discriminator")
        optimizer_g.load_state_dict(state["optimizer_g"])
        optimizer_d.load_state_dict(state["optimizer_d"])
        torch.set_rng_state(state["torch_rng"])
        order_rng.set_state(state["order_rng"])
        start_epoch = int(state["epoch"])
        log(f"DCGAN: resuming at epoch {start_epoch}")
    # G is wrapped in DistributedDataParallel; D is called twice per step, which DDP
    # cannot follow, so its gradients are averaged by hand (step (1))
    generator = dist.wrap(generator)
    scaler_d, scaler_g = grad_scaler(device, use_amp), grad_scaler(device, use_amp)
    real_target = 1.0 - gan.label_smoothing  # one-sided label smoothing

    def as_seen_by_d(batch: torch.Tensor) -> torch.Tensor:  # same augmentation, real and fake
        return diff_augment(batch) if gan.diff_augment else batch

    count = len(images)
    batch_size = min(gan.batch_size, count)
    step = start_epoch * max(1, count // (batch_size * dist.world_size))

    for epoch in range(start_epoch, gan.epochs):
        generator.train()
        discriminator.train()
        order = torch.randperm(count, generator=order_rng)
        batches = dist.shard_batches(order, batch_size)
        if dist.world_size > 1:  # each rank draws its own noise, reproducibly per epoch
            torch.manual_seed(config.seed + 1000 * epoch + dist.rank)
        bar = tqdm(batches, desc=f"DCGAN {epoch + 1}/{gan.epochs}", unit="batch",
                   disable=not (progress and dist.is_main), leave=False)
        for batch_index in bar:
            real = uint8_to_model(images[batch_index.to(device)])  # (B, 1, S, S)
            if gan.flip:
                flip = torch.rand(real.shape[0], device=device) < 0.5
                real = torch.where(flip[:, None, None, None], real.flip(-1), real)
            seen = as_seen_by_d(real)  # (B, 1, S, S), as D sees every input

            # (1) Update D: maximise log D(x) + log(1 - D(G(z)))
            optimizer_d.zero_grad(set_to_none=True)
            with autocast(device, use_amp):
                logits_real = discriminator(seen).float()
                noise = torch.randn(len(seen), arch.latent_dim, device=device)
                fake = generator(noise)  # (B, 1, S, S)
                logits_fake = discriminator(as_seen_by_d(fake.detach())).float()
                loss_d = (F.binary_cross_entropy_with_logits(
                    logits_real, torch.full_like(logits_real, real_target))
                    + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
            scaler_d.scale(loss_d).backward()
            dist.average_gradients(discriminator)
            scaler_d.step(optimizer_d)
            scaler_d.update()
            dist.broadcast_buffers(discriminator)

            # (2) Update G: maximise log D(G(z))
            optimizer_g.zero_grad(set_to_none=True)
            with autocast(device, use_amp):
                logits_fake_for_g = discriminator(as_seen_by_d(fake)).float()
                loss_g = F.binary_cross_entropy_with_logits(
                    logits_fake_for_g, torch.ones_like(logits_fake_for_g))
            scaler_g.scale(loss_g).backward()
            scaler_g.step(optimizer_g)
            scaler_g.update()

            if not (math.isfinite(loss_d.item()) and math.isfinite(loss_g.item())):
                raise TrainingDiverged(
                    f"loss became non-finite at epoch {epoch + 1} (D {loss_d.item():.4g}, "
                    f"G {loss_g.item():.4g}); the last good checkpoint is {display_path(last)}; "
                    "try a lower --lr or spectral_norm: true")
            d_real = torch.sigmoid(logits_real).mean().item()
            d_fake = torch.sigmoid(logits_fake).mean().item()
            bar.set_postfix(loss_d=f"{loss_d.item():.3f}", loss_g=f"{loss_g.item():.3f}",
                            d_x=f"{d_real:.2f}", d_gz=f"{d_fake:.2f}")
            if writer is not None:
                writer.add_scalar("loss/discriminator", loss_d.item(), step)
                writer.add_scalar("loss/generator", loss_g.item(), step)
                writer.add_scalar("D(x)", d_real, step)
                writer.add_scalar("D(G(z))", d_fake, step)
            step += 1

        if dist.is_main:
            g, d = _unwrap(generator), _unwrap(discriminator)
            g.eval()
            with torch.no_grad():
                samples = g(fixed_noise.to(device)).float().cpu()
            writer.add_image("samples", make_grid(samples, nrow=8, normalize=True,
                                                  value_range=(-1, 1)), epoch + 1)
            writer.flush()
            state = with_part(state, "dcgan", family_state(
                config, g, d, optimizer_g, optimizer_d, epoch + 1, fixed_noise, order_rng))
            save_checkpoint(state, last)
            log(f"DCGAN epoch {epoch + 1}/{gan.epochs}: loss D {loss_d.item():.3f}, "
                f"G {loss_g.item():.3f}, D(x) {d_real:.2f}, D(G(z)) {d_fake:.2f}")
        dist.barrier()

    if dist.world_size > 1:
        dist.check_replicas_identical([_unwrap(generator), _unwrap(discriminator)])
        log(f"weights identical on all {dist.world_size} ranks")
    return state


def train_encoder(model: str | os.PathLike, epochs: int, data_dir: str | os.PathLike | None = None,
                  lr: float | None = None, kappa: float | None = None, batch_size: int | None = None,
                  device: str | None = None, progress: bool = True, log=print,
                  fit_statistics: bool = True) -> Path:
    """Train f-AnoGAN's encoder (izi_f) for a trained GAN and store it in its checkpoint.

    G and D stay frozen in eval mode; E minimises
    ``MSE(x, G(E(x))) + kappa * MSE(f(x), f(G(E(x))))`` on the training normals.

    Args:
        model: run directory or checkpoint file of a trained GAN.
        epochs: passes over the training images.
        data_dir: folder of normal training images (default: the GAN's own, from its config).
        lr, kappa, batch_size, device: override the values stored in the GAN's config.
        fit_statistics: fit the run's score statistics afterwards (the training run
            fits them itself once every family is trained).

    Returns:
        Path of the updated checkpoint.
    """
    from anomaly.train import (  # the shared run (it imports this module)
        TrainConfig,
        checkpoint_path,
        fit_score_statistics,
        mixed_precision,
        prepare_training_images,
    )

    state = load_checkpoint(model)
    if "generator" not in state or not state.get("generator_trained", True):
        raise CheckpointError(f"{display_path(model)}: no trained DCGAN generator to train an "
                              "encoder for (train-gan with epochs > 0)")
    config = TrainConfig.from_sources([(state["train_config"], display_path(model))])
    gan = config.section("dcgan")
    lr = lr or gan.encoder.lr
    kappa = gan.encoder.kappa if kappa is None else kappa
    batch_size = batch_size or gan.batch_size
    torch_device = resolve_device(device or config.device)
    use_amp = mixed_precision(config, torch_device)
    torch.manual_seed(config.seed + 2)
    path = Path(model)
    path = checkpoint_path(path) if path.is_dir() else path
    run_dir = path.parent.parent
    trained_on = state.get("data_dir")
    if data_dir and trained_on and Path(data_dir).resolve() != Path(trained_on):
        raise DataError(f"{display_path(model)}: the GAN was trained on {trained_on}; an "
                        f"encoder trained on {display_path(data_dir)} would re-split its "
                        "held-out normals (leave out --data)")
    data_dir = data_dir or trained_on
    if not data_dir:
        raise DataError(f"{display_path(path)}: pass the GAN's training folder (--data)")
    loaded, _, _ = prepare_training_images(config, data_dir, log, progress)
    images = loaded.images.to(torch_device)
    had_prior = state.get("lung_prior") is not None  # a new one changes every family's scores
    state.setdefault("lung_prior", lung_field_prior(loaded.images))
    arch = GANArchitecture(**state["architecture"])
    generator, discriminator = Generator(arch), Discriminator(arch)
    load_weights(generator, state["generator"], "generator")
    load_weights(discriminator, state["discriminator"], "discriminator")
    generator.to(torch_device).eval().requires_grad_(False)
    discriminator.to(torch_device).eval().requires_grad_(False)
    encoder = Encoder(arch).to(torch_device)
    encoder.apply(init_dcgan_weights)
    optimizer = torch.optim.Adam(encoder.parameters(), lr, (0.5, 0.999))
    writer = SummaryWriter(str(run_dir / "encoder"))
    scaler = grad_scaler(torch_device, use_amp)
    watched = watched_images(state.get("holdout_paths", []), config.preprocess_config(),
                             torch_device)
    order_rng = torch.Generator().manual_seed(config.seed + 3)
    count = len(loaded.paths)
    step = 0
    for epoch in range(epochs):
        encoder.train()
        order = torch.randperm(count, generator=order_rng)
        batches = [order[i : i + batch_size] for i in range(0, count, batch_size)]
        bar = tqdm(batches, desc=f"encoder {epoch + 1}/{epochs}", unit="batch",
                   disable=not progress, leave=False)
        for batch_index in bar:
            real = uint8_to_model(images[batch_index.to(torch_device)])  # (B, 1, S, S)
            if gan.flip:
                flip = torch.rand(real.shape[0], device=torch_device) < 0.5
                real = torch.where(flip[:, None, None, None], real.flip(-1), real)

            # (3) Update E: reconstruct x through G(E(x)) in image and feature space
            optimizer.zero_grad(set_to_none=True)
            with autocast(torch_device, use_amp):
                reconstruction = generator(encoder(real))
                loss_image = F.mse_loss(reconstruction.float(), real)
                loss_features = F.mse_loss(discriminator.features(reconstruction).float(),
                                           discriminator.features(real).float())
                loss = loss_image + kappa * loss_features
            scaler.scale(loss).backward()  # float16 on CUDA needs the scaler
            scaler.step(optimizer)
            scaler.update()

            if not math.isfinite(loss.item()):
                raise TrainingDiverged(f"encoder loss became non-finite at epoch {epoch + 1}")
            bar.set_postfix(loss=f"{loss.item():.4f}")
            writer.add_scalar("encoder/loss_image", loss_image.item(), step)
            writer.add_scalar("encoder/loss_features", loss_features.item(), step)
            step += 1
        log(f"encoder epoch {epoch + 1}/{epochs}: image {loss_image.item():.4f}, "
            f"features {loss_features.item():.4f}")
        if watched is not None:
            encoder.eval()
            writer.add_image("held-out normals: input | G(E(x)) | residual",
                             reconstruction_panel(generator, encoder, watched), epoch + 1)
            writer.flush()
        state["encoder"] = encoder.state_dict()
        state["encoder_epochs"] = epoch + 1
        state["encoder_kappa"] = kappa  # what its fanogan score weighs the features by
        save_checkpoint(state, path)
    writer.close()
    if fit_statistics:
        fit_score_statistics(path, log=log, retrained="dcgan" if had_prior else None)
    return path


def fit_feature_density(model: str | os.PathLike, images: torch.Tensor, device: torch.device,
                        batch_size: int = 64, log=print) -> None:
    """Fit the Gaussian density of D's features on the training normals; store it.

    Args:
        model: run directory or checkpoint file.
        images: (N, 1, S, S) uint8 training images (those the GAN trained on).
        device: where to run the discriminator.
        batch_size: images per forward pass.
    """
    from anomaly.train import checkpoint_path

    path = Path(model)
    path = checkpoint_path(path) if path.is_dir() else path
    state = load_checkpoint(path)
    discriminator = Discriminator(GANArchitecture(**state["architecture"]))
    load_weights(discriminator, state["discriminator"], "discriminator")
    discriminator.to(device).requires_grad_(False)
    batches = (uint8_to_model(images[i: i + batch_size]) for i in range(0, len(images),
                                                                         batch_size))
    state["feature_density"] = fit_density_on_images(discriminator, batches, device)
    save_checkpoint(state, path)
    log(f"fitted the feature density on {len(images)} training images")
