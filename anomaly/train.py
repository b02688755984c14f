"""A training run on normal films: its config, its held-out normals, its checkpoint, and
the families it trains in turn (``families:`` in the config; by default every registered
one: the opacity critic, then the DCGAN and its f-AnoGAN encoder), each through its own
training entry (:class:`anomaly.families.base.TrainingRun`); then the score statistics of
the held-out normals that every scorer reads.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

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
    from_dict,
    load_config,
    resumed_config,
    save_config,
)
from anomaly.data import (
    DataError,
    LoadedImages,
    find_images,
    load_images,
    refuse_labelled_folder,
    uint8_to_model,
)
from anomaly.device import cpu_bf16_supported, resolve_device
from anomaly.families import FAMILIES
from anomaly.families.base import TrainingRun
from anomaly.io import display_path
from anomaly.lungs import lung_field_prior
from anomaly.preprocess import PreprocessConfig


@dataclass
class RunSettings:
    """The settings every family shares: preprocessing, the held-out normals, the run.

    Attributes:
        image_size, clahe, clahe_clip_limit, clahe_tile_grid, clahe_working_size, resize:
            preprocessing (:class:`anomaly.preprocess.PreprocessConfig`), stored in the
            checkpoint and reused by scoring.
        holdout_fraction: share of the normal films held out (never trained on) to fit
            the score statistics, split by patient: the first capture group of
            ``holdout_patient_pattern`` (searched in the file name) is the patient id (the
            Kermany names: IM-0123-0001, NORMAL2-IM-0123-0001, person12_...); files it
            does not match, or all files when it is empty, are split one by one.
        device: ``auto``, ``cpu``, ``cuda``...; amp: float16 mixed precision on CUDA;
            cpu_bf16: bfloat16 autocast on CPUs with AVX512-BF16/AMX (about 2x faster).
        seed: the run's seed; each family starts its own stream from it.
        max_images: use only the first N files (a quick try); cache_dir: keep the
            preprocessed films on disk there.
    """

    image_size: int = 128
    clahe: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    clahe_working_size: int = 256
    resize: str = "squash"
    holdout_fraction: float = 0.05
    holdout_patient_pattern: str = r"^((?:NORMAL\d+-)?IM-\d+|person\d+)[-_]"
    device: str = "auto"
    amp: bool = True
    cpu_bf16: bool = False
    seed: int = 0
    max_images: int | None = None
    cache_dir: str | None = None


SHARED_KEYS = tuple(f.name for f in fields(RunSettings))


def _legacy_target(key: str) -> tuple[str, str] | None:
    """(family, dotted section key) of a flat key of a config written before sections."""
    for name, module in FAMILIES.items():
        target = getattr(module, "LEGACY_KEYS", {}).get(key)
        if target is not None:
            return name, target
    return None


def _set_dotted(values: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for parent in parents:
        values = values.setdefault(parent, {})
    values[last] = value


def _deep_update(values: dict, update: Mapping) -> dict:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(values.get(key), dict):
            _deep_update(values[key], value)
        else:
            values[key] = dict(value) if isinstance(value, Mapping) else value
    return values


def normalise_config(values: Mapping[str, Any], source: str = "config",
                     drop_unknown: bool = False) -> dict:
    """A config mapping in sections: shared keys and ``families`` at the top, each
    family's settings under its name. The flat keys of configs (and checkpoints) written
    before sections move into their family's section (``critic_epochs`` to
    ``critic.epochs``, ``encoder_epochs`` to ``dcgan.encoder.epochs``); a family's own
    section wins over them.

    Raises:
        ConfigError: an unknown key (unless ``drop_unknown``) or a section that is not a
            mapping, naming ``source``.
    """
    shared: dict[str, Any] = {}
    legacy: dict[str, dict] = {}
    sections: dict[str, dict] = {}
    unknown = []
    for key, value in values.items():
        if key in SHARED_KEYS or key == "families":
            shared[key] = value
        elif key in FAMILIES:
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: section '{key}' must be a mapping of its "
                                  f"settings, not {value!r}")
            _deep_update(sections.setdefault(key, {}), value)
        elif (target := _legacy_target(key)) is not None:
            _set_dotted(legacy.setdefault(target[0], {}), target[1], value)
        else:
            unknown.append(key)
    if unknown and not drop_unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; known "
                          f"keys: {', '.join(SHARED_KEYS)}, families, and a section per "
                          f"family ({', '.join(FAMILIES)})")
    for name in set(legacy) | set(sections):
        shared[name] = _deep_update(legacy.get(name, {}), sections.get(name, {}))
    if drop_unknown:
        for name in FAMILIES:
            if name in shared:
                shared[name] = _known_fields(FAMILIES[name].CONFIG, shared[name])
    return shared


def _known_fields(cls: type, values: Mapping) -> dict:
    """``values`` without the keys ``cls`` (a dataclass, nested ones too) does not know."""
    known = {f.name: f for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    return {key: (_known_fields(hints[key], value) if dataclasses.is_dataclass(hints[key])
                  and isinstance(value, Mapping) else value)
            for key, value in values.items() if key in known}


def _plain(values: Any) -> Any:
    """Nested data with tuples as lists (YAML's safe form)."""
    if isinstance(values, dict):
        return {key: _plain(value) for key, value in values.items()}
    return [_plain(v) for v in values] if isinstance(values, (list, tuple)) else values


class TrainConfig:
    """Everything ``anomaly train-gan`` needs, in sections: the shared settings
    (:class:`RunSettings`), ``families`` (which families the run trains, in order; all
    registered ones by default) and one section per family, its config class (the
    critic's :class:`~anomaly.families.critic.config.CriticConfig`, the DCGAN's
    :class:`~anomaly.families.dcgan.config.DCGANConfig`), each default written there once.

    Built from keyword arguments or YAML keys of the same form: ``TrainConfig(image_size=
    64, critic={"epochs": 5})``; the flat keys of configs written before sections still
    work (``critic_epochs=5``, ``epochs=0``), as do the ``train-gan`` flags made from them.
    A family listed but with 0 epochs (``epochs: 0`` for the DCGAN) is not trained.
    """

    def __init__(self, **values: Any):
        values = normalise_config(values, "TrainConfig")
        families = values.pop("families", None)
        sections = {name: values.pop(name) for name in list(values) if name in FAMILIES}
        self.settings = from_dict(RunSettings, values, "TrainConfig")
        self.families = list(FAMILIES) if families is None else list(families)
        unknown = [name for name in self.families if name not in FAMILIES]
        if unknown or not self.families:
            raise ConfigError(f"families must name registered families ({', '.join(FAMILIES)})"
                              f", not {families!r}")
        self.sections = {name: from_dict(module.CONFIG, sections.get(name, {}), name)
                         for name, module in FAMILIES.items()}
        if not self.trained_families():
            raise ConfigError("this config would train nothing (each family it lists has "
                              "0 epochs)")

    @classmethod
    def from_sources(cls, sources: Sequence[tuple[Mapping[str, Any], str]]) -> "TrainConfig":
        """A config from mappings, each later one winning key by key (sections merged),
        each named by its source in errors."""
        merged: dict[str, Any] = {}
        for mapping, source in sources:
            _deep_update(merged, normalise_config(mapping, source))
        try:
            return cls(**merged)
        except ConfigError as err:
            raise ConfigError(f"{' + '.join(s for _, s in sources)}: {err}") from None

    @staticmethod
    def known_part(saved: Mapping[str, Any], source: str = "checkpoint") -> dict:
        """A saved config without the keys this version no longer knows, and with the
        settings added since it was saved at what its run did before they existed (each
        family's ``SAVED_BEFORE``), not at today's defaults; ``source`` names it in
        errors."""
        known = normalise_config(saved, source, drop_unknown=True)
        for name, module in FAMILIES.items():
            if isinstance(known.get(name), dict):
                known[name] = {**getattr(module, "SAVED_BEFORE", {}), **known[name]}
        return known

    def section(self, name: str) -> Any:
        """The settings of family ``name``."""
        return self.sections[name]

    def trained_families(self) -> list[str]:
        """The listed families this config trains (those with epochs), in order."""
        return [name for name in self.families
                if FAMILIES[name].trains(self.sections[name])]

    def replace(self, **values: Any) -> "TrainConfig":
        """A copy with ``values`` (in either form) on top."""
        return TrainConfig.from_sources([(self.to_dict(), "config"), (values, "changes")])

    def to_dict(self) -> dict:
        """The config as YAML keys: shared settings, ``families``, then the sections."""
        return _plain({**dataclasses.asdict(self.settings), "families": list(self.families),
                       **{name: dataclasses.asdict(section)
                          for name, section in self.sections.items()}})

    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing part of this config."""
        s = self.settings
        return PreprocessConfig(s.image_size, s.clahe, s.clahe_clip_limit, s.clahe_tile_grid,
                                s.clahe_working_size, s.resize)

    def __getattr__(self, name: str) -> Any:
        if name in ("settings", "sections", "families"):  # not built yet
            raise AttributeError(name)
        if name in SHARED_KEYS:
            return getattr(self.settings, name)
        target = _legacy_target(name)  # a flat key of older configs, read from its section
        if target is not None:
            value = self.sections[target[0]]
            for part in target[1].split("."):
                value = getattr(value, part)
            return value
        raise AttributeError(f"TrainConfig has no setting {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"TrainConfig({self.to_dict()!r})"


def dry_run_config(config: TrainConfig) -> TrainConfig:
    """``train-gan --dry-run``: each family's own short version of its section (at most
    one epoch), on at most 64 images."""
    dry = TrainConfig.from_sources([(config.to_dict(), "config")])
    dry.sections = {name: getattr(FAMILIES[name], "dry_run", lambda s: s)(section)
                    for name, section in config.sections.items()}
    dry.settings = dataclasses.replace(config.settings,
                                       max_images=min(config.max_images or 64, 64))
    return dry


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
    refuse_labelled_folder(data_dir)
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
    its images are preprocessed. Each family adds its own part
    (:func:`anomaly.families.with_part`) and ``families`` lists those it holds."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "families": [],
        "preprocess": asdict(config.preprocess_config()),
        "train_config": config.to_dict(),
        # absolute: a resume or a score from another working directory still finds them
        "holdout_paths": [str(Path(p).resolve()) for p in holdout],
        "holdout_by_patient": holdout_by_patient,  # the rest were split image by image
        "data_dir": str(Path(data_dir).resolve()),
        "lung_prior": lung_prior.cpu(),
    }


SHARED_RESUMABLE = ("families", "device", "amp", "cpu_bf16", "cache_dir")


def resumable_settings() -> tuple[str, ...]:
    """Settings a resumed run may change: where and how fast it runs, which families it
    trains, and what each family allows (more DCGAN or encoder epochs); every other one
    changes what was trained (a seed, a hold-out fraction or a file limit would even
    re-split the held-out normals)."""
    return SHARED_RESUMABLE + tuple(f"{name}.{key}" for name, module in FAMILIES.items()
                                    for key in getattr(module, "RESUMABLE", ()))


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
    saved = TrainConfig.known_part(previous.get("train_config", {}), display_path(path))
    allowed = resumable_settings()
    differ = changed_settings(saved, config, allowed)
    trained_on = previous.get("data_dir")
    if trained_on and Path(trained_on) != Path(data_dir).resolve():
        differ.append(f"data {trained_on} there, {Path(data_dir).resolve()} now")
    if differ:
        raise ConfigError(f"{display_path(path)}: cannot resume with other settings ("
                          + "; ".join(differ) + "); only "
                          + ", ".join(allowed) + " may change")


def mixed_precision(config: TrainConfig, device: torch.device) -> bool:
    """Whether to train under autocast: float16 on CUDA (``amp``), bfloat16 on CPU
    (``cpu_bf16``, only where the CPU supports it natively)."""
    if device.type == "cuda":
        return config.amp
    return config.cpu_bf16 and device.type == "cpu" and cpu_bf16_supported()


def train_run(config: TrainConfig, data_dir: str | os.PathLike, run_dir: str | os.PathLike,
              resume: bool = False, progress: bool = True, log=print,
              overwrite: bool = False) -> Path:
    """Train a run on the normal images under ``data_dir``: each family the config trains
    (:meth:`TrainConfig.trained_families`: by default the opacity critic, then the DCGAN
    and its encoder), in turn, through its training entry.

    Each family starts from its own seed, so the critic does not depend on whether a
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
    if dist.is_main:
        save_config(config, run_dir / "config.yaml")
    writer = SummaryWriter(str(run_dir)) if dist.is_main else None
    if writer is not None and previous is None:
        writer.add_image("real", make_grid(uint8_to_model(loaded.images[:64]), nrow=8,
                                           normalize=True, value_range=(-1, 1)), 0)

    run = TrainingRun(config=config, images=images, lung_prior=lung_prior, holdout=holdout,
                      data_dir=Path(data_dir), dist=dist, device=device, use_amp=use_amp,
                      writer=writer, checkpoint=last, progress=progress, log=log)
    for name in config.trained_families():  # each starts from its own seed
        state = FAMILIES[name].train_family(run, config.section(name), state)
    if writer is not None:
        writer.close()
    if dist.is_main and not last.exists():  # resumed a finished run: nothing new to save
        raise DataError(f"{display_path(run_dir)}: no epochs were run")
    if dist.is_main:
        fit_score_statistics(last, log=log)
    dist.barrier()
    dist.teardown()
    return last


def fit_score_statistics(model: str | os.PathLike, log=print,
                         retrained: str | None = None) -> None:
    """Score the run's held-out normal images with the default mode and store them.

    The components of normal images the GAN never trained on standardise the ``fused``
    score, and ``anomaly evaluate`` uses the 95% quantile of their scores as the
    threshold when no labelled validation folder is given. Their heat maps' maxima give
    each mode's region threshold (:func:`anomaly.regions.fit_region_threshold`).
    Thresholds stored by ``anomaly calibrate`` were picked on the model as it was: those
    of the ``retrained`` family's modes are dropped (every one when None).
    """
    from anomaly.families import ONE_PASS_MODES
    from anomaly.regions import fit_region_threshold, scores_and_heat_maxima
    from anomaly.score import Scorer, available_modes, default_mode

    path = Path(model)
    path = checkpoint_path(path) if path.is_dir() else path
    state = load_checkpoint(path)
    holdout = [Path(p) for p in state.get("holdout_paths", [])]
    stale = drop_stale_thresholds(state, retrained)
    if stale:
        log(f"dropped {stale} threshold(s) stored by anomaly calibrate for the model as "
            "it was: calibrate it again")
    if not holdout:
        if stale:
            save_checkpoint(state, path)
        return
    default = default_mode(state)  # search modes score the held-out images on demand
    modes = [m for m in available_modes(state) if m in ONE_PASS_MODES or m == default]
    earlier = state.get("score_stats") or {}
    unchanged = set() if retrained is None else set(modes) - set(FAMILIES[retrained].MODES)
    state["score_stats"] = {m: earlier[m] for m in modes if m in unchanged and m in earlier}
    fitted = [m for m in modes if m not in state["score_stats"]]  # the others: kept
    for mode in fitted:
        scorer = Scorer.from_state(state, mode=mode)
        result, maxima = scores_and_heat_maxima(scorer, holdout)
        thresholds = {}
        if len(holdout) >= 2:  # a quantile of one film's maximum would mean nothing
            thresholds[scorer.heat_name] = fit_region_threshold(maxima.values())
            for heat in getattr(scorer.family, "heats", ()):  # the family's other heat maps
                if heat not in thresholds:
                    other = Scorer.from_state(state, mode=mode, heat=heat)
                    thresholds[heat] = fit_region_threshold(scores_and_heat_maxima(
                        other, holdout)[1].values())
        else:
            log("only one held-out normal image: no region threshold (score --regions "
                "will refuse this run)")
        state["score_stats"][mode] = {
            **result.statistics(), **scorer.settings(), "components": result.components(),
            "region_thresholds": thresholds}
    save_checkpoint(state, path)
    if fitted:
        log(f"fitted score statistics on {len(holdout)} held-out normal images for modes: "
            f"{', '.join(fitted)}")


def drop_stale_thresholds(state: dict, retrained: str | None = None) -> int:
    """Remove the thresholds ``anomaly calibrate`` stored for the modes of the
    ``retrained`` family (all of them when None) from a checkpoint's state; return how
    many were removed."""
    import json

    def mode_of(key: str, entry) -> str | None:
        try:
            mode = json.loads(key).get("mode")
        except (ValueError, AttributeError):  # not a key calibrate writes
            mode = None
        if mode is None and isinstance(entry, dict):
            mode = entry.get("mode")  # calibrate also files it in the entry
        return mode if isinstance(mode, str) else None  # unknown: dropped

    stored = state.pop("thresholds", None) or {}
    changed = None if retrained is None else set(FAMILIES[retrained].MODES)
    kept = {key: entry for key, entry in stored.items()
            if changed is not None and mode_of(key, entry) not in changed | {None}}
    if kept:
        state["thresholds"] = kept
    return len(stored) - len(kept)


train_gan = train_run  # its name before families had a training seam (anomaly train-gan)


def __getattr__(name: str):
    """A family's training functions under the names they had here before each family
    had its folder (``anomaly.train.train_encoder``), and ``RESUMABLE_SETTINGS``."""
    import importlib

    if name == "RESUMABLE_SETTINGS":
        return resumable_settings()
    for module in FAMILIES.values():
        try:
            training = importlib.import_module(f"{module.__name__}.train")
        except ModuleNotFoundError:
            continue
        if not name.startswith("_") and hasattr(training, name):
            return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
