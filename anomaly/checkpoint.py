"""Atomic checkpoint saving and safe (``weights_only=True``) loading.

A checkpoint is a plain dict of tensors, numbers and strings: the networks' state dicts
plus everything needed to rebuild them (architecture, preprocessing, training config,
epoch, fitted score statistics). ``families`` names the model families it holds: the
critic's part under ``"critic"``, the DCGAN's at the top level (format 1 checkpoints hold
the DCGAN alone). Loading never unpickles code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from anomaly import validate
from anomaly.atomic import atomic_file
from anomaly.errors import CheckpointError
from anomaly.io import display_path, file_sha256
from anomaly.validate import BadValue

__all__ = ["CheckpointError", "FORMAT", "FORMAT_VERSION", "checkpoint_digest",
           "load_checkpoint", "load_weights", "resolve_checkpoint_path", "save_checkpoint"]

FORMAT = "cxr-anomaly-gan"
FORMAT_VERSION = 3  # 2: ``families`` lists the model families held (critic, dcgan)
# 3: a part may hold what versions before it would misread (the critic's density fitted
# on another embedding than l2): such a state is marked 3 (at_least_format), so they refuse it



def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a checkpoint atomically: a crash leaves either the old or the new file.

    Args:
        state: the checkpoint's content (tensors, numbers, strings, lists and dicts).
        path: destination ``.pt`` file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as handle:
        torch.save(state, handle)


def at_least_format(state: dict[str, Any], version: int) -> dict[str, Any]:
    """The state marked with at least format ``version``: for a part that versions before
    it would misread, so that they refuse the checkpoint instead."""
    return {**state, "format_version": max(int(state.get("format_version", 0)), version)}


def resolve_checkpoint_path(model: str | os.PathLike) -> Path:
    """Accept a run directory, a ``.pt`` file or ``pretrained`` (the bundled model, where
    no file of that name exists); return the checkpoint file."""
    from anomaly import pretrained

    if pretrained.is_pretrained(model) and not Path(str(model)).exists():
        return pretrained.bundled_checkpoint()
    model = Path(model)
    if model.is_dir():
        model = model / "checkpoints" / "last.pt"
    if not model.is_file():
        raise CheckpointError(f"{display_path(model)}: no checkpoint there")
    return model


def checkpoint_digest(model: str | os.PathLike) -> str:
    """SHA-256 of a checkpoint file's bytes (first 16 hex digits): which weights, exactly."""
    return file_sha256(resolve_checkpoint_path(model))[:16]


def load_checkpoint(model: str | os.PathLike, expected_format: str = FORMAT) -> dict[str, Any]:
    """Load a checkpoint safely, with ``torch.load(..., weights_only=True)``.

    Args:
        model: run directory or checkpoint file.
        expected_format: the ``format`` tag the checkpoint must carry.

    Raises:
        CheckpointError: missing, refused (pickled objects), corrupt or not ours.
    """
    path = resolve_checkpoint_path(model)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).splitlines()[0] if str(err) else "disallowed content"
        raise CheckpointError(
            f"{display_path(path)}: refused, it holds pickled objects that could run code "
            f"({first[:160]})"
        ) from None
    except Exception as err:
        raise CheckpointError(
            f"{display_path(path)}: not a readable checkpoint ({type(err).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != expected_format:
        raise CheckpointError(f"{display_path(path)}: not a {expected_format} checkpoint")
    version = state.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{display_path(path)}: format_version {version!r} is not a "
                              "whole number")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{display_path(path)}: written by a newer version (format "
            f"{state['format_version']}); upgrade the toolkit"
        )
    try:
        check_values(state)
    except (BadValue, ValueError, TypeError) as err:
        raise CheckpointError(f"{display_path(path)}: {err}") from None
    return state


def check_values(state: dict[str, Any]) -> None:
    """Refuse what a safely loaded checkpoint cannot hold: bad preprocessing settings, a
    lung prior, density, heat scale or stored threshold that is not finite, of the wrong
    shape or type (:mod:`anomaly.validate`; the networks' weights are checked against
    their architecture when they are loaded).

    Raises:
        BadValue: naming the field.
    """
    from anomaly.preprocess import PreprocessConfig

    preprocess = state.get("preprocess")
    if not isinstance(preprocess, dict):
        raise BadValue("preprocess is missing")
    try:
        size = PreprocessConfig(**preprocess).image_size
    except (TypeError, ValueError) as err:
        raise BadValue(f"preprocess: {err}") from None
    from anomaly.families import FAMILIES

    families = state.get("families", [])
    if not isinstance(families, list) or not all(isinstance(f, str) for f in families):
        raise BadValue(f"families is {families!r}, not a list of names")
    if state.get("lung_prior") is not None:
        validate.lung_prior(state["lung_prior"], "lung_prior", size)
    for module in FAMILIES.values():  # each family checks its own part
        check_part = getattr(module, "check_state", None)
        if check_part is not None:
            check_part(state)
    for field in ("score_stats", "thresholds"):
        if state.get(field) is not None and not isinstance(state[field], dict):
            raise BadValue(f"{field} is {type(state[field]).__name__}, not a dict")
    holdout = state.get("holdout_paths", [])
    if not isinstance(holdout, list) or not all(isinstance(p, str) for p in holdout):
        raise BadValue("holdout_paths is not a list of file names")
    for mode, stats in (state.get("score_stats") or {}).items():
        if not isinstance(stats, dict):
            raise BadValue(f"score_stats.{mode} is not a dict")
        components = stats.get("components")
        if components is not None and not isinstance(components, dict):
            raise BadValue(f"score_stats.{mode}.components is not a dict")
        for name, values in (components or {}).items():  # NaN where a mode lacks it
            if not isinstance(values, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise BadValue(f"score_stats.{mode}.components.{name} is not a list of "
                               "numbers")
        if not isinstance(stats.get("region_thresholds") or {}, dict):
            raise BadValue(f"score_stats.{mode}.region_thresholds is not a dict")
        for heat, value in (stats.get("region_thresholds") or {}).items():
            validate.positive_number(value, f"score_stats.{mode}.region_thresholds.{heat}")
    for entry in (state.get("thresholds") or {}).values():
        if not isinstance(entry, dict):
            raise BadValue("thresholds holds an entry that is not a dict")
        validate.finite_number(entry.get("value"), "thresholds.value")
        regions = entry.get("region_thresholds") or {}
        if not isinstance(regions, dict):
            raise BadValue("thresholds.region_thresholds is not a dict")
        for heat, fitted in regions.items():
            if not isinstance(fitted, dict):
                raise BadValue(f"thresholds.region_thresholds.{heat} is not a dict")
            validate.positive_number(fitted.get("value"), f"thresholds.region_thresholds.{heat}")


def load_weights(module: torch.nn.Module, weights: dict, what: str) -> None:
    """Load a state dict into a network, or raise one line when they do not fit.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped tensors (a corrupt checkpoint,
            or one whose architecture record does not match its weights).
    """
    try:
        module.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else (first[0] if first else "")
        raise CheckpointError(f"the {what} weights do not fit its architecture "
                              f"({detail[:200]})") from None
