"""How well a heat map says *where*: measures of maps against known lesion masks, and of
where a map puts its heat on real films.

- :func:`pixel_auroc`: the map's values against the mask's pixels, inside a field.
- :func:`pointing_game`: the share of films whose map maximum lies inside the lesion.
- :func:`mass_inside`: the share of each map's heat that lies inside a field.
- :func:`maximum_inside`: whether each map's maximum lies inside a field.

Maps and masks are (N, S, S) arrays at one resolution; fields are (S, S) 0/1 arrays.
"""

from __future__ import annotations

import numpy as np


def _check(maps: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps, dtype=np.float64)
    other = np.asarray(other)
    if maps.ndim != 3 or other.shape[-2:] != maps.shape[-2:]:
        raise ValueError(f"maps (N, S, S) and masks or a field of the same side, not "
                         f"{maps.shape} and {other.shape}")
    if not np.isfinite(maps).all():
        raise ValueError("the maps hold NaN or infinite values")
    return maps, other


def pixel_auroc(maps: np.ndarray, masks: np.ndarray, field: np.ndarray | None = None
                ) -> float:
    """AUROC of the maps' pixel values (N, S, S) for the 0/1 lesion masks (N, S, S),
    over the pixels inside ``field`` (S, S) (default: every pixel)."""
    from sklearn.metrics import roc_auc_score

    maps, masks = _check(maps, masks)
    inside = np.ones(maps.shape[-2:], bool) if field is None else np.asarray(field) > 0.5
    values = maps[:, inside].ravel()
    truth = (masks[:, inside] > 0.5).ravel()
    if truth.all() or not truth.any():
        raise ValueError("pixel AUROC needs lesion and healthy pixels inside the field")
    return float(roc_auc_score(truth, values))


def _argmax_pixels(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = maps.reshape(len(maps), -1).argmax(1)
    return np.unravel_index(flat, maps.shape[-2:])


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> float:
    """The share of films whose map maximum (over the whole film) lies in its lesion."""
    maps, masks = _check(maps, masks)
    rows, cols = _argmax_pixels(maps)
    return float(np.mean(masks[np.arange(len(maps)), rows, cols] > 0.5))


def mass_inside(maps: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Per film, the share of the map's (non-negative) heat inside ``field``, (N,); a map
    with no heat at all counts as 0."""
    maps, field = _check(maps, field)
    maps = np.clip(maps, 0, None)
    total = maps.reshape(len(maps), -1).sum(1)
    inside = (maps * (field > 0.5)).reshape(len(maps), -1).sum(1)
    return np.where(total > 0, inside / np.maximum(total, 1e-300), 0.0)


def maximum_inside(maps: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Per film, whether the map's maximum lies inside ``field``, (N,) bool."""
    maps, field = _check(maps, field)
    rows, cols = _argmax_pixels(maps)
    return field[rows, cols] > 0.5
