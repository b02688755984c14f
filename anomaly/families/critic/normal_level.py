"""The opacity map as it is shown: the map head's probability inside the lungs, above what
normal films show.

The map head gives every pixel a small opacity probability, and on a film of some 16,000
pixels those small values add up: on a normal film most of a raw map's heat lies
outside the lungs, where nothing is wrong. The *normal level* of a run is the
:data:`NORMAL_LEVEL_QUANTILE` quantile of the map's pixels over the held-out normal
films (never trained on). The map shown, and measured, is the probability above that
level; below it the probability is kept at :data:`BELOW_LEVEL_SLOPE` of its value, so the
order of the pixels (and with it the pixel AUROC, the pointing game, the regions and
their boxes) is that of the raw map, and a film with nothing above the level still has
a maximum. Before that, the probability is multiplied by the run's *map field* (where a
lung can be, :func:`anomaly.families.critic.synthesis.map_field`; 1 in the lungs, 0 on
the neck, shoulders, flanks and abdomen), fitted on the training normals: the critic's
opacities are only ever placed in the lungs, so the head was never taught what an
opacity elsewhere looks like. The ``map`` score reads the raw probability in the lung
field. NumPy alone: the export reader uses it too.
"""

from __future__ import annotations

import numpy as np

NORMAL_LEVEL_QUANTILE = 0.99  # of the held-out normal films' map pixels
BELOW_LEVEL_SLOPE = 0.01  # what is kept of the probability below the normal level


def shown_map(opacity, level: float | None, field=None):
    """The map shown (the same type and shape as ``opacity``, a tensor or an array of
    probabilities (..., S, S)): the probability times ``field`` (S, S) of the same type
    (None: 1 everywhere), then above ``level``, plus :data:`BELOW_LEVEL_SLOPE` of what
    lies below it; continuous and increasing. ``level`` None: no level (runs fitted
    before the normal level existed)."""
    if field is not None:
        opacity = opacity * field
    if level is None:
        return opacity
    return opacity.clip(max=level) * BELOW_LEVEL_SLOPE + (opacity - level).clip(min=0)


def checked_map_field(value, field: str, size: int):
    """A stored map field: None (the whole film) or an (S, S) array of values in [0, 1],
    not all zero, as float32; else :class:`anomaly.validate.BadValue` naming ``field``."""
    from anomaly import validate

    if value is None:
        return None
    validate.lung_prior(value, field, size)
    return validate.as_array(value, field).astype(np.float32)  # tensors as well


def checked_normal_level(value, field: str) -> float | None:
    """A stored normal level: None (a map shown raw) or a number in (0, 1), else
    :class:`anomaly.validate.BadValue` naming ``field``."""
    from anomaly.validate import BadValue, positive_number

    level = positive_number(value, field, allow_none=True)
    if level is not None and level >= 1:
        raise BadValue(f"{field} is {value!r}, not a probability below 1")
    return level


def fit_normal_level(opacity_maps,
                     quantile: float = NORMAL_LEVEL_QUANTILE) -> float:
    """The normal level: the ``quantile`` of the pixels of normal films' raw opacity
    maps (N, S, S), a tensor or an array; refused when there are none or they hold
    non-finite values."""
    maps = opacity_maps.cpu() if hasattr(opacity_maps, "cpu") else opacity_maps
    values = np.asarray(maps, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("the normal level needs the opacity maps of at least one normal film")
    if not np.isfinite(values).all():
        raise ValueError("the normal films' opacity maps hold NaN or infinite values")
    level = float(np.quantile(values, quantile))
    return max(level, 1e-12)  # a level of 0 would mean no level; keep it positive
