"""One Python call for everything a user wants per image: score, label, p-value, heat
map at the input's resolution and, where the mode has one, the reconstruction.

Example:
    >>> detector = Detector.from_run("runs/gan")            # the run's default mode
    >>> for p in detector.predict(["a.png", "b.dcm"]):
    ...     print(p.source, p.score, p.label, p.heatmap.shape, p.regions)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from anomaly.data import uint8_to_model
from anomaly.decision import Decision
from anomaly.io import ImageReadError, display_path, film_from_array, read_image
from anomaly.preprocess import encode_uint8, map_to_original, preprocess
from anomaly.regions import Region
from anomaly.score import Scorer


@dataclass
class Prediction:
    """What the detector says about one image.

    Attributes:
        source: the file's path, or ``array N`` for the N-th array given.
        score: the anomaly score (higher = more anomalous); NaN if unreadable.
        label: ``normal``, ``anomalous``, or ``unreadable`` (then ``error`` says why).
        p_value: conformal p-value against the held-out normals (NaN without them).
        heatmap: (H, W) heat at the input's resolution, or None if unreadable.
        heat_scale: heat shown as full red by the toolkit's panels (None: the map's own max).
        reconstruction: (S, S) G(z) in the model range [-1, 1], or None.
        components: every component of the score, by name.
        error: why the file could not be read, or None.
        regions: the heat map's regions above the run's region threshold, boxes in the
            input's pixels (:class:`anomaly.regions.Region`); None where the run has no
            region threshold for this heat map, or the file is unreadable.
    """

    source: str
    score: float
    label: str
    p_value: float
    heatmap: np.ndarray | None
    heat_scale: float | None = None
    reconstruction: np.ndarray | None = None
    components: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    regions: list[Region] | None = None


class Detector:
    """A trained run with its decision rule; build one with :meth:`from_run`."""

    def __init__(self, scorer: Scorer, decision: Decision):
        self.scorer = scorer
        self.decision = decision

    @classmethod
    def from_run(cls, model: str | os.PathLike, mode: str | None = None,
                 threshold: float | None = None, alpha: float | None = None,
                 **options) -> "Detector":
        """Load a run (or ``.pt`` file) and its decision rule.

        Args:
            model: run directory or checkpoint file.
            mode: scoring mode (default: the run's best measured one).
            threshold: label at this score (default: the stored one, see
                :meth:`anomaly.score.Scorer.decision`).
            alpha: label by conformal p-value <= alpha instead.
            **options: ``score``, ``batch_size``, ``device`` and the family's settings.
        """
        scorer = Scorer.from_checkpoint(model, mode=mode, **options)
        return cls(scorer, scorer.decision(threshold, alpha))

    @classmethod
    def pretrained(cls, **options) -> "Detector":
        """The bundled pretrained critic (:mod:`anomaly.pretrained`, docs/model_card.md),
        with :meth:`from_run`'s options."""
        from anomaly import pretrained

        return cls.from_run(pretrained.bundled_checkpoint(), **options)

    def predict(self, images: Sequence[str | os.PathLike | np.ndarray]) -> list[Prediction]:
        """Predict for files (any readable format) or arrays, in order.

        Arrays follow :func:`anomaly.io.film_from_array`: uint8 and uint16 are scaled,
        floats must lie in [0, 1], colour (RGB) is made grayscale. An unreadable file or
        refused array gets ``label="unreadable"`` and its reason; the others are scored
        as ``anomaly score`` scores them (the same numbers).
        """
        config = self.scorer.preprocess_config
        predictions: list[Prediction | None] = [None] * len(images)
        pending: list[tuple[int, str, tuple[int, int], np.ndarray]] = []
        for index, item in enumerate(images):
            is_array = isinstance(item, np.ndarray)
            source = f"array {index}" if is_array else str(item)
            try:
                raw = film_from_array(item, source) if is_array else read_image(item)
                stored = encode_uint8(preprocess(raw, config))  # as anomaly score reads files
            except Exception as err:  # a bad film is reported, the others are still scored
                reason = err.reason if isinstance(err, ImageReadError) else \
                    f"cannot be decoded ({type(err).__name__}: {err})"
                predictions[index] = Prediction(source if is_array else display_path(Path(item)),
                                                float("nan"), "unreadable", float("nan"), None,
                                                error=reason)
                continue
            pending.append((index, source, raw.shape[:2], stored))
        size = self.scorer.batch_size
        for start in range(0, len(pending), size):
            chunk = pending[start: start + size]
            batch = torch.from_numpy(np.stack([item[3] for item in chunk])).unsqueeze(1)
            scores = self.scorer.score_tensor(uint8_to_model(batch))
            labels = self.decision.labels(scores.score)
            p_values = self.decision.p_values(scores.score)
            for i, (index, source, shape, _) in enumerate(chunk):
                reconstruction = None if scores.reconstructions is None \
                    else scores.reconstructions[i, 0].numpy()
                heatmap = map_to_original(scores.heatmaps[i].numpy(), shape, config.resize)
                predictions[index] = Prediction(
                    source, float(scores.score[i]), labels[i], float(p_values[i]),
                    heatmap, scores.heat_scale, reconstruction,
                    {name: float(value[i]) for name, value in scores.components.items()},
                    regions=None if self.scorer.region_threshold is None
                    else self.scorer.regions(heatmap))
        return predictions

