"""Where the lungs are, and how much brighter than a healthy reconstruction they look.

Pneumonia shows on a radiograph as opacity: lung that should be dark (air) turns
brighter. A GAN trained on normal films cannot draw that opacity, so inside the lungs
``x - G(z)`` turns positive over a region of several centimetres. Everything else the
absolute residual ``|x - G(z)|`` picks up (ribs, vessels, film borders and letters the
generator draws slightly off) is fine detail of either sign that a Gaussian blur averages
away, or lies outside the lungs. So the lung-opacity score is the mean of the smoothed,
positive residual over a lung-field prior.

The prior comes from the training normals only: the darkest fraction of their mean image
inside a central ellipse (the ellipse keeps out the dark air beside the body), i.e. where
air-filled lung usually lies in this collection's framing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

LUNG_FRACTION = 0.3  # of the central ellipse's pixels


def central_ellipse(size: int) -> torch.Tensor:
    """Boolean (S, S) ellipse covering the chest of a centred frontal film."""
    axis = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return (x / 0.8) ** 2 + ((y + 0.05) / 0.75) ** 2 <= 1


def smoothing_sigma(size: int) -> float:
    """Gaussian sigma in pixels for an S x S image (2 px at 64, 4 px at 128)."""
    return size / 32


def smooth(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, C, S, S) images with reflected borders."""
    kernel = 2 * int(3 * sigma) + 1
    return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def lung_field_prior(normal_images: torch.Tensor, fraction: float = LUNG_FRACTION
                     ) -> torch.Tensor:
    """Lung-field mask (S, S) of 0/1 floats from normal training images.

    Args:
        normal_images: (N, 1, S, S) normal images in the model range [-1, 1] (or uint8).
        fraction: share of the central ellipse's pixels to keep (the darkest).
    """
    mean = mean_normal_image(normal_images)
    size = mean.shape[-1]
    mean = smooth(mean[None, None], smoothing_sigma(size))[0, 0]
    return darkest_inside(mean, central_ellipse(size), fraction)


def mean_normal_image(normal_images: torch.Tensor) -> torch.Tensor:
    """The mean image (S, S), in the model range, of normal images (N, 1, S, S) in
    [-1, 1] or uint8."""
    images = normal_images.float()
    if normal_images.dtype == torch.uint8:
        images = images / 127.5 - 1.0
    return images.mean(0)[0]


def darkest_inside(mean: torch.Tensor, inside: torch.Tensor, fraction: float) -> torch.Tensor:
    """0/1 mask (S, S) of the darkest ``fraction`` of a mean image's pixels within the
    boolean region ``inside``."""
    cutoff = mean[inside].quantile(fraction)
    return ((mean <= cutoff) & inside).float()


def opacity_map(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Smoothed positive residual max(blur(x - G(z)), 0), (B, 1, S, S)."""
    residual = images.float() - reconstructions.float()
    return smooth(residual, smoothing_sigma(images.shape[-1])).clamp(min=0)


def lung_opacity(images: torch.Tensor, reconstructions: torch.Tensor, prior: torch.Tensor
                 ) -> torch.Tensor:
    """Per-image mean of :func:`opacity_map` over the lung-field prior, (B,)."""
    prior = prior.to(images.device)
    weighted = opacity_map(images, reconstructions) * prior
    return weighted.flatten(1).sum(1) / prior.sum()


def lung_brightness(images: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Per-image mean of the (CLAHE-processed) image over the lung-field prior, (B,).

    No model at all: the baseline every learned score has to beat, since opacity is
    brighter lung.
    """
    prior = prior.to(images.device)
    return (images.float() * prior).flatten(1).sum(1) / prior.sum()


def geometric_lung_prior(size: int) -> torch.Tensor:
    """Two ellipses where the lungs of a centred frontal film usually are, (S, S) 0/1.

    The fallback for checkpoints without a prior fitted on their training images.
    """
    axis = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return (((x.abs() - 0.42) / 0.3) ** 2 + ((y + 0.05) / 0.6) ** 2 <= 1).float()


def checkpoint_lung_prior(state: dict, size: int) -> torch.Tensor:
    """A checkpoint's lung prior fitted on its training images (float), or
    :func:`geometric_lung_prior` at ``size`` for one without."""
    prior = state.get("lung_prior")
    return geometric_lung_prior(size) if prior is None else prior.float()


def lung_field(prior: torch.Tensor, margin: float = 1 / 16) -> torch.Tensor:
    """The lung field a map is read in: the 0/1 prior (S, S) grown by ``margin`` of the
    side in every direction (a square dilation), so the lung bases and edges a film's
    framing moves about are inside. (S, S) of 0/1 floats."""
    size = prior.shape[-1]
    radius = max(0, int(round(margin * size)))
    grown = F.max_pool2d((prior > 0.5).float().view(1, 1, size, size), 2 * radius + 1,
                         stride=1, padding=radius)
    return grown[0, 0]


def top_mean(maps: torch.Tensor, field: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Per-image mean of the largest ``fraction`` of map values (B, S, S) inside a 0/1
    field (S, S), (B,)."""
    inside = maps.flatten(1)[:, field.flatten() > 0.5]  # (B, P)
    count = max(1, int(round(fraction * inside.shape[1])))
    return inside.topk(count, dim=1).values.mean(1)
