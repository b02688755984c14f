"""CLAHE contrast enhancement, resizing and scaling to the model's [-1, 1] range.

The settings live in :class:`PreprocessConfig`, which every checkpoint stores so that
scoring reuses exactly the preprocessing the model was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class PreprocessConfig:
    """How a raw X-ray becomes a model input.

    Attributes:
        image_size: side of the square model input in pixels.
        clahe: apply CLAHE (contrast-limited adaptive histogram equalisation).
        clahe_clip_limit: CLAHE clip limit (OpenCV's ``clipLimit``).
        clahe_tile_grid: CLAHE tiles per side (OpenCV's ``tileGridSize``).
        clahe_working_size: CLAHE runs on the image resized so its longer side is this
            many pixels, so tiles cover the same anatomy whatever the file's resolution.
        resize: ``"squash"`` resizes to a square ignoring the aspect ratio,
            ``"crop"`` takes the central square first, ``"pad"`` pads to a square.
    """

    image_size: int = 64
    clahe: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    clahe_working_size: int = 256
    resize: str = "squash"

    def __post_init__(self) -> None:
        import math

        def whole(name: str, low: int, high: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be a whole number from {low} to {high}, not "
                                 f"{value!r}")

        if self.resize not in ("squash", "crop", "pad"):
            raise ValueError(f"resize must be squash, crop or pad, not {self.resize!r}")
        whole("image_size", 8, 4096)
        whole("clahe_tile_grid", 1, 64)
        whole("clahe_working_size", 16, 8192)
        if not isinstance(self.clahe, bool):
            raise ValueError(f"clahe must be true or false, not {self.clahe!r}")
        limit = self.clahe_clip_limit
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) \
                or not math.isfinite(limit) or limit <= 0:
            raise ValueError(f"clahe_clip_limit must be a positive number, not {limit!r}")


def preprocess(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Turn a grayscale image in [0, 1] into a model input.

    Args:
        image: (H, W) float array in [0, 1], as returned by :func:`anomaly.io.read_image`.
        config: preprocessing settings.

    Returns:
        (image_size, image_size) float32 array in [-1, 1].
    """
    image = _to_square(image, config.resize)
    image8 = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if config.clahe:
        image8 = _resize(image8, config.clahe_working_size)
        clahe = cv2.createCLAHE(
            clipLimit=config.clahe_clip_limit,
            tileGridSize=(config.clahe_tile_grid, config.clahe_tile_grid),
        )
        image8 = clahe.apply(image8)
    image8 = _resize(image8, config.image_size)
    return image8.astype(np.float32) / 127.5 - 1.0


def encode_uint8(image: np.ndarray) -> np.ndarray:
    """A model-range image in [-1, 1] as the uint8 it is stored as (rounded)."""
    return np.clip((image + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def to_display(model_input: np.ndarray) -> np.ndarray:
    """Map a model-range array in [-1, 1] back to uint8 for saving or plotting."""
    return np.clip((model_input + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    shrinking = image.shape[0] > size or image.shape[1] > size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def _to_square(image: np.ndarray, mode: str) -> np.ndarray:
    height, width = image.shape
    if mode == "squash" or height == width:
        return image
    side = min(height, width) if mode == "crop" else max(height, width)
    if mode == "crop":
        top, left = (height - side) // 2, (width - side) // 2
        return image[top : top + side, left : left + side]
    padded = np.zeros((side, side), dtype=image.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    padded[top : top + height, left : left + width] = image
    return padded


def map_to_original(values: np.ndarray, shape: tuple[int, int], mode: str) -> np.ndarray:
    """Bring an (S, S) map over a model input back to the (H, W) image it came from,
    undoing :func:`preprocess`'s square step (``crop``: zero outside the central square;
    ``pad``: the padding cut away)."""
    height, width = shape
    values = np.asarray(values, dtype=np.float32)
    if mode == "squash" or height == width:
        return cv2.resize(values, (width, height), interpolation=cv2.INTER_LINEAR)
    side = min(height, width) if mode == "crop" else max(height, width)
    square = cv2.resize(values, (side, side), interpolation=cv2.INTER_LINEAR)
    top, left = abs(height - side) // 2, abs(width - side) // 2
    if mode == "crop":
        full = np.zeros((height, width), dtype=np.float32)
        full[top: top + side, left: left + side] = square
        return full
    return square[top: top + height, left: left + width]
