"""Pixel heatmaps of where the residual is, as PNG panels."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from anomaly.preprocess import to_display


def residual_map(image: np.ndarray, reconstruction: np.ndarray, blur_sigma: float = 1.0
                 ) -> np.ndarray:
    """Smoothed absolute residual of one image, (S, S) float32 in [0, 2].

    Args:
        image: (S, S) model-range input.
        reconstruction: (S, S) model-range G(z).
        blur_sigma: Gaussian smoothing in pixels (0 disables it).
    """
    residual = np.abs(image - reconstruction).astype(np.float32)
    if blur_sigma > 0:
        residual = cv2.GaussianBlur(residual, (0, 0), blur_sigma)
    return residual


def heatmap_panel(image: np.ndarray, reconstruction: np.ndarray | None,
                  display_size: int = 256, scale: float | None = None,
                  heat: np.ndarray | None = None) -> np.ndarray:
    """Panels side by side: input, G(z) (when there is one), heat overlaid on the input.

    Args:
        image: (S, S) model-range input.
        reconstruction: (S, S) model-range G(z), or None for scores without one (then
            ``heat`` is required).
        display_size: side of each panel in pixels.
        scale: heat value shown as full red; default: this image's maximum, so
            every image uses the whole colour range.
        heat: (S, S) map to show; default: :func:`residual_map` (|x - G(z)|, smoothed).

    Returns:
        (display_size, 3 * display_size, 3) uint8 BGR image (2 * display_size wide
        without a reconstruction).
    """
    residual = residual_map(image, reconstruction) if heat is None else heat
    scale = scale or float(residual.max()) or 1.0
    heat8 = np.clip(residual / scale * 255.0, 0, 255).astype(np.uint8)

    def grow(a: np.ndarray, interp: int) -> np.ndarray:
        return cv2.resize(a, (display_size, display_size), interpolation=interp)

    gray = cv2.cvtColor(grow(to_display(image), cv2.INTER_LINEAR), cv2.COLOR_GRAY2BGR)
    colour = cv2.applyColorMap(grow(heat8, cv2.INTER_CUBIC), cv2.COLORMAP_JET)
    overlay = cv2.addWeighted(gray, 0.55, colour, 0.45, 0)
    if reconstruction is None:
        return np.concatenate([gray, overlay], axis=1)
    recon = cv2.cvtColor(grow(to_display(reconstruction), cv2.INTER_LINEAR), cv2.COLOR_GRAY2BGR)
    return np.concatenate([gray, recon, overlay], axis=1)


def with_caption(panel: np.ndarray, text: str) -> np.ndarray:
    """The panel (H, W, 3) with a strip of one line of text below it."""
    strip = np.full((24, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(strip, text, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([panel, strip], axis=0)


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 grayscale or BGR image as PNG, creating folders, atomically (a link
    planted at ``path`` is replaced, never followed); returns the path."""
    from anomaly.atomic import atomic_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{path}: could not encode the image as PNG")
    with atomic_file(path, "wb") as handle:
        handle.write(encoded.tobytes())
    return path
