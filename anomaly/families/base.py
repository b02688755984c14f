"""The seam between shared scoring code and a model family.

A family's scoring object turns a batch of preprocessed images (B, 1, S, S) in [-1, 1]
into a :class:`FamilyOutput`: named per-image components, a heat map with its display
scale, and its reconstruction (or None). It declares its modes, its components, the
score kinds it supports (each naming the component it reads) and its default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

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
    """A family's scoring object (see the module docstring).

    Attributes:
        name: the family (``critic``, ``dcgan``).
        title: its name for people (report titles).
        modes: the modes it implements.
        components: the per-image components it measures, in CSV order.
        score_kinds: score kind -> the component it reads, or None where the family
            combines components itself (:meth:`combine`).
        default_score: the score kind used when none is asked for.
        reconstructs: whether this mode draws a reconstruction.
        device: where it runs.
    """

    name: str
    title: str
    modes: tuple[str, ...]
    components: tuple[str, ...]
    score_kinds: dict[str, str | None]
    default_score: str
    reconstructs: bool
    device: torch.device

    def settings(self) -> dict:
        """Settings that change the components (``mode`` first)."""

    def report_settings(self, score: str) -> dict:
        """What a report of ``score`` lists beside its scores (this family's settings)."""

    def check_score(self, score: str) -> None:
        """Refuse, in one line, a score kind this checkpoint cannot compute."""

    def score_batch(self, images: torch.Tensor, score: str, heatmaps: bool = True
                    ) -> FamilyOutput:
        """Measure a batch of preprocessed images (B, 1, S, S), with the heat map of
        ``score`` when ``heatmaps``."""


@dataclass
class TrainingRun:
    """What the shared run (:func:`anomaly.train.train_run`) hands each family's training
    entry, ``train_family(run, section, state) -> state``: the family trains (or, resumed, goes
    on from its part of ``state``), saves through :meth:`save` as it goes, and returns
    the run's state with its part (:func:`anomaly.families.with_part`).

    Attributes:
        config: the whole :class:`anomaly.train.TrainConfig` (seed, device, preprocessing).
        images: (N, 1, S, S) uint8 training normals, on ``device``.
        lung_prior: (S, S) lung-field prior of those normals.
        holdout: the held-out normal files (never trained on).
        data_dir: the folder the normals came from.
        dist: :class:`anomaly.distributed.DistContext` of this process.
        device, use_amp: where and in which precision to train.
        writer: TensorBoard ``SummaryWriter`` (rank 0) or None.
        checkpoint: the run's ``last.pt``.
        progress, log: progress bars, and where messages go.
    """

    config: Any
    images: torch.Tensor
    lung_prior: torch.Tensor
    holdout: list[Path]
    data_dir: Path
    dist: Any
    device: torch.device
    use_amp: bool
    writer: Any
    checkpoint: Path
    progress: bool
    log: Callable[..., None]

    def save(self, state: dict) -> None:
        """Write the run's checkpoint atomically (rank 0 alone)."""
        from anomaly.checkpoint import save_checkpoint

        if self.dist.is_main:
            save_checkpoint(state, self.checkpoint)
