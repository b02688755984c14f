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
        sync_folder(path.parent)  # so the rename itself survives a power cut
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def sync_folder(folder: str | os.PathLike) -> None:
    """fsync a folder's entry list (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems refuse fsync on a folder
    finally:
        os.close(descriptor)


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (:func:`atomic_file`)."""
    path = Path(path)
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def open_for_streaming(path: str | os.PathLike, append: bool = False, lock: bool = False,
                       **open_options) -> IO:
    """Open a text file that is written row by row (a scores CSV, its regions), never
    through a symbolic link planted at ``path`` (refused with ``PermissionError``).

    With ``lock``, an exclusive lock is taken *before* anything is truncated, and a file
    another process holds is refused with :class:`FileLocked`: two jobs never write one
    output.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else 0)
    try:
        descriptor = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as err:
        if path.is_symlink():
            raise PermissionError(f"{path}: is a symbolic link; refusing to write through "
                                  "it") from None
        raise err
    if lock:
        import fcntl

        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise FileLocked(f"{path}: another process is writing it; wait for it to end "
                             "or write to another --out") from None
    if not append:
        os.ftruncate(descriptor, 0)
    return os.fdopen(descriptor, "a" if append else "w", **open_options)


class FileLocked(PermissionError):
    """An output file another process is writing."""
