"""Errors shared by the GAN's and the classifier's training loops."""

from __future__ import annotations


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""
