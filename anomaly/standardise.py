"""Scores that sum components, each standardised on the normal films held out from
training (the critic's ``density+map`` and ``density+quiet``, the DCGAN's ``fused``).
NumPy alone: the export reader uses it too."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from anomaly.errors import CheckpointError

RUN_STATISTICS = "the run's statistics (call calibrate() with normal images)"


def standardised(values: np.ndarray, normal: Sequence[float]) -> np.ndarray:
    """``values`` less the mean and over the standard deviation of ``normal`` (the same
    component's values on held-out normal films; a zero spread counts as 1e-12)."""
    normal = np.asarray(normal, dtype=np.float64)
    return (np.asarray(values, dtype=np.float64) - normal.mean()) / max(normal.std(), 1e-12)


def standardised_sum(components: Mapping[str, np.ndarray],
                     normal_components: Mapping[str, Sequence[float]] | None,
                     names: Sequence[str], score: str,
                     source: str = RUN_STATISTICS) -> np.ndarray:
    """The components ``names`` (each (B,)), each less the mean and over the standard
    deviation of its values on the held-out normals (``normal_components``), summed.
    Statistics that are missing, or hold no values of a component, are refused in one
    line naming the ``score`` and ``source``, where they were looked for."""
    if normal_components is None:
        raise CheckpointError(f"the {score} score needs held-out normal statistics; call "
                              "calibrate() with normal images")
    total = 0.0
    for name in names:
        normal = normal_components.get(name)
        if not normal:
            raise CheckpointError(f"no held-out normal {name} values in {source} to "
                                  f"standardise the {score} score")
        total = total + standardised(components[name], normal)
    return np.asarray(total, dtype=np.float64)
