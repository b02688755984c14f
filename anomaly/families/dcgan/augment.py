"""Differentiable augmentation of the discriminator's inputs (DiffAugment).

With a thousand training images a discriminator soon memorises them, and then calls new
patients' normal films abnormal. Augmenting *both* real and generated images the same
way before the discriminator sees them (Zhao et al., "Differentiable Augmentation for
Data-Efficient GAN Training", 2020) keeps it from memorising, while the generator still
learns the un-augmented distribution because the augmentation is differentiable and
applied to its samples too. Only intensity and position change: brightness, contrast
and a small translation, all plausible between hospitals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diff_augment(images: torch.Tensor, brightness: float = 0.2, contrast: float = 0.25,
                 translation: float = 0.125) -> torch.Tensor:
    """Randomly shift brightness, scale contrast and translate each image of a batch.

    Args:
        images: (B, C, H, W) in [-1, 1].
        brightness: largest added offset (in [-1, 1] units).
        contrast: contrast factor drawn from [1 - contrast, 1 + contrast], about the
            image's own mean.
        translation: largest shift as a fraction of the side; borders repeat the edge.

    Returns:
        Augmented images, differentiable with respect to ``images``.
    """
    batch, device, dtype = images.shape[0], images.device, images.dtype
    if brightness > 0:
        images = images + (torch.rand(batch, 1, 1, 1, device=device, dtype=dtype) * 2 - 1) \
            * brightness
    if contrast > 0:
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        factor = 1 + (torch.rand(batch, 1, 1, 1, device=device, dtype=dtype) * 2 - 1) * contrast
        images = (images - mean) * factor + mean
    if translation > 0:
        images = translate(images, translation)
    return images


def translate(images: torch.Tensor, fraction: float) -> torch.Tensor:
    """Shift each image by a random whole number of pixels, up to ``fraction`` of its side."""
    batch, _, height, width = images.shape
    max_y, max_x = int(height * fraction + 0.5), int(width * fraction + 0.5)
    device = images.device
    shift_y = torch.randint(-max_y, max_y + 1, (batch, 1, 1), device=device)
    shift_x = torch.randint(-max_x, max_x + 1, (batch, 1, 1), device=device)
    rows = torch.arange(height, device=device).view(1, height, 1) - shift_y + max_y
    cols = torch.arange(width, device=device).view(1, 1, width) - shift_x + max_x
    padded = F.pad(images, (max_x, max_x, max_y, max_y), mode="replicate")
    index = torch.arange(batch, device=device).view(batch, 1, 1)
    return padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)
