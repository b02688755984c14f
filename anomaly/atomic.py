"""Write files so that a crash never leaves half of one behind: every file the toolkit
writes whole (checkpoints, reports, plots, CSVs, caches) goes through :func:`atomic_file`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_options) -> Iterator[IO]:
    """Open a new temporary file beside ``path`` for writing; on success it is flushed,
    fsynced and renamed over ``path``, on any failure removed.

    The temporary name is unique and created exclusively (``tempfile.mkstemp``), so it
    never follows a symlink planted under a predictable name, and two writers do not
    collide.

    Example:
        >>> with atomic_file("report.json", "w", encoding="utf-8") as handle:
        ...     handle.write("{}")
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                             dir=path.parent)
    try:
        with os.fdopen(descriptor, mode, **open_options) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (:func:`atomic_file`)."""
    path = Path(path)
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path
