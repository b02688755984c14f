"""Checks of the values a checkpoint or an export holds, so that a file that loads safely
but holds a NaN, a zero, a wrong shape or a wrong type is refused in one line naming the
file and the field, never turned into a silent ``normal`` or a traceback (NumPy only).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class BadValue(ValueError):
    """A field of a model file holds a value it cannot hold; the message names it."""


def as_array(value: Any, field: str) -> np.ndarray:
    """``value`` (a tensor, list or array) as a float64 array, refused unless numeric."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().float().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise BadValue(f"{field} is not an array of numbers") from None
    return array


def finite_array(value: Any, field: str, ndim: int | None = None,
                 shape: tuple[int | None, ...] | None = None) -> np.ndarray:
    """A numeric array with every value finite, of ``ndim`` dimensions or ``shape``
    (None: any size along that axis)."""
    if value is None:
        raise BadValue(f"{field} is missing")
    array = as_array(value, field)
    if ndim is not None and array.ndim != ndim:
        raise BadValue(f"{field} has shape {array.shape}, not {ndim}-dimensional")
    if shape is not None and (array.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(array.shape, shape))):
        raise BadValue(f"{field} has shape {array.shape}, not {shape}")
    if array.size == 0:
        raise BadValue(f"{field} is empty")
    if not np.isfinite(array).all():
        raise BadValue(f"{field} holds NaN or infinite values")
    return array


def positive_number(value: Any, field: str, allow_none: bool = False) -> float | None:
    """A finite number above zero (or None where allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
            or not math.isfinite(float(value)) or float(value) <= 0:
        raise BadValue(f"{field} is {value!r}, not a positive finite number")
    return float(value)


def finite_number(value: Any, field: str, allow_none: bool = False) -> float | None:
    """A finite number (or None where allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
            or not math.isfinite(float(value)):
        raise BadValue(f"{field} is {value!r}, not a finite number")
    return float(value)


def whole_number(value: Any, field: str, low: int = 0) -> int:
    """An int of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BadValue(f"{field} is {value!r}, not a whole number of at least {low}")
    return value


def density(mean: Any, precision: Any, field: str, dim: int | None = None) -> None:
    """A Gaussian's mean (D,) and precision (D, D): finite, of matching sizes (``dim`` when
    given), the precision symmetric and positive definite."""
    mean = finite_array(mean, f"{field}.mean", ndim=1)
    if dim is not None and len(mean) != dim:
        raise BadValue(f"{field}.mean has {len(mean)} values; the network's features have "
                       f"{dim}")
    precision = finite_array(precision, f"{field}.precision", shape=(len(mean), len(mean)))
    scale = max(float(np.abs(precision).max()), 1e-300)
    if not np.allclose(precision, precision.T, atol=1e-6 * scale, rtol=1e-5):
        raise BadValue(f"{field}.precision is not symmetric")
    if float(np.linalg.eigvalsh((precision + precision.T) / 2).min()) <= 0:
        raise BadValue(f"{field}.precision is not positive definite (a zero, negated or "
                       "singular matrix)")


def density_part(part: Any, field: str, dim: int | None = None) -> None:
    """A stored Gaussian ``{mean, precision}`` (see :func:`density`)."""
    if not isinstance(part, dict):
        raise BadValue(f"{field} is missing or not a dict")
    density(part.get("mean"), part.get("precision"), field, dim)


def lung_prior(prior: Any, field: str, size: int) -> None:
    """An (S, S) field of values in [0, 1] with some lung in it."""
    array = finite_array(prior, field, shape=(size, size))
    if array.min() < 0 or array.max() > 1 or array.sum() <= 0:
        raise BadValue(f"{field} must hold values in [0, 1], not all zero")


def number_list(values: Any, field: str, allow_none: bool = True) -> None:
    """A list of finite numbers (or None where allowed)."""
    if values is None and allow_none:
        return
    if not isinstance(values, (list, tuple)):
        raise BadValue(f"{field} is {type(values).__name__}, not a list of numbers")
    finite_array(values, field, ndim=1)
