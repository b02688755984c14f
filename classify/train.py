"""``classify fit``: train the supervised baseline on a labelled folder.

``fit`` reads top to bottom: build the network (ImageNet, local or random weights),
load the training and validation images once, weigh the classes by inverse frequency,
then stage 1 trains the new head on the frozen base and the optional stage 2
(``fine_tune_epochs``) also trains the last block at a lower learning rate. Each epoch
ends with a validation pass, TensorBoard curves, ReduceLROnPlateau and early stopping
on the validation loss, ``checkpoints/last.pt`` and, when the validation loss
improved, ``checkpoints/best.pt``.

Under ``torchrun`` each process trains a shard of every epoch's batches in
DistributedDataParallel, validation is split across processes and summed, and only
rank 0 logs, writes TensorBoard and saves checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from anomaly import distributed
from anomaly.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from anomaly.config import (
    ConfigError,
    changed_settings,
    format_config,
    load_config,
    resumed_config,
    save_config,
)
from anomaly.data import (
    DataError,
    LabelledFolder,
    load_images,
    refuse_shared_files,
    scan_labelled_folder,
    uint8_to_model,
)
from anomaly.device import autocast, resolve_device
from anomaly.errors import TrainingDiverged
from anomaly.evaluate_model import limit_per_class
from anomaly.io import display_path
from anomaly.preprocess import PreprocessConfig
from classify import CHECKPOINT_FORMAT as FORMAT
from classify import CHECKPOINT_FORMAT_VERSION as FORMAT_VERSION
from classify.augment import AugmentConfig, augment_batch
from classify.models import ClassifierNet


@dataclass
class FitConfig:
    """Everything ``classify fit`` needs; YAML keys are these field names."""

    # preprocessing (stored in the checkpoint, reused by evaluate and predict)
    image_size: int = 224
    clahe: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    clahe_working_size: int = 256
    resize: str = "squash"
    # network
    backbone: str = "resnet50"
    weights: str = "imagenet"  # imagenet, none, or a state-dict file
    dropout: float = 0.3
    # stage 1: new head on the frozen base
    epochs: int = 10
    lr: float = 1e-3
    # stage 2: also the last block (layer4 for ResNets); 0, or --weights none, skips it
    fine_tune_epochs: int = 5
    fine_tune_lr: float = 1e-5
    batch_size: int = 32
    weight_decay: float = 0.0
    early_stopping_patience: int = 5  # epochs without a better validation loss; 0: never stop
    plateau_patience: int = 2
    plateau_factor: float = 0.1
    min_lr: float = 1e-7
    # augmentation of training batches
    augment: bool = True
    augment_flip: bool = True
    rotation_degrees: float = 10.0
    translate: float = 0.1
    zoom: float = 0.1
    contrast: float = 0.2
    # data and run
    normal_class: str = "NORMAL"
    max_images: int | None = None  # per class, for a quick try
    cache_dir: str | None = None
    device: str = "auto"
    amp: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.fine_tune_epochs < 0:
            raise ValueError("epochs and fine_tune_epochs must not be negative")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2, not {self.batch_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")

    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing part of this config."""
        return PreprocessConfig(self.image_size, self.clahe, self.clahe_clip_limit,
                                self.clahe_tile_grid, self.clahe_working_size, self.resize)

    def augment_config(self) -> AugmentConfig:
        """The augmentation part of this config."""
        return AugmentConfig(self.augment_flip, self.rotation_degrees, self.translate,
                             self.zoom, self.contrast)

    def pretrained_weights(self) -> str | None:
        """``"imagenet"``, a file path, or ``None`` for random initialisation."""
        return None if self.weights.lower() == "none" else (
            "imagenet" if self.weights.lower() == "imagenet" else self.weights)


def class_weights(labels: np.ndarray | list[int], num_classes: int) -> list[float]:
    """Cross-entropy weights inversely proportional to class counts.

    ``weight_c = N / (num_classes * count_c)`` (scikit-learn's "balanced"), so a
    balanced folder gets all ones.

    Raises:
        DataError: a class has no images.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    if (counts == 0).any():
        raise DataError(f"every class needs training images; counts: {counts.tolist()}")
    return (counts.sum() / (num_classes * counts)).tolist()


@dataclass
class LabelledImages:
    """Preprocessed images (uint8, (N, 1, S, S)) with class indices into the model's classes."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[Path]


def load_labelled(folder: LabelledFolder, class_names: list[str], config: FitConfig,
                  what: str, progress: bool = True, log=print) -> LabelledImages:
    """Read a labelled folder once into memory, skipping (and listing) bad files.

    Raises:
        DataError: a class the model does not know, or fewer than 2 readable images.
    """
    unknown = [name for name in folder.class_names if name not in class_names]
    if unknown:
        raise DataError(f"{what} folder has class(es) {', '.join(unknown)} that the training "
                        f"folder lacks (training classes: {', '.join(class_names)})")
    label_of = {path: class_names.index(folder.class_names[index])
                for path, index in zip(folder.paths, folder.class_index)}
    loaded = load_images(folder.paths, config.preprocess_config(), cache_dir=config.cache_dir,
                         progress=progress)
    for path, reason in loaded.failures:
        log(f"skipped {display_path(path)}: {reason}")
    if len(loaded.paths) < 2:
        raise DataError(f"{what}: fewer than 2 readable images")
    labels = torch.tensor([label_of[p] for p in loaded.paths], dtype=torch.int64)
    counts = ", ".join(f"{name} {int((labels == i).sum())}" for i, name in enumerate(class_names))
    log(f"{what}: {len(loaded.paths)} images ({counts}), {len(loaded.failures)} skipped")
    return LabelledImages(loaded.images, labels, loaded.paths)


def check_input_size(model: ClassifierNet, image_size: int) -> None:
    """Fail fast, in one line, when the backbone cannot take images of this size.

    Raises:
        ValueError: a forward pass on one image of ``image_size`` fails (inception_v3,
            for one, needs at least 75 px).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, image_size, image_size))
    except (RuntimeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise ValueError(f"--image-size {image_size} is too small for {model.backbone_name} "
                         f"({reason}); use a larger --image-size") from None
    finally:
        model.train(was_training)


def build_model(config: FitConfig, num_classes: int, log=print) -> ClassifierNet:
    """The network with its starting weights; the base is frozen when pretrained."""
    weights = config.pretrained_weights()
    model = ClassifierNet(config.backbone, num_classes, config.dropout, weights)
    check_input_size(model, config.image_size)
    if weights is None:
        log("warning: --weights none: random initialisation, so the whole network is trained "
            "from scratch (ImageNet or local weights usually do much better)")
        model.unfreeze_all()
    else:
        log(f"weights: {weights}; base frozen, training the new head first")
        model.freeze_base()
    return model


def build_checkpoint(model: ClassifierNet, config: FitConfig, class_names: list[str],
                     weights: list[float], epoch: int, stage: int, metrics: dict,
                     validation: LabelledImages | None = None) -> dict:
    """A self-describing checkpoint: everything to rebuild the model with weights_only,
    and the validation images (paths and classes) that chose it, so that ``evaluate``
    can pick its threshold on them when no ``--val`` is given."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": config.backbone,
        "num_classes": len(class_names),
        "dropout": config.dropout,
        "class_names": list(class_names),
        "normal_class": config.normal_class,
        "preprocess": asdict(config.preprocess_config()),
        "config": asdict(config),
        "class_weights": list(weights),
        "epoch": epoch,
        "stage": stage,
        "metrics": dict(metrics),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "val_paths": [str(Path(p).resolve()) for p in validation.paths] if validation else [],
        "val_class_index": validation.labels.tolist() if validation else [],
    }


@torch.no_grad()
def evaluate_loss(model: ClassifierNet, data: LabelledImages, loss_weights: torch.Tensor,
                  batch_size: int, device: torch.device, use_amp: bool,
                  dist: distributed.DistContext | None = None) -> tuple[float, float]:
    """Class-weighted cross-entropy and accuracy of ``data`` in eval mode.

    Under torchrun each rank takes every ``world_size``-th image and the sums are
    all-reduced, so every rank returns the same figures.
    """
    dist = dist or distributed.DistContext()
    model.eval()
    mine = torch.arange(dist.rank, len(data.labels), dist.world_size)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, weight, correct, n
    for batch_index in mine.split(batch_size):
        images = uint8_to_model(data.images[batch_index].to(device))
        labels = data.labels[batch_index].to(device)
        with autocast(device, use_amp):
            logits = model(images)
        logits = logits.float()
        totals[0] += F.cross_entropy(logits, labels, weight=loss_weights, reduction="sum")
        totals[1] += loss_weights[labels].sum()
        totals[2] += (logits.argmax(1) == labels).sum()
        totals[3] += len(labels)
    loss, weight, correct, count = dist.sum(totals).tolist()
    return loss / weight, correct / count


@dataclass
class RunState:
    """What carries over from epoch to epoch and from stage 1 to stage 2."""

    run_dir: Path
    writer: SummaryWriter | None  # rank 0 only
    epoch: int = 0
    best_loss: float = math.inf
    best_state: dict = field(default_factory=dict)
    on_epoch: Callable[[int, dict], None] | None = None  # (epoch, metrics), e.g. a pruner
    resume: dict | None = None  # the "resume" part of last.pt, to continue a stage

    @property
    def best_path(self) -> Path:
        return self.run_dir / "checkpoints" / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"


def train_stage(stage: int, epochs: int, lr: float, model: ClassifierNet, train: LabelledImages,
                val: LabelledImages, loss_weights: torch.Tensor, config: FitConfig,
                class_names: list[str], run: RunState, device: torch.device,
                dist: distributed.DistContext | None = None, progress: bool = True,
                log=print) -> None:
    """Train the currently trainable parameters for up to ``epochs`` epochs.

    Under torchrun the model is wrapped in DistributedDataParallel for this stage only
    (stage 2 trains other parameters); decisions (learning rate, early stopping) use
    all-reduced losses, so every rank takes the same ones.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    dist = dist or distributed.DistContext()
    use_amp = config.amp and device.type == "cuda"
    network = dist.wrap(model)  # model itself when not distributed
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=lr,
                                 weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience,
        min_lr=config.min_lr)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    rng = torch.Generator().manual_seed(config.seed * 1000 + stage)
    done, epochs_without_improvement = 0, 0
    if run.resume is not None and run.resume["stage"] == stage:  # continue this stage
        try:
            optimizer.load_state_dict(run.resume["optimizer"])
        except ValueError:  # its parameter groups differ from the layers trained now
            trained = (f"fine-tunes in stage 2 ({', '.join(model.last_block_names)})"
                       if stage == 2 else f"trains in stage {stage}")
            raise CheckpointError(f"{display_path(run.last_path)}: its optimiser trained "
                                  f"other layers than this version {trained}; start a new "
                                  "run") from None
        scheduler.load_state_dict(run.resume["scheduler"])
        rng.set_state(run.resume["rng"])
        done = run.resume["stage_epoch"]
        epochs_without_improvement = run.resume["epochs_without_improvement"]
        log(f"stage {stage}: resuming after epoch {done} of it")
    augment = config.augment_config()
    images = train.images.to(device)  # uint8, kept whole on the device
    labels = train.labels.to(device)
    count = len(labels)
    batch_size = min(config.batch_size, count)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    log(f"stage {stage}: up to {epochs} epoch(s) at lr {lr:g}, {trainable:,} trainable parameters")

    for stage_epoch in range(done + 1, epochs + 1):
        run.epoch += 1
        epoch_start = time.perf_counter()
        model.train()  # BatchNorm layers of frozen parts stay in eval mode
        order = torch.randperm(count, generator=rng)  # the same on every rank
        batches = dist.shard_batches(order, batch_size, drop_last=False)
        bar = tqdm(batches, desc=f"epoch {run.epoch} (stage {stage})", unit="batch",
                   disable=not (progress and dist.is_main), leave=False)
        running_loss, seen = 0.0, 0
        for batch_index in bar:
            batch = uint8_to_model(images[batch_index.to(device)])  # (B, 1, S, S) in [-1, 1]
            if config.augment:
                batch = augment_batch(batch, augment, rng)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, use_amp):
                logits = network(batch)
            loss = F.cross_entropy(logits.float(), labels[batch_index.to(device)],
                                   weight=loss_weights)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            # summed over ranks, so a non-finite loss on any rank stops every rank
            batch_loss = dist.sum(loss.detach().double() * len(batch_index)).item()
            batch_images = len(batch_index) * dist.world_size
            if not math.isfinite(batch_loss):
                raise TrainingDiverged(f"loss became non-finite at epoch {run.epoch}; the best "
                                       f"checkpoint is {display_path(run.best_path)}; try a "
                                       "lower --lr")
            running_loss += batch_loss
            seen += batch_images
            bar.set_postfix(loss=f"{batch_loss / batch_images:.4f}")

        train_loss = running_loss / max(seen, 1)
        val_loss, val_accuracy = evaluate_loss(model, val, loss_weights, batch_size, device,
                                               use_amp, dist)
        lr_now = optimizer.param_groups[0]["lr"]
        if run.writer is not None:
            run.writer.add_scalar("loss/train", train_loss, run.epoch)
            run.writer.add_scalar("loss/val", val_loss, run.epoch)
            run.writer.add_scalar("accuracy/val", val_accuracy, run.epoch)
            run.writer.add_scalar("lr", lr_now, run.epoch)
            run.writer.flush()
        scheduler.step(val_loss)

        metrics = {"train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_accuracy}
        state = build_checkpoint(model, config, class_names, loss_weights.tolist(), run.epoch,
                                 stage, metrics, val)
        improved = val_loss < run.best_loss
        if improved:
            run.best_loss, run.best_state = val_loss, state["state_dict"]
            if dist.is_main:
                save_checkpoint(state, run.best_path)
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
        stopping = bool(config.early_stopping_patience) and \
            epochs_without_improvement >= config.early_stopping_patience
        if dist.is_main:  # last.pt also carries what --resume needs to continue
            save_checkpoint({**state, "resume": {
                "stage": stage, "stage_epoch": stage_epoch,
                "stage_done": stopping or stage_epoch == epochs,
                "epochs_without_improvement": epochs_without_improvement,
                "best_loss": run.best_loss, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng.get_state(),
                "torch_rng": torch.get_rng_state()}}, run.last_path)
        if run.on_epoch is not None:
            run.on_epoch(run.epoch, metrics)  # may stop the run by raising
        log(f"epoch {run.epoch} (stage {stage}): train loss {train_loss:.4f}, val loss "
            f"{val_loss:.4f}, val accuracy {val_accuracy:.3f}, lr {lr_now:.2g}, "
            f"{time.perf_counter() - epoch_start:.0f} s{' (best so far)' if improved else ''}")
        if optimizer.param_groups[0]["lr"] < lr_now:
            log(f"validation loss plateaued: lr lowered to {optimizer.param_groups[0]['lr']:.2g}")
        if stopping:
            log(f"early stopping: no better validation loss for {epochs_without_improvement} "
                "epochs")
            break


# settings a resumed fit may change: more epochs of either stage, where it runs
RESUMABLE_SETTINGS = ("epochs", "fine_tune_epochs", "device", "amp")


def resume_fit_config(run_dir: str | os.PathLike, config_file: str | os.PathLike | None = None,
                      overrides: dict | None = None) -> FitConfig:
    """The config to resume a fit with: the one it was trained with, then ``config_file``
    and ``overrides`` on top (the built-in defaults where there is no checkpoint yet)."""
    last = Path(run_dir) / "checkpoints" / "last.pt"
    if not last.exists():
        return load_config(FitConfig, config_file, overrides)
    saved = load_checkpoint(last, expected_format=FORMAT).get("config", {})
    return resumed_config(FitConfig, saved, config_file, overrides,
                          f"{display_path(last)} + changes")


def fit(config: FitConfig, data_dir: str | os.PathLike, val_dir: str | os.PathLike,
        run_dir: str | os.PathLike, progress: bool = True, log=print,
        on_epoch: Callable[[int, dict], None] | None = None, resume: bool = False) -> Path:
    """Train the classifier and keep the checkpoint with the best validation loss.

    Args:
        config: training settings.
        data_dir: labelled training folder (one sub-folder per class).
        val_dir: labelled validation folder (early stopping, learning-rate schedule,
            best checkpoint).
        run_dir: output folder: ``checkpoints/best.pt`` and ``last.pt``, ``config.yaml``,
            TensorBoard event files.
        progress: show progress bars.
        log: where messages go (rank 0 only under torchrun).
        on_epoch: called after every epoch with (epoch, metrics such as ``val_loss``);
            what it raises stops the run (``classify tune`` prunes weak trials this way).
        resume: continue from ``run_dir/checkpoints/last.pt`` where it stopped (weights,
            optimiser, schedule, random states, best loss); settings other than
            :data:`RESUMABLE_SETTINGS` must be the saved ones.

    Returns:
        Path of the best checkpoint (``run_dir/checkpoints/best.pt``).

    Raises:
        DataError: unusable folders.
        WeightsUnavailable: ImageNet weights cannot be had offline, or a weights file
            does not fit.
        TrainingDiverged: the loss became NaN or infinite.
    """
    run_dir = Path(run_dir)
    dist = distributed.setup()
    log = log if dist.is_main else (lambda *a, **k: None)
    device = dist.device if dist.world_size > 1 else resolve_device(config.device)
    torch.manual_seed(config.seed)  # the same initial head on every rank
    log(f"device: {device}"
        f"{f', {dist.world_size} processes' if dist.world_size > 1 else ''}")
    log("config:\n" + format_config(config))

    train_folder = limit_per_class(scan_labelled_folder(data_dir, config.normal_class),
                                   config.max_images)
    val_folder = limit_per_class(scan_labelled_folder(val_dir, config.normal_class),
                                 config.max_images)
    refuse_shared_files(train_folder.paths, val_folder.paths, display_path(data_dir),
                        display_path(val_dir), "early stopping and the best checkpoint "
                        "would be chosen on training images")
    class_names = train_folder.class_names
    if len(class_names) < 2:
        raise DataError(f"{display_path(data_dir)}: needs at least two class folders "
                        f"(found {', '.join(class_names)})")
    fit_start = time.perf_counter()
    # fails fast on bad weights; channels-last: 1.3x faster convolutions on CPU
    model = build_model(config, len(class_names), log).to(device, memory_format=torch.channels_last)
    progress_here = progress and dist.is_main
    train = load_labelled(train_folder, class_names, config, "training", progress_here, log)
    val = load_labelled(val_folder, class_names, config, "validation", progress_here, log)
    weights = class_weights(train.labels.numpy(), len(class_names))
    log("class weights (inverse frequency): "
        + ", ".join(f"{name} {w:.3f}" for name, w in zip(class_names, weights)))

    loss_weights = torch.tensor(weights, dtype=torch.float32, device=device)
    if dist.is_main:
        save_config(config, run_dir / "config.yaml")
    run = RunState(run_dir, SummaryWriter(str(run_dir)) if dist.is_main else None,
                   on_epoch=on_epoch)
    if resume and run.last_path.exists():
        resume_from(run, model, config, log)
    where = run.resume or {"stage": 1, "stage_done": False}
    try:
        if where["stage"] == 1 and not where["stage_done"]:
            train_stage(1, config.epochs, config.lr, model, train, val, loss_weights, config,
                        class_names, run, device, dist, progress, log)
        fine_tune = config.fine_tune_epochs > 0 and config.pretrained_weights() is not None
        if config.fine_tune_epochs > 0 and not fine_tune:
            log("--weights none: the whole network trained in stage 1, so there is no "
                "fine-tuning stage")
        if fine_tune and not (where["stage"] == 2 and where["stage_done"]):
            if run.best_state and where["stage"] == 1:  # from the best stage-1 weights
                model.load_state_dict(run.best_state)
            model.unfreeze_last_block()
            log(f"fine-tuning: unfroze {', '.join(model.last_block_names)}")
            train_stage(2, config.fine_tune_epochs, config.fine_tune_lr, model, train, val,
                        loss_weights, config, class_names, run, device, dist, progress, log)
    finally:
        if run.writer is not None:
            run.writer.close()
    if run.epoch == 0:
        raise DataError("no epochs were run (epochs is 0, and fine_tune_epochs is 0 or "
                        "--weights none has no fine-tuning stage)")
    if not run.best_path.exists():
        raise DataError(f"{display_path(run_dir)}: no best checkpoint was written")
    if dist.world_size > 1:
        dist.check_replicas_identical([model])
        log(f"weights identical on all {dist.world_size} ranks")
    dist.barrier()  # rank 0 has written the checkpoints
    dist.teardown()
    log(f"best validation loss {run.best_loss:.4f}: {display_path(run.best_path)} "
        f"({time.perf_counter() - fit_start:.0f} s from loading the images to the last epoch)")
    return run.best_path


def resume_from(run: RunState, model: ClassifierNet, config: FitConfig, log=print) -> None:
    """Load ``last.pt`` into ``model`` and ``run`` (epoch, best loss and weights, and the
    stage's optimiser, schedule and random states), refusing other settings.

    Raises:
        ConfigError: a setting outside :data:`RESUMABLE_SETTINGS` differs.
        CheckpointError: the checkpoint holds no resume state (an older version's).
    """
    previous = load_checkpoint(run.last_path, expected_format=FORMAT)
    differ = changed_settings(previous.get("config", {}), config, RESUMABLE_SETTINGS)
    if differ:
        raise ConfigError(f"{display_path(run.last_path)}: cannot resume with other settings ("
                          + "; ".join(differ) + "); only " + ", ".join(RESUMABLE_SETTINGS)
                          + " may change")
    if previous.get("resume") is None:
        raise CheckpointError(f"{display_path(run.last_path)}: written by an earlier version "
                              "without what resuming needs; start a new run")
    if previous["resume"]["stage"] == 2 and config.pretrained_weights() is not None:
        model.unfreeze_last_block()  # so the stage-2 optimiser state fits
    model.load_state_dict(previous["state_dict"])
    run.resume, run.epoch = previous["resume"], int(previous["epoch"])
    run.best_loss = run.resume["best_loss"]
    torch.set_rng_state(run.resume["torch_rng"])  # dropout draws go on as if never stopped
    if run.best_path.exists():
        run.best_state = load_checkpoint(run.best_path, expected_format=FORMAT)["state_dict"]
    log(f"resuming from {display_path(run.last_path)} after epoch {run.epoch} "
        f"(stage {run.resume['stage']})")
