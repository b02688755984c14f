"""The critic's part of scoring an export (:class:`anomaly.exported.ExportedScorer`),
with NumPy alone: its export.json keys checked, and its network's outputs (embedding,
logit and, with a map head, the opacity map) turned into its components and score."""

from __future__ import annotations

import numpy as np

from anomaly import validate
from anomaly.families.critic.config import COMBINED
from anomaly.families.critic.normal_level import (
    checked_map_field,
    checked_normal_level,
    shown_map,
)
from anomaly.standardise import standardised_sum
from anomaly.validate import BadValue


class CriticExportReader:
    """Components of exported critic outputs: ``density`` (Mahalanobis distance of the
    embedding), ``logit``, ``brightness``, ``quiet`` (exports written before it: none)
    and, with a map, ``map`` (the top 1% of the map inside the lung field, as
    :func:`anomaly.lungs.top_mean`)."""

    def __init__(self, info: dict):
        size = int(info["preprocess"]["image_size"])
        validate.density_part(info.get("density"), "density")
        normal = info.get("heldout_normal_components")
        if "map" in info["components"]:
            validate.lung_prior(info.get("lung_field"), "lung_field", size)
        if "map" in info["components"] or normal is not None:
            if not isinstance(normal, dict):
                raise BadValue("heldout_normal_components is missing")
            for name, values in normal.items():
                validate.number_list(values, f"heldout_normal_components.{name}")
        self.score = info["score"]
        self.mean = np.asarray(info["density"]["mean"], dtype=np.float64)
        self.precision = np.asarray(info["density"]["precision"], dtype=np.float64)
        self.lung_prior = np.asarray(info["lung_prior"], dtype=np.float64)
        self.has_map = "map" in info["components"]
        self.has_quiet = "quiet" in info["components"]  # its network's third output
        self.output_count = 2 + self.has_quiet + self.has_map  # the network's outputs
        missing = [name for name in COMBINED.get(self.score, ()) if name not in
                   info["components"]]
        if missing or not {"density", "logit"} <= set(info["components"]):
            raise BadValue(f"components {info['components']} lack what the network gives "
                           f"or the {self.score} score needs")
        self.normal_components = normal or {}
        self.normal_level = checked_normal_level(info.get("map_normal_level"),
                                                 "map_normal_level")
        self.map_field = checked_map_field(info.get("map_field"), "map_field", size)
        if self.has_map:
            self.lung_field = np.asarray(info["lung_field"], dtype=np.float64) > 0.5

    def check_outputs(self, shapes: list[list]) -> None:
        """Refuse a network that does not give the outputs the components name, or whose
        embedding is not as wide as the density's mean.

        Raises:
            BadValue: naming both counts or both widths.
        """
        if len(shapes) != self.output_count:
            raise BadValue(f"its components name {self.output_count} network outputs, and "
                           f"the network gives {len(shapes)}; export again")
        width = shapes[0][1] if len(shapes[0]) == 2 else None
        if isinstance(width, int) and width != len(self.mean):
            raise BadValue(f"density.mean has {len(self.mean)} values and the network's "
                           f"embedding {width}; export again")

    def components(self, images: np.ndarray, outputs: list[np.ndarray]
                   ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """(components (B,) by name, opacity maps as shown (B, S, S) or None) of films
        (B, 1, S, S)."""
        embedding, logit, *rest = outputs
        quiet, opacity = (rest[0], rest[1:]) if self.has_quiet else (None, rest)
        centred = embedding.astype(np.float64) - self.mean
        density = np.sqrt(np.clip(np.einsum("bi,ij,bj->b", centred, self.precision, centred),
                                  0, None))
        brightness = (images[:, 0] * self.lung_prior).reshape(len(images), -1).sum(1) \
            / self.lung_prior.sum()
        components = {"density": density, "logit": logit.astype(np.float64),
                      "brightness": brightness.astype(np.float64)}
        if quiet is not None:
            components["quiet"] = quiet.astype(np.float64)
        heat = None
        if self.has_map:
            raw = opacity[0].astype(np.float32)  # (B, S, S)
            heat = shown_map(raw, self.normal_level, self.map_field)
            inside = raw.reshape(len(heat), -1)[:, self.lung_field.ravel()].astype(np.float64)
            count = max(1, int(round(0.01 * inside.shape[1])))  # the top 1% (lungs.top_mean)
            components["map"] = np.sort(inside, axis=1)[:, -count:].mean(1)
        return components, heat

    def score_of(self, components: dict[str, np.ndarray]) -> np.ndarray:
        """The exported score kind read from the components."""
        if self.score in COMBINED:
            return standardised_sum(components, self.normal_components, COMBINED[self.score],
                                    self.score, source="export.json")
        return components[{"lung-brightness": "brightness"}.get(self.score, self.score)]
