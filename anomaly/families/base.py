"""The seam between shared scoring code and a model family.

A family's scoring object turns a batch of preprocessed images (B, 1, S, S) in [-1, 1]
into a :class:`FamilyOutput`: named per-image components, a heat map with its display
scale, and its reconstruction (or None). It declares its modes, its components, the
score kinds it supports (each naming the component it reads) and its default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


@dataclass
class FamilyOutput:
    """What a family measures on one batch.

    Attributes:
        components: per-image values (B,) by component name.
        heatmaps: (B, S, S) where the evidence is, or None when not asked for.
        heat_scale: heat value shown as full red (None: each image's own maximum).
        reconstructions: (B, 1, S, S) in the model range, or None.
    """

    components: dict[str, np.ndarray]
    heatmaps: torch.Tensor | None
    heat_scale: float | None
    reconstructions: torch.Tensor | None


class Family(Protocol):
    """A family's scoring object (see the module docstring)."""

    name: str
    modes: tuple[str, ...]
    components: tuple[str, ...]
    score_kinds: dict[str, str]
    default_score: str

    def settings(self) -> dict:
        """Settings that change the components."""

    def score_batch(self, images: torch.Tensor, heatmaps: bool = True) -> FamilyOutput:
        """Measure a batch of preprocessed images (B, 1, S, S)."""
