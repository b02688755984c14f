"""Checks of the critic's part of a checkpoint (:func:`anomaly.checkpoint.check_values`)."""

from __future__ import annotations

from typing import Any

from anomaly import validate
from anomaly.families.critic.normal_level import checked_map_field, checked_normal_level
from anomaly.validate import BadValue


def check_critic_part(part: Any) -> None:
    """The critic's architecture, density, heat scale, map level and map field (see
    :func:`check_values`)."""
    from anomaly.families.critic.network import CriticArchitecture

    if not isinstance(part, dict):
        raise BadValue("critic is not a dict")
    arch = part.get("architecture")
    if not isinstance(arch, dict):
        raise BadValue("critic.architecture is missing")
    if not isinstance(part.get("network"), dict):
        raise BadValue("critic.network (the weights) is missing")
    try:
        dim = CriticArchitecture(**arch).feature_dim
    except (TypeError, ValueError) as err:
        raise BadValue(f"critic.architecture: {err}") from None
    if part.get("density") is not None:
        validate.density_part(part["density"], "critic.density", dim)
    validate.positive_number(part.get("heat_scale"), "critic.heat_scale", allow_none=True)
    checked_normal_level(part.get("map_normal_level"), "critic.map_normal_level")
    checked_map_field(part.get("map_field"), "critic.map_field",
                      CriticArchitecture(**arch).image_size)
    views = part.get("views", 2)  # as the scorer reads a part without it (recorded_views)
    if views not in (1, 2) or isinstance(views, bool):
        raise BadValue(f"critic.views is {views!r}, not 1 or 2")
