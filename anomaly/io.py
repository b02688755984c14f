"""Read any chest X-ray file into one grayscale float array in [0, 1].

Supported: PNG, JPEG, BMP, TIFF (8- and 16-bit) and DICOM (``.dcm``, MONOCHROME1 is
inverted, rescale slope/intercept applied). Every failure raises :class:`ImageReadError`
whose message names the file and what is wrong, in one line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from anomaly.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
MAX_PIXELS = 100_000_000  # refuse larger images (decompression bombs)
# refuse larger files before reading a byte of them; CXR_ANOMALY_MAX_FILE_MB overrides
MAX_FILE_MB = float(os.environ.get("CXR_ANOMALY_MAX_FILE_MB", 512))
MAX_FRAMES = 10_000  # a DICOM declaring more frames is refused as absurd
SPREADSHEET_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")  # a cell starting so is a formula
MIN_SIDE = 8  # smaller images carry no usable anatomy


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{display_path(path)}: {reason}")


def display_path(path: str | os.PathLike) -> str:
    """Return a printable form of a path, even when its name is not valid UTF-8."""
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file name has one of the supported image suffixes."""
    return Path(os.fsdecode(path)).suffix.lower() in IMAGE_SUFFIXES


def _read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file, never more than ``limit`` of them (whatever its size
    on disk claims); a FIFO, device or socket is refused without blocking."""
    import stat

    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ImageReadError(path, "is not a regular file (a FIFO, device or socket)")
        if info.st_size > limit:
            raise ImageReadError(path, f"is {info.st_size / 2**20:.0f} MB, more than the limit "
                                       f"of {MAX_FILE_MB:g} MB (CXR_ANOMALY_MAX_FILE_MB)")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ImageReadError(path, f"holds more than the limit of {MAX_FILE_MB:g} MB "
                                   "(CXR_ANOMALY_MAX_FILE_MB)")
    return data


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an X-ray file as a grayscale float32 array in [0, 1].

    Args:
        path: image or DICOM file.

    Returns:
        Array of shape (H, W), dtype float32, values in [0, 1].

    Raises:
        ImageReadError: the file is missing, empty, truncated, too large, too small
            or not an image.
    """
    path = Path(os.fsdecode(path))
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    try:
        data = _read_regular_file(path, int(MAX_FILE_MB * 2**20))
    except OSError as err:
        raise ImageReadError(path, f"cannot be read ({err.strerror or err})") from None
    if not data:
        raise ImageReadError(path, "is empty (0 bytes)")
    if _looks_like_dicom(path, data):
        image = _decode_dicom(path, data)
    else:
        image = _decode_raster(path, data)
    if image.shape[0] < MIN_SIDE or image.shape[1] < MIN_SIDE:
        raise ImageReadError(
            path, f"is only {image.shape[1]}x{image.shape[0]} pixels (need at least {MIN_SIDE})"
        )
    if not np.isfinite(image).all():
        raise ImageReadError(path, "contains NaN or infinite pixel values")
    return image


def _looks_like_dicom(path: Path, data: bytes) -> bool:
    return path.suffix.lower() in (".dcm", ".dicom") or data[128:132] == b"DICM"


def check_pixel_count(path: str | os.PathLike, width: int, height: int, frames: int = 1
                      ) -> None:
    """The one size rule, applied by every reader before any pixel is decoded.

    Raises:
        ImageReadError: ``width * height * frames`` exceeds :data:`MAX_PIXELS`.
    """
    if width * height * frames > MAX_PIXELS:
        shape = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
        raise ImageReadError(
            path, f"declares {shape} pixels, more than the limit of {MAX_PIXELS}")


def _header_size(path: Path, data: bytes) -> tuple[int, int]:
    """Width and height from the file's header alone, by Pillow's format parsers.

    The parsers are called directly, so Pillow's own decompression-bomb check (whose
    limits differ from ours) does not run first: :func:`check_pixel_count` decides.

    Raises:
        ImageReadError: no parser recognises the header.
    """
    import io

    from PIL import Image

    Image.init()
    for format_id in Image.ID:
        factory, accept = Image.OPEN[format_id]
        try:
            if accept is not None and not accept(data[:16]):
                continue
            with factory(io.BytesIO(data), str(path)) as image:
                return image.size
        except Exception:  # not this format, or a broken header: try the next parser
            continue
    raise ImageReadError(path, "is not a readable image (corrupt, truncated or unknown format)")


def _decode_raster(path: Path, data: bytes) -> np.ndarray:
    check_pixel_count(path, *_header_size(path, data))
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if image is None:
        raise ImageReadError(path, "is not a readable image (corrupt, truncated or unknown format)")
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        elif image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        else:
            image = image[..., 0]
    return _to_unit_range(image)


def film_from_array(array, source: str = "array") -> np.ndarray:
    """A film given as an array, read under the rules files follow: (H, W), (1, H, W),
    (H, W, 1), or (H, W, 3 | 4) in RGB(A) order (made grayscale); uint8 (0-255) and
    uint16 (0-65535) scaled to [0, 1]; floating point taken as [0, 1] already. An empty,
    too small, non-finite, out-of-range or otherwise typed array is refused in one line.

    Returns:
        (H, W) float32 in [0, 1].
    """
    if not isinstance(array, np.ndarray):
        raise ImageReadError(source, f"is a {type(array).__name__}, not a NumPy array")
    image = array
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.size == 0:
        raise ImageReadError(source, f"is empty (shape {array.shape})")
    if image.ndim == 3 and image.shape[2] in (3, 4):
        if image.dtype not in (np.uint8, np.uint16, np.float32):
            image = image.astype(np.float32)
        code = cv2.COLOR_RGBA2GRAY if image.shape[2] == 4 else cv2.COLOR_RGB2GRAY
        image = cv2.cvtColor(np.ascontiguousarray(image), code)
    if image.ndim != 2:
        raise ImageReadError(source, f"has shape {array.shape}; a film is (H, W), (1, H, W) "
                                     "or (H, W, 3|4)")
    if image.shape[0] < MIN_SIDE or image.shape[1] < MIN_SIDE:
        raise ImageReadError(source, f"is only {image.shape[1]}x{image.shape[0]} pixels "
                                     f"(need at least {MIN_SIDE})")
    if image.dtype in (np.uint8, np.uint16):
        return _to_unit_range(image)
    if not np.issubdtype(image.dtype, np.floating):
        raise ImageReadError(source, f"has dtype {array.dtype}; give uint8, uint16 or "
                                     "floating point in [0, 1]")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise ImageReadError(source, "holds NaN or infinite pixel values")
    low, high = float(image.min()), float(image.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ImageReadError(source, f"has floating-point values from {low:.4g} to "
                                     f"{high:.4g}; floats must lie in [0, 1] (pass uint8 or "
                                     "uint16 for raw pixel values)")
    return np.clip(image, 0.0, 1.0)


def _to_unit_range(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    image = image.astype(np.float32)
    return _min_max(image)


def _min_max(image: np.ndarray) -> np.ndarray:
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros_like(image, dtype=np.float32)
    return ((image - low) / (high - low)).astype(np.float32)


def _decode_dicom(path: Path, data: bytes) -> np.ndarray:
    import io

    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))  # the bytes already read, not the file
        rows, cols = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        if not 1 <= frames <= MAX_FRAMES or not 1 <= samples <= 4 or rows < 0 or cols < 0:
            raise ImageReadError(path, f"declares {frames} frames of {samples} samples per "
                                       f"pixel, {cols}x{rows}: not an image this toolkit reads")
        check_pixel_count(path, cols, rows, frames * samples)
        pixels = dataset.pixel_array
    except ImageReadError:
        raise
    except InvalidDicomError:
        raise ImageReadError(path, "is not a valid DICOM file") from None
    except AttributeError:
        raise ImageReadError(path, "is a DICOM file without pixel data") from None
    except Exception as err:  # pydicom raises many types for truncated or odd files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageReadError(path, f"DICOM pixel data cannot be decoded ({reason})") from None
    if frames > 1 and pixels.ndim >= 3:  # (frames, rows, cols[, samples]): the first
        pixels = pixels[0]
    if samples > 1 and pixels.ndim == 3:  # colour (rows, cols, samples): its grey
        pixels = pixels[..., :3].mean(axis=-1)
    if pixels.ndim != 2:
        raise ImageReadError(path, f"DICOM pixel data of shape {pixels.shape} is not one "
                                   "grey or colour image")
    pixels = pixels.astype(np.float32)
    try:
        slope = float(dataset.get("RescaleSlope", 1) or 1)
        intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        raise ImageReadError(path, "has a RescaleSlope or RescaleIntercept that is not one "
                                   "number") from None
    pixels = pixels * slope + intercept
    image = _min_max(pixels)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        image = 1.0 - image
    return image


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, in hex (read a megabyte at a time)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def spreadsheet_safe(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: one starting like a formula (``=``, ``+``,
    ``-``, ``@``, tab, CR) or with an apostrophe gets a leading apostrophe, so that
    :func:`from_spreadsheet_safe` gives back exactly ``text``."""
    return "'" + text if text.startswith((*SPREADSHEET_TRIGGERS, "'")) else text


def from_spreadsheet_safe(text: str) -> str:
    """The text :func:`spreadsheet_safe` was given."""
    return text[1:] if text.startswith("'") and text[1:].startswith(
        (*SPREADSHEET_TRIGGERS, "'")) else text


def find_images(folder: str | os.PathLike) -> list[Path]:
    """List image files below a folder, recursively, in a stable sorted order.

    Raises:
        DataError: the folder does not exist or holds no image files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{display_path(folder)}: folder does not exist")
    paths, seen = [], set()

    def unreadable(err: OSError) -> None:  # said, not silently left out
        logger.warning("skipped folder %s: cannot be read (%s)",
                       display_path(err.filename), err.strerror or type(err).__name__)

    seen.add(os.path.realpath(folder))
    for top, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        # follow linked folders (exports often link them), each real folder once: a real
        # sub-folder before a link to it, then by name
        kept = []
        for name in sorted(dirnames, key=lambda d: (os.path.islink(os.path.join(top, d)), d)):
            real = os.path.realpath(os.path.join(top, name))
            if real not in seen:
                seen.add(real)
                kept.append(name)
        dirnames[:] = kept
        paths.extend(Path(top) / name for name in filenames
                     if not name.startswith(".") and is_image_path(Path(name)))
    paths.sort(key=lambda p: os.fsencode(p))
    if not paths:
        raise DataError(f"{display_path(folder)}: no image files found (looked for PNG, "
                        "JPEG, BMP, TIFF and DICOM, recursively)")
    return paths
