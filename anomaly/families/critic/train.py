"""Train the opacity critic on normal films only, then fit the density of its features.

``train_critic`` reads top to bottom: build the network, its optimiser and one-cycle
schedule (or restore them), then per batch vary the films' acquisition, paste synthetic
opacities into a random half of them, and (1) update the critic to tell which films hold
one and, with its map head, which pixels (where the synthesis blended an opacity in). Every
epoch ends with an atomic checkpoint (through the caller's ``save``); after the last one
the Gaussian density of the critic's embeddings of the training normals is fitted. Then
the map head trains alone on the frozen critic (:mod:`anomaly.families.critic.train_map`).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Callable

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid
from tqdm import tqdm

from anomaly.checkpoint import at_least_format, load_weights
from anomaly.data import uint8_to_model
from anomaly.density import fit_density
from anomaly.device import autocast, grad_scaler
from anomaly.errors import TrainingDiverged
from anomaly.families.critic.batchnorm_statistics import statistics_from
from anomaly.families.critic.config import COMBINED, CriticConfig
from anomaly.families.critic.network import CriticArchitecture, OpacityCritic
from anomaly.families.critic.scorer import CriticFamily, critic_embedding, heat_scale_of
from anomaly.families.critic.synthesis import paste_opacities
from anomaly.families.critic.train_map import (
    map_field_due,
    map_loss,
    map_stage_due,
    opacity_batch,
    placement_prior,
    train_map_head,
    with_map_field,
    with_normal_level,
)
from anomaly.io import display_path
from anomaly.monitor import evidence_panel


def train_family(run, config: CriticConfig, state: dict) -> dict:
    """The family's training entry (:class:`anomaly.families.base.TrainingRun`): train
    the critic, then its map head alone on the frozen critic (``map_epochs``,
    :mod:`anomaly.families.critic.train_map`), or go on where a resumed run stopped;
    return the run's state with the critic's part, its map field and the map's normal
    level fitted. A part that owes neither stage anything and holds the map field its
    settings ask for is kept as it is."""
    from anomaly.families import with_part
    from anomaly.monitor import watched_images

    part = state.get("critic", {})
    critic_due = part.get("density") is None or part.get("epoch", 0) < config.epochs
    if not critic_due and not map_stage_due(part, config) and not map_field_due(part, config):
        return state
    if critic_due:
        watched = watched_images(run.holdout, run.config.preprocess_config(), run.device) \
            if run.dist.is_main else None
        part = train_critic(config, run.config.seed, run.images, run.lung_prior, run.dist,
                            run.device, run.use_amp,
                            lambda part: run.save(with_part(state, "critic", part)),
                            resume_state=part or None, writer=run.writer, watched=watched,
                            progress=run.progress, log=run.log)
        state = with_part(state, "critic", part)
        run.save(state)
    if map_stage_due(part, config):
        part = train_map_head(config, run.config.seed, run.images, run.lung_prior, part,
                              run.dist, run.device, run.use_amp,
                              lambda part: run.save(with_part(state, "critic", part)),
                              writer=run.writer, progress=run.progress, log=run.log,
                              where=display_path(run.checkpoint))
    if run.dist.is_main:
        part = with_map_field(part, config, run.images, run.lung_prior)
        part = with_normal_level(part, run.holdout, run.config.preprocess_config(),
                                 run.device, run.lung_prior, log=run.log)
        part["default_score"] = default_score(config, run.holdout, run.log)
    state = with_part(state, "critic", part)
    if part.get("embedding", "l2") != "l2":  # versions before 3 would read it as l2
        state = at_least_format(state, 3)
    run.save(state)
    return state


def default_score(config: CriticConfig, holdout: list, log=print) -> str:
    """The score kind a run records as its default: the config's, or ``density`` where
    that score is standardised on held-out normal films and the run holds out fewer
    than two."""
    if config.score in COMBINED and len(holdout) < 2:
        log(f"critic: no held-out normal films to standardise {config.score}; the run "
            "scores with density by default")
        return "density"
    return config.score


def train_critic(config: CriticConfig, seed: int, images: torch.Tensor,
                 lung_prior: torch.Tensor, dist, device: torch.device, use_amp: bool,
                 save: Callable[[dict], None], resume_state: dict | None = None,
                 writer=None, watched: torch.Tensor | None = None, progress: bool = True,
                 log=print) -> dict:
    """Train the critic and fit its feature density; return the family's state.

    Args:
        config: the critic's settings.
        seed: the run's seed (the critic's stream starts from it).
        images: (N, 1, S, S) uint8 normal training films, on ``device``.
        lung_prior: (S, S) 0/1 lung-field prior of the training normals.
        dist: :class:`anomaly.distributed.DistContext` of this process.
        device: where to train.
        use_amp: train under autocast (float16 on CUDA, bfloat16 on CPU).
        save: writes the whole checkpoint with this family's state (rank 0 calls it).
        resume_state: this family's state from a checkpoint, to continue.
        writer: TensorBoard ``SummaryWriter`` (rank 0) or None.
        watched: held-out normal films (N, 1, S, S) in [-1, 1] for the TensorBoard panel
            of where the critic finds opacity, with and without pasted opacities.

    Returns:
        The critic's checkpoint state: architecture, weights, optimiser, schedule,
        random states, epoch and the fitted ``density``.
    """
    torch.manual_seed(seed)  # weights, then the films' changes and opacities
    size = images.shape[-1]
    arch = CriticArchitecture(image_size=size, width=config.width, map_width=config.map_width,
                              map_levels=config.map_levels,
                              instance_norm_blocks=config.instance_norm_blocks)
    critic = OpacityCritic(arch).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(critic.parameters(), config.lr / 2,
                                  weight_decay=config.weight_decay)
    count = len(images)
    batch_size = min(config.batch_size, count // dist.world_size)
    steps_per_epoch = max(1, count // (batch_size * dist.world_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.lr, total_steps=max(1, config.epochs * steps_per_epoch))
    order_rng = torch.Generator().manual_seed(seed)
    scaler = grad_scaler(device, use_amp)  # the map loss's per-pixel gradients are tiny
    start_epoch = 0
    if resume_state is not None:
        load_weights(critic, resume_state["network"], "critic")
        optimizer.load_state_dict(resume_state["optimizer"])
        schedule.load_state_dict(resume_state["schedule"])
        if scaler.is_enabled() and resume_state.get("grad_scaler"):
            scaler.load_state_dict(resume_state["grad_scaler"])
        order_rng.set_state(resume_state["order_rng"])
        torch.set_rng_state(resume_state["torch_rng"])
        start_epoch = int(resume_state["epoch"])
        log(f"critic: resuming at epoch {start_epoch}")
    model = dist.wrap(critic)
    prior = placement_prior(config, images, lung_prior).to(device)
    watched_pasted = None
    if watched is not None:  # the same opacities every epoch, so panels compare
        watched_pasted, _ = paste_opacities(
            watched, prior, generator=torch.Generator(device=device).manual_seed(0))

    @torch.no_grad()
    def evidence(films: torch.Tensor) -> torch.Tensor:
        critic.eval()
        return torch.sigmoid(critic.cell_logits(critic.feature_map(films)))

    step = start_epoch * steps_per_epoch

    def state(epoch: int) -> dict:
        return {"architecture": asdict(arch), "config": {**asdict(config), "seed": seed}, "epoch": epoch,
                "network": critic.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "order_rng": order_rng.get_state(),
                "torch_rng": torch.get_rng_state(),
                **({"grad_scaler": scaler.state_dict()} if scaler.is_enabled() else {})}

    for epoch in range(start_epoch, config.epochs):
        model.train()
        if dist.world_size > 1:  # each rank draws its own films' changes, per epoch
            torch.manual_seed(seed + 1000 * epoch + dist.rank)
        order = torch.randperm(count, generator=order_rng)
        bar = tqdm(dist.shard_batches(order, batch_size), desc=f"critic {epoch + 1}/"
                   f"{config.epochs}", unit="batch", disable=not (progress and dist.is_main),
                   leave=False)
        total = 0.0
        for batch_index in bar:
            films, pasted, inputs, has_opacity, targets = opacity_batch(
                images[batch_index.to(device)], config, prior, config.synthesis)

            # (1) Update the critic: which films hold a synthetic opacity, and where?
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, use_amp), statistics_from(
                    critic.blocks, ~has_opacity, config.batchnorm_statistics):
                logits, pixel_logits = model(
                    inputs.contiguous(memory_format=torch.channels_last), with_map=True,
                    detach_map=config.map_detach)
            loss = F.binary_cross_entropy_with_logits(logits.float(), has_opacity.float())
            if pixel_logits is not None:
                loss = loss + config.map_weight * map_loss(pixel_logits.float(), targets)
            scaler.scale(loss).backward()  # as loss.backward() where it is disabled
            scaler.step(optimizer)
            scaler.update()
            schedule.step()

            if not math.isfinite(loss.item()):
                raise TrainingDiverged(f"critic loss became non-finite at epoch {epoch + 1}; "
                                       "try a lower critic_lr")
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if writer is not None:
                writer.add_scalar("critic/loss", loss.item(), step)
                writer.add_scalar("critic/lr", schedule.get_last_lr()[0], step)
            step += 1
        if dist.is_main:
            if writer is not None:
                writer.add_image("critic: films as trained (top: clean, bottom: opacities)",
                                 make_grid(torch.cat([films[:8], pasted[:8]]).float().cpu(),
                                           nrow=8, normalize=True, value_range=(-1, 1)),
                                 epoch + 1)
                if watched is not None:
                    writer.add_image("critic: held-out normals: input | opacity found | "
                                     "opacities pasted | found there",
                                     evidence_panel(evidence, watched, watched_pasted), epoch + 1)
                writer.flush()
            save(state(epoch + 1))
            log(f"critic epoch {epoch + 1}/{config.epochs}: opacity loss "
                f"{total / max(1, len(bar)):.3f}")
        dist.barrier()
    if dist.world_size > 1:
        dist.check_replicas_identical([critic])
        log(f"critic weights identical on all {dist.world_size} ranks")
    final = state(max(start_epoch, config.epochs))
    if dist.is_main:
        final["views"] = config.score_views
        final["embedding"] = config.embedding
        final["density"] = fit_critic_density(critic, images, device, config.score_views,
                                              config.embedding)
        sample = uint8_to_model(images[:256])
        final["heat_scale"] = heat_scale_of(
            CriticFamily(critic, final["density"], device, views=config.score_views,
                         heat="gradcam", embedding=config.embedding), sample)
        log(f"critic: fitted the feature density on {len(images)} training images")
    return final


@torch.no_grad()
def fit_critic_density(critic: OpacityCritic, images: torch.Tensor, device: torch.device,
                       views: int, embedding: str = "l2", batch_size: int = 128
                       ) -> dict[str, torch.Tensor]:
    """Gaussian (mean, Ledoit-Wolf precision) of the critic's embeddings (``views`` and
    ``embedding`` as in :func:`critic_embedding`) of (N, 1, S, S) uint8 normal films."""
    critic.eval()
    embeddings = [critic_embedding(critic, uint8_to_model(images[i: i + batch_size]).to(device),
                                   views, embedding).cpu()
                  for i in range(0, len(images), batch_size)]
    return fit_density(torch.cat(embeddings).numpy())
