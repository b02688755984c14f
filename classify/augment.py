"""Random augmentation of training batches, on the device, different for every image.

Flip, small rotation, translation and zoom are one affine warp per image
(``affine_grid`` + ``grid_sample``); contrast scales each image around its mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Ranges of the random changes (0 disables one).

    Attributes:
        flip: mirror half of the images left-right.
        rotation_degrees: rotate by up to this many degrees either way.
        translate: shift by up to this fraction of the side either way.
        zoom: scale by a factor in ``[1 - zoom, 1 + zoom]``.
        contrast: scale contrast by a factor in ``[1 - contrast, 1 + contrast]``.
    """

    flip: bool = True
    rotation_degrees: float = 10.0
    translate: float = 0.1
    zoom: float = 0.1
    contrast: float = 0.2


def augment_batch(images: torch.Tensor, config: AugmentConfig,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly augment a batch of model-range images.

    Args:
        images: (B, C, S, S) float tensor in [-1, 1].
        config: augmentation ranges.
        generator: CPU random generator for reproducible draws.

    Returns:
        Augmented (B, C, S, S) tensor in [-1, 1] on the same device.
    """
    count, device = images.shape[0], images.device

    def uniform(half_width: float) -> torch.Tensor:
        return (torch.rand(count, generator=generator) * 2 - 1) * half_width

    angle = uniform(math.radians(config.rotation_degrees))
    scale = 1.0 + uniform(config.zoom)
    shift = torch.stack([uniform(config.translate), uniform(config.translate)], dim=1) * 2
    mirror = torch.ones(count)
    if config.flip:
        mirror = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * mirror, -sin, shift[:, 0]], dim=1),
                         torch.stack([sin * mirror, cos, shift[:, 1]], dim=1)], dim=1)
    grid = F.affine_grid(theta.to(device), list(images.shape), align_corners=False)
    # pad with black (-1): X-rays have dark borders, zeros would add a grey frame
    warped = F.grid_sample(images + 1.0, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False) - 1.0
    factor = (1.0 + uniform(config.contrast)).to(device).view(-1, 1, 1, 1)
    mean = warped.mean(dim=(1, 2, 3), keepdim=True)
    return ((warped - mean) * factor + mean).clamp_(-1.0, 1.0)
