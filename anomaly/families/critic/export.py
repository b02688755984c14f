"""What the critic exports (:func:`anomaly.export.export_run`): its network from films to
embedding, logit and (with a map head) opacity map, and the export.json keys only it
needs: the density, the lung field, the map field, the normals' components and the region
threshold."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomaly.families.critic.network import OpacityCritic
from anomaly.families.critic.scorer import views_and_opacity


class CriticEmbedding(nn.Module):
    """The critic as exported: films (B, 1, S, S) -> (embedding (B, C), logit (B,)), with
    ``views`` 1 (the film) or 2 (the film and its mirror averaged) as its density, and
    with a map head also the opacity map (B, S, S) of the film itself."""

    def __init__(self, critic: OpacityCritic, views: int):
        super().__init__()
        self.critic = critic
        self.views = views

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """L2-normalised embedding and opacity logit (flip-averaged with 2 views), and
        the opacity probability per pixel where there is a map head."""
        maps, opacity = views_and_opacity(self.critic, images, self.views)
        pooled = [self.critic.pooled(view_map) for view_map in maps]
        logit = sum(self.critic.logits(p) for p in pooled) / len(pooled)
        embedding = F.normalize(sum(pooled), dim=1)
        return (embedding, logit) if opacity is None else (embedding, logit, opacity)


def export_parts(scorer) -> tuple[nn.Module, list[str], dict]:
    """(network in eval mode, its output names, the family's export.json keys)."""
    family = scorer.family
    network = CriticEmbedding(family.critic, family.views).eval()
    network = network.to(memory_format=torch.contiguous_format)
    outputs = ["embedding", "logit", *(["opacity"] if family.has_map else [])]
    density = family.density
    info = {
        "views": family.views,  # inside the network: for the reader's information
        "density": {"mean": density["mean"].cpu().tolist(),
                    "precision": density["precision"].cpu().tolist()},
    }
    if family.has_map:
        normal = scorer.normal_components or {}
        info.update({
            "heat": scorer.heat_name, "lung_field": family.lung_field.cpu().tolist(),
            "heldout_normal_components": {name: normal.get(name) for name in ("density", "map")},
            "region_threshold": scorer.region_threshold,
            "map_normal_level": family.normal_level,
            "map_field": None if family.map_field is None
            else family.map_field.cpu().tolist()})
    return network, outputs, info
