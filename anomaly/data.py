"""Find images in folders, read and preprocess them once, and keep them as tensors.

Training reads every image once into an in-memory uint8 tensor (optionally cached on
disk as ``.npy`` keyed by the file list and the preprocessing settings), so no epoch
decodes a JPEG again. Bad files are skipped and reported, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from anomaly.atomic import atomic_file, write_text_atomically
from anomaly.errors import DataError
from anomaly.io import ImageReadError, display_path, file_sha256, find_images, read_image
from anomaly.preprocess import PreprocessConfig, encode_uint8, preprocess


@dataclass
class LabelledFolder:
    """Images of a folder with one sub-folder per class.

    Attributes:
        paths: image paths.
        class_names: sorted class (sub-folder) names.
        class_index: class index of each path, into ``class_names``.
        normal_class: name of the normal class.
    """

    paths: list[Path]
    class_names: list[str]
    class_index: list[int]
    normal_class: str = "NORMAL"
    empty_classes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: every class with its image count and role, and empty folders."""
        parts = [f"{name} {self.class_index.count(i)} "
                 f"({'normal' if name == self.normal_class else 'anomalous'})"
                 for i, name in enumerate(self.class_names)]
        empty = (f"; empty folders ignored: {', '.join(self.empty_classes)}"
                 if self.empty_classes else "")
        return "classes: " + ", ".join(parts) + empty

    @property
    def binary_labels(self) -> np.ndarray:
        """0 for the normal class, 1 for every other class."""
        normal = self.class_names.index(self.normal_class)
        return np.array([int(i != normal) for i in self.class_index], dtype=np.int64)


def scan_labelled_folder(folder: str | os.PathLike, normal_class: str = "NORMAL") -> LabelledFolder:
    """Scan a labelled folder (one sub-folder per class, images found recursively).

    Raises:
        DataError: no class folders, or the normal class is missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{display_path(folder)}: folder does not exist")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, index, names, empty = [], [], [], []
    for class_dir in class_dirs:
        try:
            found = find_images(class_dir)
        except DataError:
            empty.append(class_dir.name)
            continue
        names.append(class_dir.name)
        paths.extend(found)
        index.extend([len(names) - 1] * len(found))
    if not names:
        raise DataError(f"{display_path(folder)}: no class sub-folders with images")
    if normal_class not in names:
        raise DataError(
            f"{display_path(folder)}: no '{normal_class}' class folder (found: {', '.join(names)});"
            " use --normal-class to name the normal class"
        )
    return LabelledFolder(paths, names, index, normal_class, empty)


def refuse_labelled_folder(folder: str | os.PathLike, normal_class: str = "NORMAL") -> None:
    """Refuse a training folder that holds a labelled folder: a ``normal_class`` sub-folder
    (any case) beside other sub-folders, at any depth (``train/`` with ``NORMAL/`` and
    ``PNEUMONIA/``, or the data set's root with ``train/``, ``val/``, ...), whose abnormal
    films a recursive search would train on.

    Raises:
        DataError: one line naming the labelled folder and its sub-folders.
    """
    folder = Path(folder)
    for top, dirnames, _ in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if len(dirnames) > 1 and any(d.lower() == normal_class.lower() for d in dirnames):
            raise DataError(f"{display_path(Path(top))}: a labelled folder (sub-folders "
                            f"{', '.join(dirnames)}); train on normal films only: pass "
                            f"its {normal_class} sub-folder")
        if len(Path(top).relative_to(folder).parts) >= 4:
            dirnames[:] = []  # labelled folders sit near the top; exports nest deeper


def load_preprocessed(path: str | os.PathLike, config: PreprocessConfig) -> np.ndarray:
    """Read one file and preprocess it: (S, S) float32 in [-1, 1]."""
    return preprocess(read_image(path), config)


@dataclass
class LoadedImages:
    """Preprocessed images of a file list, with the files that failed.

    Attributes:
        images: (N, 1, S, S) uint8 tensor (model range is ``x / 127.5 - 1``).
        paths: the N files that were read.
        failures: (path, reason) for every file that was skipped.
    """

    images: torch.Tensor
    paths: list[Path]
    failures: list[tuple[Path, str]] = field(default_factory=list)


def uint8_to_model(images: torch.Tensor) -> torch.Tensor:
    """Convert a uint8 image batch to float32 model range [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def iter_preprocessed(
    paths: Sequence[str | os.PathLike], config: PreprocessConfig, workers: int = 4,
    shapes: dict[Path, tuple[int, int]] | None = None
) -> Iterator[tuple[Path, np.ndarray | None, str | None]]:
    """Yield (path, uint8 image or None, error or None) in order, decoding in threads.

    OpenCV releases the GIL while decoding, so threads overlap the reading work.
    ``shapes``, when given, receives each read file's (height, width) as read.
    """

    def job(path: Path) -> tuple[Path, np.ndarray | None, str | None]:
        try:
            raw = read_image(path)
            if shapes is not None:
                shapes[path] = tuple(raw.shape[:2])
            return path, encode_uint8(preprocess(raw, config)), None
        except ImageReadError as err:
            return path, None, err.reason
        except Exception as err:  # any decoder surprise is a bad file, not a crash
            return path, None, f"cannot be decoded ({type(err).__name__}: {err})"

    paths = [Path(p) for p in paths]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        chunk = 256  # bound the number of decoded images waiting in memory
        for start in range(0, len(paths), chunk):
            yield from pool.map(job, paths[start : start + chunk])


def iter_preprocessed_batches(
    paths: Sequence[str | os.PathLike], config: PreprocessConfig, batch_size: int,
    shapes: dict[Path, tuple[int, int]] | None = None
) -> Iterator[tuple[list[Path], torch.Tensor, list[tuple[Path, str]]]]:
    """Yield (paths read, their uint8 images (B, 1, S, S), (path, reason) of files skipped).

    Batches hold ``batch_size`` readable images (the last may hold fewer, or none when
    only unreadable files remain), so memory stays flat however many files there are.
    ``shapes`` receives each read file's (height, width).
    """
    good: list[Path] = []
    images: list[np.ndarray] = []
    failures: list[tuple[Path, str]] = []
    for path, image, error in iter_preprocessed(paths, config, shapes=shapes):
        if image is None:
            failures.append((path, error))
            continue
        good.append(path)
        images.append(image)
        if len(images) == batch_size:
            yield good, torch.from_numpy(np.stack(images)).unsqueeze(1), failures
            good, images, failures = [], [], []
    if images or failures:
        stacked = (torch.from_numpy(np.stack(images)).unsqueeze(1) if images else
                   torch.zeros((0, 1, config.image_size, config.image_size), dtype=torch.uint8))
        yield good, stacked, failures


def load_images(
    paths: Sequence[str | os.PathLike],
    config: PreprocessConfig,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> LoadedImages:
    """Read and preprocess a list of files into one uint8 tensor, skipping bad files.

    Args:
        paths: image files.
        config: preprocessing settings.
        cache_dir: if given, the result is stored there as ``.npy`` and reused when the
            same files (by path, size and modification time) and settings come again.
        progress: show a progress bar.
    """
    paths = [Path(p) for p in paths]
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"images-{_cache_key(paths, config)}"
        cached = _read_cache(cache_file)
        if cached is not None:
            return cached
    images, good, failures = [], [], []
    stream: Iterable = iter_preprocessed(paths, config)
    if progress:
        from tqdm import tqdm

        stream = tqdm(stream, total=len(paths), desc="reading images", unit="img")
    for path, image, error in stream:
        if image is None:
            failures.append((path, error))
        else:
            images.append(image)
            good.append(path)
    size = config.image_size
    stacked = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    loaded = LoadedImages(torch.from_numpy(stacked).unsqueeze(1), good, failures)
    if cache_file is not None:
        _write_cache(cache_file, loaded)
    return loaded


def _cache_key(paths: list[Path], config: PreprocessConfig) -> str:
    digest = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    for path in paths:
        try:
            stat = path.stat()
            digest.update(os.fsencode(path.resolve()) + f"|{stat.st_size}|{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(os.fsencode(path) + b"|missing")
    return digest.hexdigest()[:16]


def _read_cache(cache_file: Path) -> LoadedImages | None:
    array_file, index_file = cache_file.with_suffix(".npy"), cache_file.with_suffix(".json")
    if not (array_file.exists() and index_file.exists()):
        return None
    try:
        index = json.loads(index_file.read_text())
        array = np.load(array_file, allow_pickle=False)
    except (OSError, ValueError):
        return None
    paths = [Path(p) for p in index["paths"]]
    failures = [(Path(p), r) for p, r in index["failures"]]
    return LoadedImages(torch.from_numpy(array), paths, failures)


def _write_cache(cache_file: Path, loaded: LoadedImages) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(cache_file.with_suffix(".npy"), "wb") as handle:
        np.save(handle, loaded.images.numpy())
    index = {
        "paths": [str(p) for p in loaded.paths],  # json escapes undecodable names losslessly
        "failures": [[str(p), r] for p, r in loaded.failures],
    }
    write_text_atomically(cache_file.with_suffix(".json"), json.dumps(index))


def readable_digest(path: str | os.PathLike) -> str | None:
    """:func:`anomaly.io.file_sha256` of a readable regular file; None for a file that cannot be
    read (a dangling or looping link, a FIFO, no permission), which scoring then skips
    and names like every unreadable file."""
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        return file_sha256(path)
    except OSError:
        return None


def refuse_shared_files(test_paths: Sequence[Path], val_paths: Sequence[Path],
                        test_name: str, val_name: str,
                        reason: str = "a threshold picked on validation data must not "
                                      "see the test images") -> None:
    """Refuse a validation set that shares any file, by content, with another set (the
    test set: a threshold picked on it would have seen test images; ``reason`` says why
    for another set).

    Raises:
        DataError: one line with the number of shared files and the first pair.
    """
    def size(path) -> int | None:
        try:
            return os.stat(path).st_size
        except OSError:
            return None

    # only files of a size both sets hold can share content: hash those alone
    test_sizes = {path: size(path) for path in test_paths}
    val_sizes = {path: size(path) for path in val_paths}
    common = set(test_sizes.values()) & set(val_sizes.values()) - {None}
    test = {}
    for path in test_paths:
        if test_sizes[path] in common and (digest := readable_digest(path)) is not None:
            test.setdefault(digest, path)
    shared = [(test[d], path) for path in val_paths if val_sizes[path] in common
              and (d := readable_digest(path)) is not None and d in test]
    if shared:
        first_test, first_val = shared[0]
        raise DataError(f"{val_name} and {test_name} share {len(shared)} file(s) by content "
                        f"(e.g. {display_path(first_val)} = {display_path(first_test)}): "
                        f"{reason}")
