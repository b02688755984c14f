"""The map head's own stage: taught where the opacities are on the finished critic.

After the critic's epochs, its map head trains alone for ``map_epochs`` more: the critic
is frozen in evaluation mode (its BatchNorm statistics fixed, as when it scores), so its
weights, its density and every image score stay what they were, while the head learns
from the very features it will read when scoring. Per batch: vary the films'
acquisition as the critic's training does, paste synthetic opacities into a random half,
and update the head alone on their masks (pixel BCE + Dice). Every epoch ends with an
atomic checkpoint; a resumed run goes on from the last one.

Then the map's normal level is fitted on the held-out normals
(:mod:`anomaly.families.critic.normal_level`).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from anomaly.checkpoint import load_weights
from anomaly.data import uint8_to_model
from anomaly.device import autocast, grad_scaler
from anomaly.errors import TrainingDiverged
from anomaly.eval_lesions import VISIBLE_CHANGE
from anomaly.families.critic.config import CriticConfig
from anomaly.families.critic.network import CriticArchitecture, OpacityCritic
from anomaly.families.critic.normal_level import NORMAL_LEVEL_QUANTILE, fit_normal_level
from anomaly.families.critic.scorer import CriticFamily
from anomaly.families.critic.synthesis import (
    decoy_prior,
    map_field,
    soft_lung_prior,
    synthesise,
    vary_as_configured,
    wide_lung_prior,
)


def _has_head(part: dict) -> bool:
    return part.get("architecture", {}).get("map_width", 0) > 0


def _own_blocks(part: dict) -> int:
    return int(part.get("architecture", {}).get("map_own_blocks", 0))


def map_stage_due(part: dict, config: CriticConfig) -> bool:
    """Whether the critic's part still owes epochs of the map head's own stage (or, with
    a stage, asks for another count of the head's own blocks, which only it can give)."""
    return _has_head(part) and config.map_epochs > 0 and (
        int(part.get("map_epoch", 0)) < config.map_epochs
        or _own_blocks(part) != config.map_own_blocks)


def map_field_due(part: dict, config: CriticConfig) -> bool:
    """Whether the critic's part lacks the map field its settings ask for, or holds one
    they do not (a run trained before the field existed, or resumed with another
    ``map_field``)."""
    return _has_head(part) and ("map_field" in part) != (config.map_field == "lungs")


def with_map_field(part: dict, config: CriticConfig, images: torch.Tensor,
                   lung_prior: torch.Tensor) -> dict:
    """The critic's part with its map field (``map_field``, (S, S) in [0, 1],
    :func:`~anomaly.families.critic.synthesis.map_field`) fitted on the training films
    (N, 1, S, S) where ``config.map_field`` is ``lungs``; without one otherwise."""
    rest = {key: value for key, value in part.items() if key != "map_field"}
    if not _has_head(part) or config.map_field != "lungs":
        return rest
    return {**rest, "map_field": map_field(images, lung_prior)}


def train_map_head(config: CriticConfig, seed: int, images: torch.Tensor,
                   lung_prior: torch.Tensor, part: dict, dist, device: torch.device,
                   use_amp: bool, save: Callable[[dict], None], writer=None,
                   progress: bool = True, log=print, where: str = "this run") -> dict:
    """Train the map head of a trained critic's ``part`` alone, the critic frozen.

    Args:
        config: the critic's settings (``map_epochs``, ``map_lr``, the films' changes and
            the synthesis).
        seed: the run's seed (this stage's stream starts from ``seed + 1``).
        images: (N, 1, S, S) uint8 normal training films, on ``device``.
        lung_prior: (S, S) 0/1 lung-field prior of the training normals.
        part: the critic's checkpoint state, its density fitted; with ``map_epoch`` and
            this stage's optimiser and random states when resumed.
        dist, device, use_amp: as for the critic's training.
        save: writes the whole checkpoint with the critic's part (rank 0 calls it).
        writer: TensorBoard ``SummaryWriter`` (rank 0) or None.
        where: the run's checkpoint as named in errors.

    Returns:
        The critic's part with the head's new weights and ``map_epoch``.

    Raises:
        ValueError: ``map_own_blocks`` differs from the part's after its stage began.
    """
    start_epoch = int(part.get("map_epoch", 0))
    arch = CriticArchitecture(**part["architecture"])
    fork = arch.map_own_blocks != config.map_own_blocks
    if fork and start_epoch > 0:
        raise ValueError(f"{where}: map_own_blocks is {arch.map_own_blocks} in this run, whose map "
                         f"head's stage is at epoch {start_epoch}; it can only change before "
                         "that stage begins (resume a copy of the run made before it)")
    critic = OpacityCritic(replace(arch, map_own_blocks=config.map_own_blocks)).to(
        device, memory_format=torch.channels_last)  # oneDNN's faster layout, as in training
    if fork:  # the head's own blocks start as copies of the critic's
        load_weights(critic, {**critic.state_dict(), **{
            name: value for name, value in part["network"].items()
            if not name.startswith("map_head.own_blocks.")}}, "critic")
        if config.map_own_blocks:
            critic.copy_blocks_into_map_head()
        log(f"critic map head: reading the last {config.map_own_blocks} block(s) through "
            "its own copies" if config.map_own_blocks else
            "critic map head: reading the critic's blocks alone")
    else:
        load_weights(critic, part["network"], "critic")
    critic.eval()  # frozen: BatchNorm keeps its statistics, no weight changes
    critic.requires_grad_(False)
    head = critic.map_head.requires_grad_(True)
    count = len(images)
    batch_size = min(config.batch_size, count // dist.world_size)
    steps_per_epoch = max(1, count // (batch_size * dist.world_size))
    # one one-cycle schedule over the stage; a stage resumed with more epochs or another
    # map_lr goes on with a new cycle over the epochs it still owes
    stored = part.get("config", {})
    same_plan = (stored.get("map_epochs") == config.map_epochs
                 and stored.get("map_lr", config.map_lr) == config.map_lr)
    cycle_start = 0 if same_plan else start_epoch
    # the head's layers at map_lr; its own copies of the critic's blocks at the critic's lr
    own = [] if head.own_blocks is None else list(head.own_blocks.parameters())
    layers = [p for name, p in head.named_parameters() if not name.startswith("own_blocks.")]
    groups = [(layers, config.map_lr), *([(own, config.lr)] if own else [])]
    optimizer = torch.optim.AdamW([{"params": params, "lr": peak / 2} for params, peak in groups],
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, [peak for _, peak in groups],
        total_steps=max(1, (config.map_epochs - cycle_start) * steps_per_epoch))
    torch.manual_seed(seed + 1)
    order_rng = torch.Generator().manual_seed(seed + 1)
    scaler = grad_scaler(device, use_amp)  # the per-pixel gradients are tiny
    if start_epoch > 0:
        if same_plan:
            optimizer.load_state_dict(part["map_optimizer"])
            schedule.load_state_dict(part["map_schedule"])
        if scaler.is_enabled() and part.get("map_grad_scaler"):
            scaler.load_state_dict(part["map_grad_scaler"])
        order_rng.set_state(part["map_order_rng"])
        torch.set_rng_state(part["map_torch_rng"])
        log(f"critic map head: resuming at epoch {start_epoch}"
            + ("" if same_plan else f" with a new schedule to epoch {config.map_epochs}"
               f" (map_lr {config.map_lr:g})"))
    model = dist.wrap(head)
    prior = placement_prior(config, images, lung_prior).to(device)
    synthesis = config.map_synthesis or config.synthesis
    decoy_placement = (decoy_prior(images.cpu(), lung_prior.cpu()).to(device)
                       if config.map_decoys else None)
    step = start_epoch * steps_per_epoch  # TensorBoard's step

    def state(epoch: int) -> dict:
        return {**part, "architecture": asdict(critic.arch), "network": critic.state_dict(),
                "map_epoch": epoch,
                "config": {**part.get("config", {}), "map_epochs": config.map_epochs,
                           "map_own_blocks": config.map_own_blocks,
                           "map_lr": config.map_lr, "map_synthesis": config.map_synthesis,
                           "map_decoys": config.map_decoys, "map_target": config.map_target},
                "map_optimizer": optimizer.state_dict(), "map_schedule": schedule.state_dict(),
                "map_order_rng": order_rng.get_state(), "map_torch_rng": torch.get_rng_state(),
                **({"map_grad_scaler": scaler.state_dict()} if scaler.is_enabled() else {})}

    for epoch in range(start_epoch, config.map_epochs):
        head.train()
        if dist.world_size > 1:  # each rank draws its own films' changes, per epoch
            torch.manual_seed(seed + 1 + 1000 * epoch + dist.rank)
        order = torch.randperm(count, generator=order_rng)
        bar = tqdm(dist.shard_batches(order, batch_size), desc=f"map head {epoch + 1}/"
                   f"{config.map_epochs}", unit="batch",
                   disable=not (progress and dist.is_main), leave=False)
        total = 0.0
        for batch_index in bar:
            batch = opacity_batch(images[batch_index.to(device)], config, prior, synthesis,
                                  decoy_placement, config.map_decoys, config.map_target)

            # Update the head alone: which pixels hold the pasted opacity?
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, use_amp):
                with torch.no_grad():
                    features = critic.block_features(
                        batch.inputs.contiguous(memory_format=torch.channels_last))
                pixel_logits = model(features, critic.arch.image_size)
            loss = map_loss(pixel_logits.float(), batch.targets)
            scaler.scale(loss).backward()  # as loss.backward() where it is disabled
            scaler.step(optimizer)
            scaler.update()
            schedule.step()

            if not torch.isfinite(loss):
                raise TrainingDiverged(f"map head loss became non-finite at epoch "
                                       f"{epoch + 1}; try a lower map_lr")
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if writer is not None:
                writer.add_scalar("critic/map_loss", loss.item(), step)
                writer.add_scalar("critic/map_lr", schedule.get_last_lr()[0], step)
            step += 1
        if dist.is_main:
            save(state(epoch + 1))
            log(f"critic map head epoch {epoch + 1}/{config.map_epochs}: map loss "
                f"{total / max(1, len(bar)):.3f}")
        dist.barrier()
    if dist.world_size > 1:
        dist.check_replicas_identical([head])
    return state(max(start_epoch, config.map_epochs))


def placement_prior(config: CriticConfig, images: torch.Tensor, lung_prior: torch.Tensor
                    ) -> torch.Tensor:
    """The soft prior (S, S) opacities are placed in: the run's lung prior or, with
    ``opacity_prior: wide``, the wider one of the training films (N, 1, S, S)."""
    placement = wide_lung_prior(images.cpu()) if config.opacity_prior == "wide" else lung_prior
    return soft_lung_prior(placement)


class OpacityBatch(NamedTuple):
    """One training batch, all (B, 1, S, S) in [-1, 1] on the films' device but
    ``has_opacity`` (B,) and ``targets`` (the map's 0/1 targets, :func:`opacity_target`)."""

    films: torch.Tensor  # the films, their acquisition varied
    pasted: torch.Tensor  # the same with synthetic opacities
    inputs: torch.Tensor  # each film with or without them
    has_opacity: torch.Tensor
    targets: torch.Tensor


def opacity_batch(films: torch.Tensor, config: CriticConfig, prior: torch.Tensor,
                  synthesis: str, decoy_placement: torch.Tensor | None = None,
                  decoy_share: float = 0.0, target: str = "blend") -> OpacityBatch:
    """One training batch of uint8 films (B, 1, S, S): their acquisition varied, then
    opacities of ``synthesis`` pasted into a random half (inside the soft ``prior``), and
    with ``decoy_placement`` decoys pasted into a random ``decoy_share`` of all films (inside
    that prior, where no lung is; ``inputs`` only, the ``targets`` leave them out).
    ``target``: the map's targets from the blend weights (``blend``) or from the pixels
    the opacities visibly changed (``change``)."""
    varied = vary_as_configured(uint8_to_model(films), config)
    has_opacity = torch.rand(len(varied), device=varied.device) < 0.5  # (B,)
    pasted, masks = synthesise(varied, prior, synthesis)
    level = config.map_mask_level
    if target == "change":  # how far each pixel moved, on [0, 1] intensities
        masks, level = (pasted - varied).abs() / 2, VISIBLE_CHANGE
    inputs = torch.where(has_opacity.view(-1, 1, 1, 1), pasted, varied)
    if decoy_placement is not None and decoy_share > 0:
        with_decoys, _ = synthesise(inputs, decoy_placement, synthesis)
        has_decoys = torch.rand(len(varied), device=varied.device) < decoy_share
        inputs = torch.where(has_decoys.view(-1, 1, 1, 1), with_decoys, inputs)
    return OpacityBatch(varied, pasted, inputs, has_opacity,
                        opacity_target(masks, has_opacity, level))


def opacity_target(masks: torch.Tensor, has_opacity: torch.Tensor, level: float
                   ) -> torch.Tensor:
    """The map head's target (B, 1, S, S) of 0/1: pixels whose blend weight exceeds
    ``level`` in the films that were given their opacities, zero in the clean ones."""
    return ((masks > level) & has_opacity.view(-1, 1, 1, 1)).float()


def map_loss(pixel_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pixel BCE plus soft Dice over the whole batch (so clean films, whose target is
    empty, still count) of per-pixel logits against a 0/1 target, both (B, 1, S, S)."""
    bce = F.binary_cross_entropy_with_logits(pixel_logits, targets)
    probability = torch.sigmoid(pixel_logits)
    overlap = (probability * targets).sum()
    dice = 1 - (2 * overlap + 1) / (probability.sum() + targets.sum() + 1)
    return bce + dice


def with_normal_level(part: dict, holdout: list, preprocess_config, device: torch.device,
                      lung_prior: torch.Tensor, log=print) -> dict:
    """The critic's part with its map's normal level (``map_normal_level``,
    :mod:`anomaly.families.critic.normal_level`) fitted on the held-out normal films;
    as it was without a map head or without held-out films that can be read."""
    from anomaly.data import load_images

    if not _has_head(part) or part.get("density") is None:
        return part
    loaded = load_images(list(holdout), preprocess_config, progress=False)
    if not loaded.paths:
        log("critic: no held-out normal film to fit the map's normal level on; its map is "
            "shown raw")
        return {key: value for key, value in part.items() if key != "map_normal_level"}
    family = CriticFamily.from_state({**part, "map_normal_level": None}, device,
                                     lung_prior=lung_prior, heat="map")
    images = uint8_to_model(loaded.images)
    maps = torch.cat([family.score_batch(images[start: start + 64].to(device)).heatmaps.cpu()
                      for start in range(0, len(images), 64)])
    level = fit_normal_level(maps)
    log(f"critic: the map's normal level is {level:.4g} (the "
        f"{NORMAL_LEVEL_QUANTILE:.0%} quantile of {len(images)} held-out normal films' pixels)")
    return {**part, "map_normal_level": level}


def refit_normal_level(model, log=print) -> None:
    """Fit the map's normal level of a trained run or checkpoint on its held-out normal
    films (:func:`with_normal_level`), then its score statistics again, so its region
    thresholds are those of the map as shown (the regions themselves do not change)."""
    from anomaly.checkpoint import load_checkpoint, resolve_checkpoint_path, save_checkpoint
    from anomaly.lungs import checkpoint_lung_prior
    from anomaly.preprocess import PreprocessConfig
    from anomaly.train import fit_score_statistics

    path = resolve_checkpoint_path(model)
    state = load_checkpoint(path)
    if not state.get("critic"):
        raise ValueError(f"{path}: holds no critic")
    config = PreprocessConfig(**state["preprocess"])
    prior = checkpoint_lung_prior(state, config.image_size)
    state["critic"] = with_normal_level(state["critic"], state.get("holdout_paths", []),
                                        config, torch.device("cpu"), prior, log=log)
    save_checkpoint(state, path)
    fit_score_statistics(path, log=log, retrained="critic")


