"""A Gaussian density of a network's features of normal films, shared by the families.

The density score of an image is the Mahalanobis distance of its embedding (a network's
pooled features made unit length, the critic's optionally square-rooted first, or the
DCGAN discriminator's) from a
Gaussian fitted to the embeddings of the normal training films, with a Ledoit-Wolf
shrunk covariance (as CutPaste and AnatPaste score their critics). An image far from
every normal film in feature space scores high.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


def fit_density(embeddings: np.ndarray) -> dict[str, torch.Tensor]:
    """Fit the Gaussian: mean (C,) and precision (C, C) of (N, C) normal embeddings."""
    from sklearn.covariance import LedoitWolf  # training only: scoring starts faster

    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError("fitting a density needs at least 2 embeddings of shape (N, C)")
    if not np.isfinite(embeddings).all():  # a NaN would pass as "all alike" below
        raise ValueError("fitting a density needs finite embeddings; some are NaN or "
                         "infinite (a diverged network?)")
    if not embeddings.var(0).sum() > 0:  # all alike: Ledoit-Wolf's shrinkage is 0 / 0
        return {"mean": torch.from_numpy(embeddings.mean(0)).float(),
                "precision": torch.eye(embeddings.shape[1])}
    estimate = LedoitWolf().fit(embeddings)
    return {"mean": torch.from_numpy(estimate.location_).float(),
            "precision": torch.from_numpy(estimate.precision_).float()}


def mahalanobis(embeddings: torch.Tensor, density: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mahalanobis distance (B,) of embeddings (B, C) from a fitted density."""
    centred = embeddings.float() - density["mean"].to(embeddings.device)
    precision = density["precision"].to(embeddings.device)
    return (centred @ precision * centred).sum(1).clamp(min=0).sqrt()


def density_and_heat(view_maps: Sequence[torch.Tensor], density: dict[str, torch.Tensor],
                     pool: Callable[[torch.Tensor], torch.Tensor],
                     embed: Callable[[torch.Tensor], torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The density of (flip-averaged) embeddings, and its Grad-CAM on the feature maps.

    The embedding is ``embed(sum of pool(maps) over the views)`` (default: L2-normalised);
    the heat of a cell is the density's gradient times the features there, summed over
    channels and kept where positive (the mirror image's heat flipped back), scaled by the
    number of cells: the cells whose features push the film away from the normal films.

    Args:
        view_maps: (B, C, h, w) features of the images, then (optionally) of their
            mirror images.
        density: the fitted Gaussian (:func:`fit_density`).
        pool: (B, C, h, w) -> (B, C), how the network pools its map into an embedding.
        embed: (B, C) -> (B, C), what the density was fitted on, from the pooled sum.

    Returns:
        (density (B,), heat per cell (B, h, w)).
    """
    if not 1 <= len(view_maps) <= 2:
        raise ValueError("density_and_heat takes the image's maps and at most its mirror's")
    views = [m.detach().float().requires_grad_(True) for m in view_maps]
    with torch.enable_grad():
        pooled = sum(pool(view) for view in views)  # (B, C)
        embedding = (embed or (lambda x: torch.nn.functional.normalize(x, dim=1)))(pooled)
        distance = mahalanobis(embedding, density)
        grads = torch.autograd.grad(distance.sum(), views)
    heats = [(grad * view).sum(1).clamp(min=0) for grad, view in zip(grads, views)]
    cells = heats[0] + sum(heat.flip(-1) for heat in heats[1:])  # (B, h, w)
    return distance.detach(), (cells * cells.shape[-1] * cells.shape[-2]).detach()
