"""What scoring returns, batch by batch and file by file (NumPy only, no torch needed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class BatchScores:
    """Scores of one batch; ``score`` and each component have one entry per image
    (components are also attributes: ``scores.density``)."""

    score: np.ndarray
    components: dict[str, np.ndarray]
    inputs: Any  # (B, 1, S, S) model range
    reconstructions: Any | None  # (B, 1, S, S) model range; None: no G(z)
    heatmaps: Any | None  # (B, S, S): what the score looks at; None: not asked
    heat_scale: float | None = None  # heat shown as full red (None: each image's max)
    shapes: list[tuple[int, int]] | None = None  # (H, W) of each file as read; None: unknown

    def __getattr__(self, name: str):
        components = self.__dict__.get("components", {})
        if name in components:
            return components[name]
        raise AttributeError(name)


@dataclass
class ScoreResult:
    """Scores of a list of files, with the files that could not be read (components
    are also attributes: ``result.density``)."""

    paths: list[Path] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    failures: list[tuple[Path, str]] = field(default_factory=list)

    def __getattr__(self, name: str):
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    def add(self, paths: list[Path], scores: BatchScores) -> None:
        """Append one scored batch."""
        self.paths.extend(paths)
        self.score.extend(scores.score.tolist())
        for name, value in scores.components.items():
            self.values.setdefault(name, []).extend(np.asarray(value).tolist())

    def components(self) -> dict[str, list[float]]:
        """Each component's values, by name."""
        return {name: list(values) for name, values in self.values.items()}

    def statistics(self) -> dict[str, dict[str, float]]:
        """Mean, std and 90/95/99% quantiles of the score and each component."""
        stats = {}
        for name, values in {"score": self.score, **self.values}.items():
            values = np.asarray(values, dtype=np.float64)
            stats[name] = {
                "mean": float(values.mean()), "std": float(values.std()),
                **{f"q{q}": float(np.quantile(values, q / 100)) for q in (90, 95, 99)},
            }
        return stats
