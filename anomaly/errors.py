"""The toolkit's error types, importable without torch (the CLI turns each into one line)."""

from __future__ import annotations


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unsafe, corrupt or not ours; the message says which."""


class DataError(ValueError):
    """A folder or file list cannot be used; the message says which and why."""
