"""A training run on normal films: its config, its held-out normals, its checkpoint, and
the families it trains in turn: the opacity critic (``anomaly.families.critic.train``),
then the DCGAN and its f-AnoGAN encoder (``anomaly.families.dcgan.train``); then the
score statistics of the held-out normals that every scorer reads.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from anomaly import distributed
from anomaly.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    load_checkpoint,
    save_checkpoint,
)
from anomaly.config import (
    ConfigError,
    changed_settings,
    format_config,
    load_config,
    resumed_config,
    save_config,
)
from anomaly.data import DataError, LoadedImages, find_images, load_images, uint8_to_model
from anomaly.device import cpu_bf16_supported, resolve_device
from anomaly.families.critic.train import CriticConfig, train_critic
from anomaly.families.dcgan.networks import (
    GANArchitecture,
)
from anomaly.io import display_path
from anomaly.lungs import lung_field_prior
from anomaly.monitor import watched_images
from anomaly.preprocess import PreprocessConfig


@dataclass
class TrainConfig:
    """Everything ``anomaly train-gan`` needs; YAML keys are these field names.

    The defaults are the recommended settings, the same as ``configs/chest_xray.yaml``:
    first the opacity critic at 128 px (``critic_*``; it scores by default), then a plain
    DCGAN at the same size with its f-AnoGAN encoder (``epochs``, ``encoder_epochs``), for
    latent search and reconstruction scores. ``critic_epochs: 0`` trains the DCGAN alone
    (``configs/dcgan64.yaml``), ``epochs: 0`` the critic alone.
    """

    # preprocessing (stored in the checkpoint, reused by scoring)
    image_size: int = 128
    clahe: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    clahe_working_size: int = 256
    resize: str = "squash"
    # architecture
    latent_dim: int = 100
    generator_width: int = 32
    discriminator_width: int = 32
    max_channels: int = 512
    spectral_norm: bool = True
    # the opacity critic (anomaly.families.critic), trained first: the default scorer
    critic_epochs: int = 30
    critic_batch_size: int = 32
    critic_lr: float = 2e-3  # peak of the one-cycle schedule (AdamW)
    critic_weight_decay: float = 1e-4
    critic_width: int = 32
    critic_gamma_range: list[float] = field(default_factory=lambda: [0.8, 1.25])
    critic_shift_fraction: float = 1 / 16
    critic_opacity_prior: str = "lung"  # or "wide": reaching the lung bases
    critic_synthesis: str = "blobs"  # or "patches" (after AnatPaste), "mixed"
    critic_scale_range: list[float] = field(default_factory=lambda: [0.85, 1.15])  # zoom
    critic_rotation_degrees: float = 8.0  # largest random tilt either way
    critic_score_views: int = 1  # 1: the film alone; 2: with its mirror (twice the work)
    critic_map_width: int = 32  # the map head (opacity per pixel); 0: none, Grad-CAM heat
    critic_map_weight: float = 1.0  # its loss (pixel BCE + Dice) beside the film's
    critic_map_mask_level: float = 0.1  # blend weight that counts as opacity in its target
    critic_map_detach: bool = True  # the head learns from the features, never changes them
    # GAN optimisation (epochs: 0 trains no DCGAN)
    epochs: int = 25
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    label_smoothing: float = 0.1
    flip: bool = True
    # DiffAugment: brightness, contrast, translation of D's real and fake inputs
    diff_augment: bool = True
    # encoder (f-AnoGAN izi_f) trained after the GAN; 0 skips it
    encoder_epochs: int = 10
    encoder_lr: float = 1e-4
    encoder_kappa: float = 1.0
    # held-out normal images for fitting score statistics (never trained on), split by
    # patient: the first capture group of this pattern (searched in the file name) is the
    # patient id (the Kermany names: IM-0123-0001, NORMAL2-IM-0123-0001, person12_...);
    # files it does not match, or all files when it is empty, are split one by one
    holdout_fraction: float = 0.05
    holdout_patient_pattern: str = r"^((?:NORMAL\d+-)?IM-\d+|person\d+)[-_]"
    # run
    device: str = "auto"
    amp: bool = True  # float16 mixed precision on CUDA
    cpu_bf16: bool = False  # bfloat16 autocast on CPUs with AVX512-BF16/AMX (about 2x faster)
    seed: int = 0
    max_images: int | None = None
    cache_dir: str | None = None
    sample_count: int = 64

    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing part of this config."""
        return PreprocessConfig(self.image_size, self.clahe, self.clahe_clip_limit,
                                self.clahe_tile_grid, self.clahe_working_size, self.resize)

    def architecture(self) -> GANArchitecture:
        """The architecture part of this config."""
        return GANArchitecture(self.image_size, 1, self.latent_dim, self.generator_width,
                               self.discriminator_width, self.max_channels, self.spectral_norm)

    def critic_config(self) -> CriticConfig:
        """The critic's part of this config: each ``critic_<name>`` key as ``<name>``, the
        run's seed, the ranges as tuples."""
        values = {f.name: getattr(self, f"critic_{f.name}") for f in fields(CriticConfig)
                  if f.name != "seed"}
        return CriticConfig(**{**values, "seed": self.seed,
                               "gamma_range": tuple(self.critic_gamma_range),
                               "scale_range": tuple(self.critic_scale_range)})

    def __post_init__(self) -> None:
        if self.epochs <= 0 and self.critic_epochs <= 0:
            raise ValueError("epochs: 0 and critic_epochs: 0 train nothing")
        for name in ("critic_gamma_range", "critic_scale_range"):
            values = getattr(self, name)
            if len(values) != 2 or not 0 < values[0] <= values[1]:
                raise ValueError(f"{name} must be [low, high] with 0 < low <= high")


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """Where a run keeps its latest checkpoint."""
    return Path(run_dir) / "checkpoints" / "last.pt"


def patient_id(path: Path, pattern: str) -> str | None:
    """The patient id in a file name by ``pattern`` (its first group), or None."""
    match = re.search(pattern, path.name) if pattern else None
    if match is None:
        return None
    return match.group(1) if match.groups() else match.group(0)


def split_holdout(paths: list[Path], fraction: float, seed: int, patient_pattern: str = ""
                  ) -> tuple[list[Path], list[Path], int]:
    """Split files into (train, holdout) deterministically by seed, whole patients at once.

    Every film of a patient (by :func:`patient_id`) lands on the same side; files without
    an id are their own group. About ``fraction`` of the files are held out (none for
    fewer than 20 files).

    Returns:
        (training files, held-out files, number of held-out files grouped by patient id).
    """
    target = int(round(len(paths) * fraction)) if len(paths) >= 20 else 0
    groups: dict[str, list[int]] = {}
    for index, path in enumerate(paths):
        key = patient_id(path, patient_pattern)
        groups.setdefault(f"patient:{key}" if key else f"file:{index}", []).append(index)
    names = list(groups)
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    holdout: list[int] = []
    for group in order:
        if len(holdout) >= target:
            break
        holdout += groups[names[group]]
    held = set(holdout)
    by_patient = sum(len(groups[n]) for n in names if n.startswith("patient:")
                     and groups[n][0] in held)
    return ([p for i, p in enumerate(paths) if i not in held],
            [p for i, p in enumerate(paths) if i in held], by_patient)


def prepare_training_images(config: TrainConfig, data_dir: str | os.PathLike,
                            log=print, progress: bool = True
                            ) -> tuple[LoadedImages, list[Path], int]:
    """Find, split and load the training images; report skipped files.

    Returns:
        The loaded training images, the held-out normal file paths, and how many of
        those were split by patient id (see :func:`split_holdout`).
    """
    paths = find_images(data_dir)
    if config.max_images:
        paths = paths[: config.max_images]
    train_paths, holdout_paths, by_patient = split_holdout(
        paths, config.holdout_fraction, config.seed, config.holdout_patient_pattern)
    loaded = load_images(train_paths, config.preprocess_config(), cache_dir=config.cache_dir,
                         progress=progress and distributed.is_main())
    for path, reason in loaded.failures:
        log(f"skipped {display_path(path)}: {reason}")
    if len(loaded.paths) < 2:
        raise DataError(f"{display_path(data_dir)}: fewer than 2 readable training images")
    log(f"training on {len(loaded.paths)} images, {len(holdout_paths)} held out for score "
        f"statistics ({by_patient} of them split by patient id, the rest image by image), "
        f"{len(loaded.failures)} skipped")
    return loaded, holdout_paths, by_patient


def run_state(config: TrainConfig, holdout: list[Path], holdout_by_patient: int,
              data_dir: str | os.PathLike, lung_prior: torch.Tensor) -> dict:
    """The part of a checkpoint every family shares: what the run was trained on and how
    its images are preprocessed. Each family adds its own keys (:func:`family_state` for
    the DCGAN, ``"critic"`` for the critic) and ``families`` lists those it holds."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "families": [],
        "preprocess": asdict(config.preprocess_config()),
        "train_config": asdict(config),
        "holdout_paths": [str(p) for p in holdout],
        "holdout_by_patient": holdout_by_patient,  # the rest were split image by image
        "data_dir": str(Path(data_dir).resolve()),
        "lung_prior": lung_prior.cpu(),
        "generator_trained": False,
    }


def with_family(state: dict, name: str, part: dict) -> dict:
    """``state`` with a family's part added (the critic's under its name, the DCGAN's at
    the top level, where checkpoints of format 1 keep it) and listed in ``families``."""
    merged = {**state, name: part} if name != "dcgan" else {**state, **part}
    merged["families"] = sorted(set(state.get("families", [])) | {name})
    return merged


# settings a resumed run may change: more DCGAN or encoder epochs, where and how fast it
# runs; every other one changes what was trained (a seed, a hold-out fraction or a file
# limit would even re-split the held-out normals)
RESUMABLE_SETTINGS = ("epochs", "encoder_epochs", "device", "amp", "cpu_bf16", "cache_dir",
                      "sample_count")


def resume_config(run_dir: str | os.PathLike, config_file: str | os.PathLike | None = None,
                  overrides: dict | None = None) -> TrainConfig:
    """The config to resume a run with: the one it was trained with, then ``config_file``
    and ``overrides`` on top (which :func:`check_resume_settings` then checks).

    A run without a checkpoint yet gets the built-in defaults instead.
    """
    last = checkpoint_path(run_dir)
    if not last.exists():
        return load_config(TrainConfig, config_file, overrides)
    return resumed_config(TrainConfig, load_checkpoint(last).get("train_config", {}),
                          config_file, overrides, f"{display_path(last)} + changes")


def check_resume_settings(previous: dict, config: TrainConfig, data_dir: str | os.PathLike,
                          path: Path) -> None:
    """Refuse to resume with settings that change what the checkpoint was trained with.

    Raises:
        ConfigError: one line naming each such setting, its saved and its new value.
    """
    differ = changed_settings(previous.get("train_config", {}), config, RESUMABLE_SETTINGS)
    trained_on = previous.get("data_dir")
    if trained_on and Path(trained_on) != Path(data_dir).resolve():
        differ.append(f"data {trained_on} there, {Path(data_dir).resolve()} now")
    if differ:
        raise ConfigError(f"{display_path(path)}: cannot resume with other settings ("
                          + "; ".join(differ) + "); only "
                          + ", ".join(RESUMABLE_SETTINGS) + " may change")


def mixed_precision(config: TrainConfig, device: torch.device) -> bool:
    """Whether to train under autocast: float16 on CUDA (``amp``), bfloat16 on CPU
    (``cpu_bf16``, only where the CPU supports it natively)."""
    if device.type == "cuda":
        return config.amp
    return config.cpu_bf16 and device.type == "cpu" and cpu_bf16_supported()


def train_gan(config: TrainConfig, data_dir: str | os.PathLike, run_dir: str | os.PathLike,
              resume: bool = False, progress: bool = True, log=print,
              overwrite: bool = False) -> Path:
    """Train a run on the normal images under ``data_dir``: the opacity critic
    (``critic_epochs``), then the DCGAN (``epochs``) and its encoder (``encoder_epochs``).

    Each part starts from its own seed, so the critic does not depend on whether a
    DCGAN follows it. Afterwards the score statistics of the held-out normals are stored.

    Args:
        config: training settings.
        data_dir: folder of normal images (found recursively).
        run_dir: output folder: ``checkpoints/last.pt``, ``config.yaml``, TensorBoard events.
        resume: continue from ``run_dir``'s last checkpoint (each part where it stopped).
        progress: show a progress bar.
        log: where messages go (rank 0 only under torchrun).
        overwrite: replace a trained run already in ``run_dir`` (refused otherwise,
            unless ``resume``).

    Returns:
        Path of the final checkpoint.

    Raises:
        TrainingDiverged: a loss became NaN or infinite.
        ConfigError: ``run_dir`` already holds a run and neither ``resume`` nor
            ``overwrite`` is set.
    """
    run_dir = Path(run_dir)
    if not resume and not overwrite and checkpoint_path(run_dir).exists():
        raise ConfigError(f"{display_path(checkpoint_path(run_dir))}: this run is already "
                          "trained; pass --resume to continue it or --overwrite to replace it")
    dist = distributed.setup()
    log = log if dist.is_main else (lambda *a, **k: None)
    device = dist.device if dist.world_size > 1 else resolve_device(config.device)
    use_amp = mixed_precision(config, device)
    log(f"device: {device}{' with mixed precision' if use_amp else ''}"
        f"{f', {dist.world_size} processes' if dist.world_size > 1 else ''}")
    log("config:\n" + format_config(config))

    last = checkpoint_path(run_dir)
    previous = load_checkpoint(last) if resume and last.exists() else None
    if previous is not None:
        check_resume_settings(previous, config, data_dir, last)
    if resume:
        log(f"resuming from {display_path(last)}" if previous else
            f"no checkpoint at {display_path(last)}; starting a new run")
    loaded, holdout, holdout_by_patient = prepare_training_images(config, data_dir, log,
                                                                  progress)
    images = loaded.images.to(device)  # (N, 1, S, S) uint8, kept whole on the device
    lung_prior = lung_field_prior(loaded.images)  # from the training normals only
    state = run_state(config, holdout, holdout_by_patient, data_dir, lung_prior)
    if previous is not None:  # keep what each family has trained so far
        state = {**previous, **{k: v for k, v in state.items() if k != "families"}}
        state["generator_trained"] = previous.get("generator_trained", False)
    if dist.is_main:
        save_config(config, run_dir / "config.yaml")
    writer = SummaryWriter(str(run_dir)) if dist.is_main else None
    if writer is not None and previous is None:
        writer.add_image("real", make_grid(uint8_to_model(loaded.images[:64]), nrow=8,
                                           normalize=True, value_range=(-1, 1)), 0)

    if config.critic_epochs > 0:
        done = state.get("critic", {})
        if done.get("density") is None or done.get("epoch", 0) < config.critic_epochs:
            def save_critic(part: dict) -> None:
                save_checkpoint(with_family(state, "critic", part), last)

            watched = watched_images(holdout, config.preprocess_config(), device) \
                if dist.is_main else None
            part = train_critic(config.critic_config(), images, lung_prior, dist, device,
                                use_amp, save_critic, resume_state=done or None,
                                writer=writer, watched=watched, progress=progress, log=log)
            state = with_family(state, "critic", part)
            if dist.is_main:
                save_checkpoint(state, last)
    if config.epochs > 0:
        from anomaly.families.dcgan.train import train_dcgan

        state = train_dcgan(config, images, state, last, dist, device, use_amp, writer,
                            progress, log)
    if writer is not None:
        writer.close()
    if dist.is_main and not last.exists():  # resumed a finished run: nothing new to save
        raise DataError(f"{display_path(run_dir)}: no epochs were run")
    if dist.is_main and config.epochs > 0:
        from anomaly.families.dcgan.train import fit_feature_density, train_encoder

        fit_feature_density(last, images, device, config.batch_size, log=log)
    if dist.is_main and config.epochs > 0 and config.encoder_epochs > 0:
        train_encoder(last, config.encoder_epochs, data_dir=data_dir, progress=progress, log=log)
    elif dist.is_main:
        fit_score_statistics(last, log=log)
    dist.barrier()
    dist.teardown()
    return last


def _score_with_heat_maxima(scorer, paths: list[Path]):
    """The scores of ``paths`` and each film's heat-map maximum (for its regions)."""
    maxima: list[float] = []

    def keep_maxima(batch_paths, scores) -> None:
        maxima.extend(scores.heatmaps.flatten(1).amax(1).tolist())

    result = scorer.score_paths(paths, progress=False, on_batch=keep_maxima, heatmaps=True)
    return result, maxima


def fit_score_statistics(model: str | os.PathLike, log=print) -> None:
    """Score the run's held-out normal images with the default mode and store them.

    The components of normal images the GAN never trained on standardise the ``fused``
    score, and ``anomaly evaluate`` uses the 95% quantile of their scores as the
    threshold when no labelled validation folder is given. Their heat maps' maxima give
    each mode's region threshold (:func:`anomaly.regions.fit_region_threshold`).
    """
    from anomaly.families import ONE_PASS_MODES
    from anomaly.regions import fit_region_threshold
    from anomaly.score import Scorer, available_modes, default_mode

    path = Path(model)
    path = checkpoint_path(path) if path.is_dir() else path
    state = load_checkpoint(path)
    holdout = [Path(p) for p in state.get("holdout_paths", [])]
    if not holdout:
        return
    default = default_mode(state)  # search modes score the held-out images on demand
    modes = [m for m in available_modes(state) if m in ONE_PASS_MODES or m == default]
    state["score_stats"] = {}
    for mode in modes:
        scorer = Scorer.from_state(state, mode=mode)
        result, maxima = _score_with_heat_maxima(scorer, holdout)
        thresholds = {}
        if len(holdout) >= 2:  # a quantile of one film's maximum would mean nothing
            thresholds[scorer.heat_name] = fit_region_threshold(maxima)
            for heat in getattr(scorer.family, "heats", ()):  # the family's other heat maps
                if heat not in thresholds:
                    other = Scorer.from_state(state, mode=mode, heat=heat)
                    thresholds[heat] = fit_region_threshold(_score_with_heat_maxima(
                        other, holdout)[1])
        else:
            log("only one held-out normal image: no region threshold (score --regions "
                "will refuse this run)")
        state["score_stats"][mode] = {
            **result.statistics(), **scorer.settings(), "components": result.components(),
            "region_thresholds": thresholds}
    save_checkpoint(state, path)
    log(f"fitted score statistics on {len(holdout)} held-out normal images for modes: "
        f"{', '.join(modes)}")


DCGAN_TRAINING = ("train_dcgan", "train_encoder", "fit_feature_density", "family_state")


def __getattr__(name: str):
    """The DCGAN's training functions, which live in its family folder
    (:mod:`anomaly.families.dcgan.train`), under their former names here."""
    if name in DCGAN_TRAINING:
        from anomaly.families.dcgan import train as dcgan_train

        return getattr(dcgan_train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
