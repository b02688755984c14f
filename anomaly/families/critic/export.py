"""What the critic exports (:func:`anomaly.export.export_run`): its network from films to
embedding, logit, quietness and (with a map head) opacity map, and the export.json keys
only it needs: the density and its embedding, the normals' components, the lung field,
the map field and the region threshold."""

from __future__ import annotations

import torch
from torch import nn

from anomaly.families.critic.network import OpacityCritic
from anomaly.families.critic.scorer import embed_pooled, quietness, views_and_opacity


class CriticEmbedding(nn.Module):
    """The critic as exported: films (B, 1, S, S) -> (embedding (B, C), logit (B,),
    quietness (B,)), with ``views`` 1 (the film) or 2 (the film and its mirror averaged)
    and ``embedding`` as its density, and with a map head also the opacity map (B, S, S)
    (with two views, the film's averaged with its mirror's mirrored back, as the PyTorch
    scorer draws it)."""

    def __init__(self, critic: OpacityCritic, views: int, embedding: str = "l2"):
        super().__init__()
        self.critic = critic
        self.views = views
        self.embedding = embedding

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The density's embedding, the opacity logit (flip-averaged with 2 views) and the
        quietness, and the opacity probability per pixel where there is a map head."""
        maps, opacity = views_and_opacity(self.critic, images, self.views)
        pooled = [self.critic.pooled(view_map) for view_map in maps]
        logit = sum(self.critic.logits(p) for p in pooled) / len(pooled)
        total = sum(pooled)  # over the views, as the density was fitted
        outputs = (embed_pooled(total, self.embedding), logit, quietness(total))
        return outputs if opacity is None else (*outputs, opacity)


def export_parts(scorer) -> tuple[nn.Module, list[str], dict]:
    """(network in eval mode, its output names, the family's export.json keys)."""
    family = scorer.family
    network = CriticEmbedding(family.critic, family.views, family.embedding).eval()
    network = network.to(memory_format=torch.contiguous_format)
    outputs = ["embedding", "logit", "quiet", *(["opacity"] if family.has_map else [])]
    density = family.density
    normal = scorer.normal_components or {}
    info = {
        "views": family.views,  # inside the network: for the reader's information
        "embedding": family.embedding,  # likewise
        "density": {"mean": density["mean"].cpu().tolist(),
                    "precision": density["precision"].cpu().tolist()},
        "heldout_normal_components": {name: normal.get(name) for name in
                                      ("density", "quiet", "map") if name in family.components},
    }
    if family.has_map:
        info.update({
            "heat": scorer.heat_name, "lung_field": family.lung_field.cpu().tolist(),
            "region_threshold": scorer.region_threshold,
            "map_normal_level": family.normal_level,
            "map_field": None if family.map_field is None
            else family.map_field.cpu().tolist()})
    return network, outputs, info
