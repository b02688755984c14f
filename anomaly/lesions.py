"""Synthetic lung opacities pasted into normal films, to teach a critic what to look for.

Pneumonia shows as a hazy, brighter region of lung with soft edges and uneven texture.
A discriminator taught to find such regions in *normal* films (and never shown a real
pneumonia) learns local lung appearance rather than "looks like the training hospital",
which is what a plain real/fake critic learns. Each opacity is a rotated ellipse with a
soft edge, modulated by low-frequency noise, kept inside the lung-field prior, and blended
towards white: ``x + alpha * mask * (1 - x)`` in the model range [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from anomaly.lungs import smooth


def paste_opacities(images: torch.Tensor, lung_prior: torch.Tensor, max_count: int = 3,
                    strength: tuple[float, float] = (0.3, 0.8),
                    radius: tuple[float, float] = (0.08, 0.25),
                    generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend 1 to ``max_count`` smooth, textured opacities into each image's lungs.

    Args:
        images: (B, 1, S, S) normal images in [-1, 1].
        lung_prior: (S, S) 0/1 lung-field mask; opacity centres are drawn inside it.
        max_count: most opacities per image.
        strength: range of the blend factor towards white.
        radius: range of the ellipse semi-axes as a fraction of the side.
        generator: random source on the images' device (default: the global one).

    Returns:
        (images with opacities, masks (B, 1, S, S) in [0, 1] saying where they are).
    """
    batch, _, size, _ = images.shape
    device = images.device

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, device=device, generator=generator)

    prior = lung_prior.to(device).float()
    inside = prior.flatten().nonzero().squeeze(1)  # candidate centres
    if inside.numel() == 0:
        raise ValueError("the lung-field prior is empty; cannot place opacities")
    axis = torch.arange(size, device=device, dtype=torch.float32)
    rows, cols = axis.view(1, size, 1), axis.view(1, 1, size)
    counts = torch.randint(1, max_count + 1, (batch,), device=device, generator=generator)
    masks = torch.zeros(batch, size, size, device=device)
    for index in range(max_count):
        centre = inside[torch.randint(inside.numel(), (batch,), device=device,
                                      generator=generator)]
        centre_y = (centre // size).float().view(batch, 1, 1)
        centre_x = (centre % size).float().view(batch, 1, 1)
        semi_a = uniform(*radius, batch).view(batch, 1, 1) * size
        semi_b = uniform(*radius, batch).view(batch, 1, 1) * size
        angle = uniform(0.0, math.pi, batch).view(batch, 1, 1)
        dy, dx = rows - centre_y, cols - centre_x
        u = dx * torch.cos(angle) + dy * torch.sin(angle)
        v = -dx * torch.sin(angle) + dy * torch.cos(angle)
        distance = (u / semi_a) ** 2 + (v / semi_b) ** 2  # 1 on the ellipse's edge
        blob = torch.exp(-2.0 * distance)  # soft edge, no hard border to find
        active = (index < counts).float().view(batch, 1, 1)
        masks = torch.maximum(masks, blob * active)
    coarse = max(2, size // 16)  # texture: low-frequency noise, uneven like consolidation
    texture = F.interpolate(uniform(0.4, 1.0, batch, 1, coarse, coarse), size=(size, size),
                            mode="bicubic", align_corners=False).clamp(0, 1)
    soft_prior = smooth(prior.view(1, 1, size, size), max(1.0, size / 32)).clamp(0, 1)
    masks = masks.unsqueeze(1) * texture * soft_prior  # (B, 1, S, S)
    alpha = uniform(*strength, batch).view(batch, 1, 1, 1)
    pasted = images + alpha * masks * (1 - images)
    return pasted.clamp(-1, 1), masks


def lesion_targets(masks: torch.Tensor, grid: tuple[int, int], present: float = 0.2
                   ) -> torch.Tensor:
    """Per-cell targets (B, h, w) of 0/1: does a cell hold an opacity (mask > ``present``)?"""
    return (F.adaptive_max_pool2d(masks, grid).squeeze(1) > present).float()
