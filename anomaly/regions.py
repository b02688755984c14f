"""Regions a reader can check: the connected parts of a heat map above a threshold, as
boxes in the film's pixels.

The threshold is fitted on normal films the model never trained on (the held-out
normals): the ``quantile`` of their maps' maxima, so about ``1 - quantile`` of such
films get a region at all. ``anomaly calibrate`` fits it again on a site's own normal
films (at least :data:`REGION_MIN_NORMALS`), where another hospital's normals light the
map more than the training hospital's. It is stored in the checkpoint and the export; a
map whose threshold is missing or not finite gets no regions but an error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import cv2
import numpy as np

from anomaly.preprocess import map_to_original
from anomaly.validate import positive_number

REGION_QUANTILE = 0.95  # of the held-out normals' map maxima
REGION_MIN_NORMALS = 20  # normal films needed to fit the threshold again on a site's films
MIN_AREA_FRACTION = 1 / 1024  # smallest region kept, as a share of the film's area


@dataclass
class Region:
    """One region of a heat map above the threshold, in the film's pixels.

    Attributes:
        x, y: top-left corner (column, row).
        w, h: width and height.
        peak: the map's maximum inside the region.
        mean: the map's mean inside the region (its pixels, not the box).
        area: pixels in the region.
    """

    x: int
    y: int
    w: int
    h: int
    peak: float
    mean: float
    area: int

    def as_dict(self) -> dict:
        """The region as a JSON-ready dict."""
        return asdict(self)


def check_threshold(threshold: float | None, source: str = "the checkpoint") -> float:
    """The region threshold as a float, refused in one line when missing or not finite."""
    if threshold is None:
        raise ValueError(f"{source} holds no region threshold (fitted on the held-out "
                         "normals when a run is trained; runs of older versions have none)")
    return positive_number(threshold, f"{source}: region threshold")


def fit_region_threshold(maxima: Iterable[float], quantile: float = REGION_QUANTILE
                         ) -> float:
    """The threshold from the heat maps' maxima of held-out normal films: their
    ``quantile`` (at least a tiny positive value)."""
    maxima = [float(v) for v in maxima]
    if len(maxima) < 2 or not all(math.isfinite(v) for v in maxima):
        raise ValueError("fitting a region threshold needs at least 2 finite heat maps")
    return max(float(np.quantile(maxima, quantile)), 1e-6)


def scores_and_heat_maxima(scorer, paths, progress: bool = False):
    """Score ``paths`` with their heat maps (a :class:`anomaly.score.Scorer`); return the
    :class:`anomaly.score.ScoreResult` and a dict of each scored file's heat-map maximum
    (the values a region threshold is fitted on)."""
    maxima: dict = {}

    def keep_maxima(batch_paths, scores) -> None:
        if scores.heatmaps is None:
            raise ValueError("this scorer draws no heat maps, so it has no regions")
        maxima.update(zip(batch_paths, scores.heatmaps.flatten(1).amax(1).tolist()))

    result = scorer.score_paths(paths, progress=progress, on_batch=keep_maxima,
                                heatmaps=True)
    return result, maxima


def find_regions(heat: np.ndarray, threshold: float, min_area: int | None = None
                 ) -> list[Region]:
    """The connected regions (8-neighbour) of ``heat >= threshold``, largest peak first.

    Args:
        heat: (H, W) map at the film's resolution.
        threshold: a positive finite level (:func:`check_threshold`).
        min_area: smallest region kept in pixels (default: :data:`MIN_AREA_FRACTION` of
            the map, at least 1).
    """
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"a heat map must be (H, W), not shape {heat.shape}")
    if not np.isfinite(heat).all():
        raise ValueError("the heat map holds NaN or infinite values")
    threshold = check_threshold(threshold, "the caller")
    if min_area is None:
        min_area = max(1, int(round(MIN_AREA_FRACTION * heat.size)))
    above = (heat >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    regions = []
    for label in range(1, count):  # 0 is the background
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < min_area:
            continue
        values = heat[labels == label]
        regions.append(Region(x, y, w, h, float(values.max()), float(values.mean()), area))
    return sorted(regions, key=lambda r: -r.peak)


def film_regions(heat: np.ndarray, shape: tuple[int, int] | None, resize: str,
                 threshold: float | None, source: str = "this run's heat map") -> list[Region]:
    """The regions of a model-resolution map (S, S) in its film's own pixels: the map
    brought back to ``shape`` (H, W) undoing the square step ``resize``, then
    :func:`find_regions` (in the model input's pixels when ``shape`` is None)."""
    threshold = check_threshold(threshold, source)
    if shape is not None:
        heat = map_to_original(heat, shape, resize)
    return find_regions(heat, threshold)


def draw_regions(image_bgr: np.ndarray, regions: list[Region], scale: float = 1.0,
                 offset_x: int = 0) -> np.ndarray:
    """The image (H, W, 3) uint8 with each region's box drawn (in place and returned);
    ``scale`` maps film pixels to the image's, ``offset_x`` shifts to a panel."""
    for rank, region in enumerate(regions, start=1):
        x0 = int(round(region.x * scale)) + offset_x
        y0 = int(round(region.y * scale))
        x1 = int(round((region.x + region.w) * scale)) + offset_x - 1
        y1 = int(round((region.y + region.h) * scale)) - 1
        cv2.rectangle(image_bgr, (x0, y0), (x1, y1), (255, 255, 255), 2)
        cv2.rectangle(image_bgr, (x0, y0), (x1, y1), (0, 0, 0), 1)
        cv2.putText(image_bgr, str(rank), (x0 + 3, y0 + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return image_bgr
