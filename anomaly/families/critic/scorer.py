"""Score films with a trained opacity critic: the density of its features, its logit,
its opacity map, and a heat map of where the evidence lies.

The embedding of a film is the critic's pooled features of the film (``views: 1``) or
of the film and its mirror image averaged (``views: 2``), L2-normalised (``embedding:
l2``) or their square roots L2-normalised (``embedding: sqrt``); its ``density`` score is
the Mahalanobis distance of that embedding from the Gaussian fitted to the training
normals' (``anomaly.density``). The normalisation drops how strongly the features fire
overall: the ``quiet`` component keeps it (minus the log of the pooled features' norm;
opacities quieten them), and ``density+quiet`` is the sum of both, each standardised on
the held-out normals.

A critic trained with a map head draws an opacity probability per pixel (the ``map``
heat, the default heat map there, shown above the run's normal level:
:mod:`anomaly.families.critic.normal_level`): its ``map`` score is the mean of the raw
map's top 1% inside the lung field, and ``density+map`` the sum of both scores, each standardised on
the held-out normals. The ``gradcam`` heat (the only one of critics without a map head)
is the density's gradient times the features at each cell of the critic's last feature
map (16 x 16 at 128 px), kept where positive: the cells whose features push the film away
from the normal films.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from anomaly.checkpoint import CheckpointError, load_weights
from anomaly.density import density_and_heat, mahalanobis
from anomaly.device import autocast, cpu_bf16_supported
from anomaly.families.base import FamilyOutput
from anomaly.families.critic import HEATS
from anomaly.families.critic.config import COMBINED, EMBEDDINGS, SCORE_KINDS
from anomaly.families.critic.network import CriticArchitecture, OpacityCritic, fold_batchnorm
from anomaly.families.critic.normal_level import checked_map_field, shown_map
from anomaly.lungs import lung_field, top_mean
from anomaly.standardise import standardised_sum

CPU_PIECE = 4  # images per network pass on the CPU (bench/bench_critic.py --cpu-piece: 1-64 tried)
SQRT_FLOOR = 1e-8  # added before the square root of ``sqrt`` embeddings: a finite gradient at 0


def embed_pooled(pooled: torch.Tensor, embedding: str = "l2") -> torch.Tensor:
    """The density's embedding (B, C) of pooled critic features (B, C), summed over the
    views: L2-normalised (``l2``) or their square roots L2-normalised (``sqrt``)."""
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {', '.join(EMBEDDINGS)}, not {embedding!r}")
    if embedding == "sqrt":
        pooled = (pooled.clamp(min=0) + SQRT_FLOOR).sqrt()
    return F.normalize(pooled, dim=1)


def recorded_views(part: dict) -> int:
    """The views a checkpoint's critic part scores with (runs before views were recorded:
    2, as they were fitted)."""
    return int(part.get("views", 2))


def recorded_embedding(part: dict) -> str:
    """The embedding a checkpoint's critic density was fitted on (runs before it was
    recorded: ``l2``)."""
    return part.get("embedding", "l2")


def quietness(pooled: torch.Tensor) -> torch.Tensor:
    """The ``quiet`` component (B,) of pooled critic features (B, C), summed over the
    views: minus the log of their norm, which the embedding's normalisation drops (the
    higher, the less the critic's features fire)."""
    return -torch.log(pooled.float().norm(dim=1).clamp(min=1e-12))


def film_views(images: torch.Tensor, views: int) -> list[torch.Tensor]:
    """What the critic looks at: the films (B, 1, S, S) alone (``views=1``), or the films
    and their mirror images (``views=2``)."""
    return [images] if views == 1 else [images, images.flip(-1)]


def views_and_opacity(critic: OpacityCritic, images: torch.Tensor, views: int
                      ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The critic's feature maps of each view (:func:`film_views`) and, with a map head,
    its opacity probability per pixel (B, S, S), averaged with the mirror's map mirrored
    back when ``views=2`` (None without a head)."""
    if critic.map_head is None:
        return [critic.feature_map(view) for view in film_views(images, views)], None
    maps, opacities = [], []
    for index, view in enumerate(film_views(images, views)):
        features = critic.block_features(view)
        maps.append(features[-1])
        opacity = torch.sigmoid(critic.opacity_logits(features).float())[:, 0]
        opacities.append(opacity.flip(-1) if index == 1 else opacity)
    return maps, sum(opacities) / len(opacities)


def critic_embedding(critic: OpacityCritic, images: torch.Tensor, views: int,
                     embedding: str = "l2") -> torch.Tensor:
    """The density's embedding (B, C) of images (B, 1, S, S) (:func:`embed_pooled`): of
    the images alone (``views=1``) or with their mirror images' (``views=2``)."""
    pooled = sum(critic.pooled(critic.feature_map(view)).float()
                 for view in film_views(images, views))
    return embed_pooled(pooled, embedding)


class CriticFamily:
    """The critic family's scoring object behind the seam (:mod:`anomaly.families`).

    Components: ``density`` (Mahalanobis distance of the embedding), ``logit`` (the
    opacity logit, averaged over the film and its mirror with ``views=2``), ``quiet``
    (:func:`quietness`) and, with a map head, ``map`` (the mean of the opacity map's top
    1% inside the lung field). Scores: those, ``density+quiet`` and ``density+map``
    (both standardised on the held-out normals, summed). ``views`` (1 or 2) and
    ``embedding`` (:func:`embed_pooled`) are those the density was fitted with, recorded
    in the checkpoint; ``heat`` is ``map`` (the map head's opacity probability per pixel, the
    default where there is a head) or ``gradcam`` (the density's Grad-CAM).
    """

    name = "critic"
    title = "Opacity critic"
    modes = ("critic",)
    default_score = "density"
    reconstructs = False
    calibrated_scores = tuple(COMBINED)  # standardised on the held-out normals
    cpu_piece = CPU_PIECE

    def __init__(self, critic: OpacityCritic, density: dict[str, torch.Tensor],
                 device: torch.device, amp: bool = False, heat_scale: float | None = None,
                 views: int = 1, lung_prior: torch.Tensor | None = None,
                 heat: str | None = None, normal_level: float | None = None,
                 map_field=None, embedding: str = "l2", default_score: str = "density"):
        if views not in (1, 2):
            raise ValueError(f"views must be 1 (the film) or 2 (with its mirror), not {views}")
        if embedding not in EMBEDDINGS:
            raise CheckpointError(f"critic.embedding must be one of {', '.join(EMBEDDINGS)}, "
                                  f"not {embedding!r}")
        self.embedding = embedding
        if default_score not in SCORE_KINDS:
            raise CheckpointError(f"critic.default_score must be one of "
                                  f"{', '.join(SCORE_KINDS)}, not {default_score!r}")
        self.default_score = default_score  # the run's own (runs before it: density)
        self.has_map = critic.map_head is not None
        heat = heat or ("map" if self.has_map else "gradcam")
        if heat not in HEATS:
            raise ValueError(f"heat must be one of {', '.join(HEATS)}, not {heat!r}")
        if heat == "map" and not self.has_map:
            raise CheckpointError("this critic has no map head (trained before it existed, or "
                                  "with critic_map_width 0); use heat 'gradcam'")
        self.views = views
        self.heat = heat
        self.heats = HEATS if self.has_map else ("gradcam",)  # the heat maps it can draw
        self.critic = fold_batchnorm(critic).to(device, memory_format=torch.channels_last)
        self.critic.requires_grad_(False)
        self.density = {k: v.to(device) for k, v in density.items()}
        self.device = device
        self.amp = amp
        self.heat_scale = 1.0 if heat == "map" else heat_scale  # a probability: 1 is red
        self.normal_level = normal_level  # of the map shown (normal_level.py); None: raw
        size = critic.arch.image_size
        field = checked_map_field(map_field, "critic.map_field", size)  # None: the film
        self.map_field = None if field is None else torch.from_numpy(field).to(device)
        prior = torch.ones(size, size) if lung_prior is None else lung_prior.float()
        self.lung_field = lung_field(prior).to(device)  # (S, S) 0/1
        self.components = ("density", "logit", "quiet", *(("map",) if self.has_map else ()))
        self.score_kinds = {"density": "density", "logit": "logit", "quiet": "quiet",
                            "density+quiet": None,
                            **({"map": "map", "density+map": None} if self.has_map else {})}

    @classmethod
    def from_state(cls, state: dict, device: torch.device, amp: bool = False,
                   lung_prior: torch.Tensor | None = None, heat: str | None = None
                   ) -> "CriticFamily":
        """Build from a checkpoint's ``"critic"`` part."""
        critic = OpacityCritic(CriticArchitecture(**state["architecture"]))
        load_weights(critic, state["network"], "critic")
        return cls(critic, state["density"], device, amp, state.get("heat_scale"),
                   recorded_views(state),
                   lung_prior=lung_prior, heat=heat,
                   normal_level=state.get("map_normal_level"),
                   map_field=state.get("map_field"),
                   embedding=recorded_embedding(state),
                   default_score=state.get("default_score", "density"))

    def report_settings(self, score: str) -> dict:
        """What a report of ``score`` lists beside its scores (the same for each)."""
        return {"heat": self.heat, "views": self.views, "embedding": self.embedding,
                "map_head": self.has_map,
                **({"map_normal_level": self.normal_level,
                    "map_field": self.map_field is not None} if self.has_map else {})}

    def settings(self) -> dict:
        """Settings that change the components: the mode, and reduced precision on CPU."""
        reduced = self.amp and self.device.type == "cpu"
        return {"mode": "critic", **({"cpu_bf16": True} if reduced else {})}

    def check_score(self, score: str) -> None:
        """Every score kind of the critic can be computed once it is trained."""

    def combine(self, score: str, components: dict[str, np.ndarray],
                normal_components: dict[str, list[float]] | None) -> np.ndarray:
        """A combined score (:data:`COMBINED`): its components, each standardised on the
        held-out normals, summed (:func:`anomaly.standardise.standardised_sum`)."""
        return standardised_sum(components, normal_components, COMBINED[score], score)

    def score_batch(self, images: torch.Tensor, score: str = "density",
                    heatmaps: bool = True) -> FamilyOutput:
        """Components (B,) of images (B, 1, S, S) in [-1, 1], and their heat maps.

        On the CPU the network runs on pieces of ``cpu_piece`` images (:data:`CPU_PIECE`):
        a piece's activations stay in the cache, which makes the whole batch faster than
        one pass.
        """
        piece = self.cpu_piece if self.device.type == "cpu" else max(len(images), 1)
        parts = [self._score_piece(images[start: start + piece], heatmaps)
                 for start in range(0, max(len(images), 1), piece)]
        components = {name: np.concatenate([p[0][name] for p in parts])
                      for name in parts[0][0]}
        heat = None if parts[0][1] is None else torch.cat([p[1] for p in parts])
        return FamilyOutput(components=components, heatmaps=heat,
                            heat_scale=self.heat_scale, reconstructions=None)

    def _score_piece(self, images: torch.Tensor, heatmaps: bool
                     ) -> tuple[dict[str, np.ndarray], torch.Tensor | None]:
        """Components and heat maps (or None) of one piece of a batch."""
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), autocast(self.device, self.amp):  # (B, C, S', S') per view
            maps, opacity = views_and_opacity(self.critic, images, self.views)
            maps = [view_map.float() for view_map in maps]
        with torch.no_grad():
            pooled_views = [self.critic.pooled(view_map) for view_map in maps]  # (B, C) each
            pooled = sum(pooled_views)
        heat = None
        if heatmaps and self.heat == "gradcam":  # the density's Grad-CAM, upsampled
            density, cells = density_and_heat(
                maps, self.density, self.critic.pooled,
                embed=lambda pooled: embed_pooled(pooled, self.embedding))
            heat = F.interpolate(cells[:, None], size=images.shape[-2:], mode="bilinear",
                                 align_corners=False)[:, 0]
        else:
            with torch.no_grad():
                density = mahalanobis(embed_pooled(pooled, self.embedding), self.density)
            if heatmaps:
                heat = shown_map(opacity, self.normal_level, self.map_field)
        with torch.no_grad():
            logit = sum(self.critic.logits(view) for view in pooled_views) / len(maps)
        components = {"density": density.cpu().numpy(), "logit": logit.cpu().numpy(),
                      "quiet": quietness(pooled).cpu().numpy()}
        if opacity is not None:
            components["map"] = top_mean(opacity, self.lung_field).cpu().numpy()
        return components, heat


def heat_scale_of(family: CriticFamily, normal_images: torch.Tensor,
                  batch_size: int = 64) -> float:
    """The heat shown as full red: the 99th percentile of the heat maps' maxima over
    normal films (model range, (N, 1, S, S)), so a normal film stays cool."""
    maxima = []
    for start in range(0, len(normal_images), batch_size):
        batch = normal_images[start: start + batch_size].to(family.device)
        maxima.append(family.score_batch(batch, heatmaps=True).heatmaps.flatten(1).amax(1).cpu())
    return float(np.quantile(torch.cat(maxima).numpy(), 0.99)) or 1.0


def build_family(state: dict, mode: str, device: torch.device, lung_prior: torch.Tensor,
                 iterations: int | None = None, amp: bool = True, cpu_bf16: bool = False,
                 heat: str | None = None, **ignored) -> CriticFamily:
    """The critic's scoring object from a checkpoint's ``"critic"`` part.

    ``amp``: float16 autocast on CUDA; ``cpu_bf16``: bfloat16 autocast on CPUs that run
    it natively (AVX512-BF16/AMX; about twice as fast, scores within bfloat16 precision).
    ``heat``: ``map`` or ``gradcam`` (default: ``map`` where the critic has a map head).
    ``iterations`` is refused (the critic searches nothing); the search settings ``lr``,
    ``lam`` and ``seed`` do not apply and are ignored.
    """

    part = state.get("critic") or {}
    if part.get("density") is None:
        raise CheckpointError("mode 'critic' needs a trained critic with its fitted density, "
                              "and this checkpoint holds none (train with critic_epochs > 0)")
    if iterations is not None:
        raise ValueError("--iterations applies to the search modes (search, encoder-search), "
                         "not to mode 'critic'")
    fast = (amp if device.type == "cuda" else
            cpu_bf16 and device.type == "cpu" and cpu_bf16_supported())
    return CriticFamily.from_state(part, device, amp=fast, lung_prior=lung_prior, heat=heat)
