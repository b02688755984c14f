"""Config dataclasses from YAML files plus command-line overrides, strictly checked.

YAML keys are the dataclass's field names; an unknown key or a value of the wrong type
is a hard error that names the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from anomaly.atomic import write_text_atomically

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the problem."""


def load_config(cls: type[T], path: str | os.PathLike | None = None,
                overrides: Mapping[str, Any] | None = None) -> T:
    """Build a config dataclass from an optional YAML file and overrides.

    Args:
        cls: the config dataclass.
        path: YAML file whose keys are field names of ``cls``.
        overrides: values that win over the file (``None`` values are ignored).

    Raises:
        ConfigError: unreadable file, unknown key or wrong type.
    """
    sources = [(read_yaml(path), str(path))] if path is not None else []
    sources.append(({k: v for k, v in (overrides or {}).items() if v is not None},
                    "overrides"))
    return from_sources(cls, sources)


def read_yaml(path: str | os.PathLike) -> dict:
    """A config file's mapping of keys to values.

    Raises:
        ConfigError: unreadable file, invalid YAML or not a mapping.
    """
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    return loaded


def from_sources(cls: type[T], sources: Sequence[tuple[Mapping[str, Any], str]]) -> T:
    """Build ``cls`` from mappings, each later one winning; a class with a
    ``from_sources`` classmethod of its own (a config in sections) builds itself."""
    if hasattr(cls, "from_sources"):
        return cls.from_sources(sources)
    values: dict[str, Any] = {}
    for mapping, _ in sources:
        values.update(mapping)
    return from_dict(cls, values, sources[-1][1] if len(sources) == 1 else
                     " + ".join(source for _, source in sources))


def from_dict(cls: type[T], values: Mapping[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a mapping, checking keys and types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; "
                          f"known keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    checked = {key: _check_type(key, value, hints[key], source) for key, value in values.items()}
    try:
        return cls(**checked)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from None


def _check_type(key: str, value: Any, hint: Any, source: str) -> Any:
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (str, bool) and isinstance(value, option):
            return value
        if typing.get_origin(option) in (list, tuple) and isinstance(value, (list, tuple)):
            return list(value)
        if dataclasses.is_dataclass(option):  # a section of its own
            if isinstance(value, option):
                return value
            if isinstance(value, Mapping):
                return from_dict(option, value, f"{source}: {key}")
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{source}: key '{key}' must be {names}, not {value!r}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def resumed_config(cls: type[T], saved: Mapping[str, Any], path: str | os.PathLike | None = None,
                   overrides: Mapping[str, Any] | None = None, source: str = "checkpoint") -> T:
    """The config a run is resumed with: the ``saved`` settings it was trained with (keys
    this version no longer knows are dropped), then a YAML file and overrides on top."""
    if hasattr(cls, "known_part"):
        saved = cls.known_part(saved)
    else:
        known = {f.name for f in dataclasses.fields(cls)}
        saved = {k: v for k, v in saved.items() if k in known}
    sources = [(saved, "checkpoint")]
    if path is not None:
        sources.append((read_yaml(path), str(path)))
    sources.append(({k: v for k, v in (overrides or {}).items() if v is not None}, source))
    return from_sources(cls, sources)


def as_dict(config: Any) -> dict:
    """A config as plain nested data (its own ``to_dict`` where it has one)."""
    return config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (``dcgan.encoder.epochs``)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_settings(saved: Mapping[str, Any], config: Any, allowed: Sequence[str]
                     ) -> list[str]:
    """``"key X there, Y now"`` for every setting of ``config`` that differs from the
    ``saved`` one and is not in ``allowed`` (lists and tuples compare by value; sections
    by their dotted keys)."""
    new = flatten(as_dict(config))
    saved = flatten(saved)

    def same(a, b) -> bool:
        return list(a) == list(b) if isinstance(a, (list, tuple)) and \
            isinstance(b, (list, tuple)) else a == b

    return [f"{key} {saved[key]!r} there, {new[key]!r} now" for key in new
            if key in saved and key not in allowed and not same(saved[key], new[key])]


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write a config dataclass as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, yaml.safe_dump(as_dict(config), sort_keys=False))


def format_config(config: Any) -> str:
    """Render a config dataclass for printing at the start of a run."""
    return "\n".join(f"  {k}: {v}" for k, v in flatten(as_dict(config)).items())
