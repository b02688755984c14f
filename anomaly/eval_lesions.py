"""Lesions for measuring heat maps, made by recipes that no family trains on.

A map taught on one recipe of synthetic opacity can learn that recipe rather than
opacity. These recipes differ from the critic's training blobs in shape, edge, texture
and how they change the film, so a map measured on them is measured out of its recipe:

- ``consolidation``: one or two lobe-like regions (an ellipse of random size and tilt
  whose outline is bent by smooth noise), brightened by adding a constant with a soft
  edge: a flat, sharp-bordered opacity, unlike the training blobs' textured blend.
- ``patches``: a soft-edged piece of the same film moved into its lung field where it is
  brighter (AnatPaste's idea, written here on its own: the critic's optional
  ``patches`` synthesis is a cousin, off by default).

Each returns the lesioned films and 0/1 masks of the pixels that visibly changed.
"""

from __future__ import annotations

import math

import torch

from anomaly.lungs import smooth

RECIPES = ("consolidation", "patches")
VISIBLE_CHANGE = 0.02  # on [0, 1] intensities: about 5 grey levels of 255


def _uniform(low: float, high: float, count: int, generator: torch.Generator
             ) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def _lung_pixels(lung_prior: torch.Tensor, what: str
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat indices of the 0/1 lung field's pixels, and the row and column of every pixel
    (S, S); an empty field is refused, naming ``what`` could not be placed."""
    size = lung_prior.shape[-1]
    inside = torch.nonzero(lung_prior.cpu().flatten() > 0.5).flatten()
    if inside.numel() == 0:
        raise ValueError(f"the lung prior is empty: nowhere to place {what}")
    rows, cols = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(),
                                indexing="ij")
    return inside, rows, cols


def paste_consolidations(images: torch.Tensor, lung_prior: torch.Tensor,
                         generator: torch.Generator, max_count: int = 2,
                         radius: tuple[float, float] = (0.06, 0.2),
                         brightening: tuple[float, float] = (0.1, 0.3)
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Add 1 to ``max_count`` lobe-like opacities to each film's lung field.

    Args:
        images: (B, 1, S, S) films in [-1, 1].
        lung_prior: (S, S) 0/1 lung field; centres are drawn inside it, and the
            opacities are cut to it.
        generator: the random source (CPU).
        max_count: most opacities per film.
        radius: range of each semi-axis as a fraction of the side.
        brightening: range of the intensity added on [0, 1].

    Returns:
        (lesioned films in [-1, 1], masks (B, S, S) of 0/1: pixels changed by more
        than :data:`VISIBLE_CHANGE`).
    """
    batch, _, size, _ = images.shape
    inside, rows, cols = _lung_pixels(lung_prior, "a consolidation")
    counts = torch.randint(1, max_count + 1, (batch,), generator=generator)
    region = torch.zeros(batch, size, size)
    for index in range(max_count):
        centre = inside[torch.randint(inside.numel(), (batch,), generator=generator)]
        cy, cx = (centre // size).float().view(-1, 1, 1), (centre % size).float().view(-1, 1, 1)
        ry = (_uniform(*radius, batch, generator) * size).view(-1, 1, 1)
        rx = (_uniform(*radius, batch, generator) * size).view(-1, 1, 1)
        angle = (_uniform(0, math.pi, batch, generator)).view(-1, 1, 1)
        dy, dx = rows - cy, cols - cx
        along = dy * torch.cos(angle) + dx * torch.sin(angle)
        across = -dy * torch.sin(angle) + dx * torch.cos(angle)
        distance = (along / ry) ** 2 + (across / rx) ** 2
        noise = smooth(torch.randn(batch, 1, size, size, generator=generator), size / 16)[:, 0]
        noise = noise / (noise.flatten(1).std(1).view(-1, 1, 1) + 1e-6)
        shape = (distance + 0.35 * noise < 1).float() * (index < counts).float().view(-1, 1, 1)
        region = torch.maximum(region, shape)
    soft = smooth(region[:, None], max(1.0, size / 96))[:, 0] * (lung_prior.cpu() > 0.5)
    added = _uniform(*brightening, batch, generator).view(-1, 1, 1) * soft
    films = (images.cpu() + 1) / 2
    lesioned = (films + added[:, None]).clamp(0, 1)
    return lesioned * 2 - 1, _visible(films, lesioned)


def paste_moved_patches(images: torch.Tensor, lung_prior: torch.Tensor,
                        generator: torch.Generator,
                        radius: tuple[float, float] = (0.05, 0.15),
                        alpha: tuple[float, float] = (0.4, 0.9)
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """A piece of each film (anywhere in its central 80%: rib, heart, diaphragm or lung)
    moved into its lung field and blended in where brighter, in a soft ellipse cut to the
    0/1 lung field ``lung_prior`` (S, S): AnatPaste's idea. Returns (lesioned films in
    [-1, 1], masks (B, S, S) of 0/1: pixels changed by more than :data:`VISIBLE_CHANGE`)."""
    batch, _, size, _ = images.shape
    films = (images.cpu() + 1) / 2
    field = (lung_prior.cpu() > 0.5).float()
    inside, rows, cols = _lung_pixels(lung_prior, "a patch")
    lesioned = films.clone()
    for index in range(batch):
        target = inside[torch.randint(inside.numel(), (1,), generator=generator)].item()
        ty, tx = divmod(target, size)
        sy, sx = (int(v * size) for v in _uniform(0.1, 0.9, 2, generator))
        moved = torch.roll(films[index, 0], shifts=(ty - sy, tx - sx), dims=(0, 1))
        ry, rx = (_uniform(*radius, 2, generator) * size).tolist()
        blob = torch.exp(-(((rows - ty) / ry) ** 2 + ((cols - tx) / rx) ** 2)) * field
        strength = _uniform(*alpha, 1, generator).item() * blob
        lesioned[index, 0] += strength * (moved - films[index, 0]).clamp(min=0)
    return lesioned * 2 - 1, _visible(films, lesioned)


def _visible(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return ((after - before).abs()[:, 0] > VISIBLE_CHANGE).float()


def paste_lesions(recipe: str, images: torch.Tensor, lung_prior: torch.Tensor, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lesions of one ``recipe`` (:data:`RECIPES`) in films (B, 1, S, S) in [-1, 1],
    drawn from ``seed``; returns (lesioned films, 0/1 masks (B, S, S))."""
    generator = torch.Generator().manual_seed(seed)
    if recipe == "consolidation":
        return paste_consolidations(images, lung_prior, generator)
    if recipe == "patches":
        return paste_moved_patches(images, lung_prior, generator)
    raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
