"""What the critic learns from: normal films, varied like other hospitals' films, some
with a synthetic opacity.

Pneumonia shows as lung that should be dark (air) turning hazily brighter over a region
of centimetres, with soft edges and uneven texture. :func:`paste_opacities` draws 1 to 3
such regions inside the lung field of a normal film: a Gaussian blob (semi-axes 4-18% of
the side) modulated by smooth noise, masked by a soft lung prior, and blended *towards a
brightness level* (``x + alpha * blob * max(level - x, 0)`` on [0, 1] intensities), so
already-bright tissue barely changes and dark lung turns grey, as consolidation does.
:func:`paste_patches` gives opacities the texture of real anatomy instead (after
AnatPaste): a soft-edged region of the same film, moved into its lung field, blended in
where it is brighter than the lung it covers.

:func:`vary_acquisition` changes what differs between acquisitions and not what marks an
opacity: a mirror image, a gamma curve (exposure and processing), optionally a blur or
sharpening (detector and processing), a zoom and a tilt (distance and positioning) and a
shift (framing).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur

from anomaly.families.critic.config import (  # SYNTHESES: its kinds, named here too
    SYNTHESES,  # noqa: F401
    CriticConfig,
)
from anomaly.lungs import darkest_inside, mean_normal_image, smooth

SHARPNESS_SIGMA = 1 / 128  # the blur of vary_acquisition's sharpness, as a share of the side


def wide_lung_prior(normal_images: torch.Tensor, fraction: float = 0.35) -> torch.Tensor:
    """Where opacities may be placed, wider than the scoring prior: the darkest
    ``fraction`` of the training normals' mean image (unsmoothed) inside a central ellipse
    reaching 84% of the width and 90% of the height, so the lung bases and the edges
    of the lung field are included. (S, S) of 0/1 floats.

    Args:
        normal_images: (N, 1, S, S) normal training films, uint8 or in [-1, 1].
    """
    mean = mean_normal_image(normal_images)  # (S, S)
    size = mean.shape[-1]
    axis = torch.arange(size, dtype=torch.float32) / (size - 1) - 0.5
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return darkest_inside(mean, (x / 0.42) ** 2 + (y / 0.45) ** 2 <= 1, fraction)


def soft_lung_prior(lung_prior: torch.Tensor) -> torch.Tensor:
    """The 0/1 lung-field prior (S, S) with blurred edges (sigma S/64), values in [0, 1]."""
    size = lung_prior.shape[-1]
    return smooth(lung_prior.float().view(1, 1, size, size), max(0.5, size / 64))[0, 0]


def lung_region(normal_images: torch.Tensor, lung_prior: torch.Tensor) -> torch.Tensor:
    """Where a lung can be: the run's lung prior and the wide one
    (:func:`wide_lung_prior`) together, widened by S/16 pixels in every direction. (S, S)
    of 0/1 floats on the CPU.

    Args:
        normal_images: (N, 1, S, S) normal training films, uint8 or in [-1, 1].
        lung_prior: (S, S) 0/1 lung-field prior of the run.
    """
    size = lung_prior.shape[-1]
    lungs = torch.maximum(wide_lung_prior(normal_images.cpu()), lung_prior.float().cpu())
    margin = max(1, size // 16)
    return F.max_pool2d(lungs.view(1, 1, size, size), 2 * margin + 1, stride=1,
                        padding=margin)[0, 0]


def decoy_prior(normal_images: torch.Tensor, lung_prior: torch.Tensor) -> torch.Tensor:
    """Where no lung is: the soft prior (S, S) outside :func:`lung_region`. Opacities
    pasted there are decoys: the map head is taught that a bright blob is an opacity only
    in a lung.

    Args:
        normal_images: (N, 1, S, S) normal training films, uint8 or in [-1, 1].
        lung_prior: (S, S) 0/1 lung-field prior of the run.
    """
    outside = 1 - lung_region(normal_images, lung_prior)
    return soft_lung_prior(outside) * outside


def map_field(normal_images: torch.Tensor, lung_prior: torch.Tensor) -> torch.Tensor:
    """Where the opacity map may show opacity: :func:`lung_region` with blurred edges
    (:func:`soft_lung_prior`), (S, S) in [0, 1] on the CPU. The critic's opacities are
    only ever placed in the lungs, so what its map head says of the neck, the shoulders
    or the abdomen is a guess it was never taught."""
    return soft_lung_prior(lung_region(normal_images, lung_prior)).clamp(0, 1)  # rounding


def _uniform(low: float, high: float, shape: tuple[int, ...], device: torch.device,
             generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, device=device, generator=generator)


def _lung_centres(prior: torch.Tensor, what: str) -> torch.Tensor:
    """Flat indices of the pixels where a soft prior (S, S) exceeds 0.5: where ``what``
    may be centred."""
    inside = (prior > 0.5).flatten().nonzero().squeeze(1)
    if inside.numel() == 0:
        raise ValueError(f"the lung-field prior is empty; cannot place {what}")
    return inside


def _gaussian_blob(size: int, centre_y: torch.Tensor, centre_x: torch.Tensor,
                   radius: tuple[float, float], generator: torch.Generator | None
                   ) -> torch.Tensor:
    """exp(-(dy/ry)^2 - (dx/rx)^2) (B, S, S) about centres (B, 1, 1), each semi-axis
    drawn in ``radius`` times the side (first ry, then rx)."""
    batch, device = centre_y.shape[0], centre_y.device
    axis = torch.arange(size, device=device, dtype=torch.float32)
    rows, cols = axis.view(1, size, 1), axis.view(1, 1, size)
    semi_y = _uniform(*radius, (batch, 1, 1), device, generator) * size
    semi_x = _uniform(*radius, (batch, 1, 1), device, generator) * size
    return torch.exp(-(((rows - centre_y) / semi_y) ** 2 + ((cols - centre_x) / semi_x) ** 2))


def _unit_noise(batch: int, size: int, sigma: float, device: torch.device,
                generator: torch.Generator | None) -> torch.Tensor:
    """White noise blurred at ``sigma`` pixels, scaled to unit spread per film, (B, S, S)."""
    noise = smooth(torch.randn(batch, 1, size, size, device=device, generator=generator),
                   sigma)[:, 0]
    return noise / (noise.flatten(1).std(1).view(batch, 1, 1) + 1e-6)


def _resample(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Images (B, C, S, S) under affine maps ``theta`` (B, 2, 3) from output to input
    coordinates in [-1, 1], bilinear, borders reflected."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def paste_opacities(images: torch.Tensor, soft_prior: torch.Tensor, max_count: int = 3,
                    radius: tuple[float, float] = (0.04, 0.18),
                    level: tuple[float, float] = (0.55, 0.95),
                    alpha: tuple[float, float] = (0.2, 0.7),
                    generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend 1 to ``max_count`` smooth, textured opacities into each film's lungs.

    Args:
        images: (B, 1, S, S) normal films in [-1, 1].
        soft_prior: (S, S) soft lung-field prior in [0, 1] (:func:`soft_lung_prior`);
            centres are drawn where it exceeds 0.5, and it masks every opacity.
        max_count: most opacities per film.
        radius: range of each semi-axis as a fraction of the side.
        level: range of the brightness (on [0, 1]) an opacity blends towards.
        alpha: range of the blend factor.
        generator: random source on the images' device (default: the global one).

    Returns:
        (films with opacities in [-1, 1], masks (B, 1, S, S) in [0, 1]: where and how
        strongly each film was changed).
    """
    batch, _, size, _ = images.shape
    device = images.device
    prior = soft_prior.to(device).float()
    inside = _lung_centres(prior, "opacities")
    counts = torch.randint(1, max_count + 1, (batch,), device=device, generator=generator)
    out = (images + 1) / 2  # (B, 1, S, S) on [0, 1]
    masks = torch.zeros_like(out)
    sigma = max(1.0, size / 32)
    for index in range(max_count):
        centre = inside[torch.randint(inside.numel(), (batch,), device=device,
                                      generator=generator)]
        blob = _gaussian_blob(size, (centre // size).float().view(batch, 1, 1),
                              (centre % size).float().view(batch, 1, 1), radius,
                              generator)  # (B, S, S)
        noise = _unit_noise(batch, size, sigma, device, generator)
        blob = (blob * (1 + 0.8 * noise)).clamp(0, 1) * prior  # uneven, inside the lungs
        blob = blob * (index < counts).float().view(batch, 1, 1)  # (B, S, S)
        strength = _uniform(*alpha, (batch, 1, 1, 1), device, generator) * blob[:, None]
        target = _uniform(*level, (batch, 1, 1, 1), device, generator)
        out = out + strength * (target - out).clamp(min=0)
        masks = torch.maximum(masks, strength)
    return (out * 2 - 1).clamp(-1, 1), masks


def paste_varied_opacities(images: torch.Tensor, soft_prior: torch.Tensor, max_count: int = 3,
                           radius: tuple[float, float] = (0.04, 0.18),
                           generator: torch.Generator | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Opacities of many looks: 1 to ``max_count`` tilted ellipses per film whose edge runs
    from sharp to as soft as a Gaussian, whose texture runs from flat to as uneven as
    :func:`paste_opacities`', and which are either blended towards a brightness level (as
    there) or simply add brightness, over ribs as over lung.

    Each opacity draws its tilt, its edge softness ``s`` (log-uniform in [0.03, 1]: the
    profile is ``sigmoid((1 - d) / s)`` of the ellipse's squared distance ``d``), its noise
    amplitude (0 to 0.8) and its blend (even odds: towards a level in [0.55, 0.95] with
    alpha in [0.2, 0.7], or plus [0.08, 0.35] on [0, 1] intensities). Arguments and
    returns as :func:`paste_opacities`; the masks are the blend weights.
    """
    batch, _, size, _ = images.shape
    device = images.device
    prior = soft_prior.to(device).float()
    inside = _lung_centres(prior, "opacities")
    counts = torch.randint(1, max_count + 1, (batch,), device=device, generator=generator)
    out = (images + 1) / 2  # (B, 1, S, S) on [0, 1]
    masks = torch.zeros_like(out)
    axis = torch.arange(size, device=device, dtype=torch.float32)
    rows, cols = axis.view(1, size, 1), axis.view(1, 1, size)
    for index in range(max_count):
        centre = inside[torch.randint(inside.numel(), (batch,), device=device,
                                      generator=generator)]
        dy = rows - (centre // size).float().view(batch, 1, 1)
        dx = cols - (centre % size).float().view(batch, 1, 1)
        angle = _uniform(0, math.pi, (batch, 1, 1), device, generator)
        along = dy * torch.cos(angle) + dx * torch.sin(angle)
        across = dx * torch.cos(angle) - dy * torch.sin(angle)
        semi_a = _uniform(*radius, (batch, 1, 1), device, generator) * size
        semi_b = _uniform(*radius, (batch, 1, 1), device, generator) * size
        distance = (along / semi_a) ** 2 + (across / semi_b) ** 2
        softness = torch.exp(_uniform(math.log(0.03), 0.0, (batch, 1, 1), device, generator))
        blob = torch.sigmoid((1 - distance) / softness)  # (B, S, S)
        noise = _unit_noise(batch, size, max(1.0, size / 32), device, generator)
        amplitude = _uniform(0.0, 0.8, (batch, 1, 1), device, generator)
        blob = (blob * (1 + amplitude * noise)).clamp(0, 1) * prior
        blob = blob * (index < counts).float().view(batch, 1, 1)
        alpha = _uniform(0.2, 0.7, (batch, 1, 1, 1), device, generator) * blob[:, None]
        target = _uniform(0.55, 0.95, (batch, 1, 1, 1), device, generator)
        added = _uniform(0.08, 0.35, (batch, 1, 1, 1), device, generator)
        additive = torch.rand(batch, 1, 1, 1, device=device, generator=generator) < 0.5
        towards = out + alpha * (target - out).clamp(min=0)
        plus = (out + blob[:, None] * added).clamp(max=1)
        out = torch.where(additive, plus, towards)
        masks = torch.maximum(masks, torch.where(additive, blob[:, None], alpha))
    return (out * 2 - 1).clamp(-1, 1), masks


def paste_patches(images: torch.Tensor, soft_prior: torch.Tensor,
                  radius: tuple[float, float] = (0.04, 0.18),
                  alpha: tuple[float, float] = (0.3, 0.9),
                  generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a soft-edged region of each film into its own lung field, where brighter.

    The region is centred anywhere in the central 80% of the film (rib, heart, diaphragm
    or lung); it lands at a centre drawn inside the lung prior, shaped by a Gaussian
    blob (semi-axes ``radius`` of the side) masked by the prior, and is blended in as
    ``x + alpha * blob * max(moved - x, 0)`` on [0, 1] intensities: the lung turns
    brighter with the texture of the anatomy moved over it.

    Args:
        images: (B, 1, S, S) normal films in [-1, 1].
        soft_prior: (S, S) soft lung-field prior in [0, 1] (:func:`soft_lung_prior`).
        radius: range of each semi-axis as a fraction of the side.
        alpha: range of the blend factor.
        generator: random source on the images' device (default: the global one).

    Returns:
        (films with a patch in [-1, 1], masks (B, 1, S, S) in [0, 1]).
    """
    batch, _, size, _ = images.shape
    device = images.device
    prior = soft_prior.to(device).float()
    inside = _lung_centres(prior, "patches")
    target = inside[torch.randint(inside.numel(), (batch,), device=device, generator=generator)]
    target_y, target_x = (target // size).float(), (target % size).float()  # (B,)
    source_y = _uniform(0.1, 0.9, (batch,), device, generator) * size
    source_x = _uniform(0.1, 0.9, (batch,), device, generator) * size
    # moved(p) = image(p - shift): a translation in grid_sample's [-1, 1] coordinates
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * (target_x - source_x) / size
    theta[:, 1, 2] = -2 * (target_y - source_y) / size
    moved = _resample(images.float(), theta)
    blob = _gaussian_blob(size, target_y.view(-1, 1, 1), target_x.view(-1, 1, 1), radius,
                          generator) * prior
    strength = _uniform(*alpha, (batch, 1, 1, 1), device, generator) * blob[:, None]
    out, moved = (images + 1) / 2, (moved + 1) / 2
    out = out + strength * (moved - out).clamp(min=0)
    return (out * 2 - 1).clamp(-1, 1), strength


def paste_diffuse_opacities(images: torch.Tensor, soft_prior: torch.Tensor,
                            radius: tuple[float, float] = (0.12, 0.3),
                            level: tuple[float, float] = (0.55, 0.95),
                            alpha: tuple[float, float] = (0.15, 0.5),
                            grain: float = 1 / 128,
                            generator: torch.Generator | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend a wide, faint, textured haze into one or both lungs of each film.

    Where :func:`paste_opacities` draws consolidation (a dense region of centimetres),
    this draws what an interstitial or bronchopneumonic pattern looks like: a large
    Gaussian haze per lung (semi-axes ``radius`` of the side; both lungs on two films in
    three), its weight modulated by noise blurred at ``grain`` of the side (1/128: a
    pixel's width at 128 px, so it reads as streaks and nodules; 1/32: the blobs' smooth
    unevenness), masked by the soft lung prior and blended towards a brightness level
    with a small ``alpha``, as there.

    Arguments and returns as :func:`paste_opacities`; the masks are the blend weights.
    """
    batch, _, size, _ = images.shape
    device = images.device
    prior = soft_prior.to(device).float()
    columns = torch.arange(size, device=device).view(1, size)
    out = (images + 1) / 2  # (B, 1, S, S) on [0, 1]
    weight = torch.zeros(batch, size, size, device=device)
    halves = [prior * (columns < size // 2), prior * (columns >= size // 2)]
    centres = [_lung_centres(half, "a haze") for half in halves]  # each lung's pixels
    left_first = torch.rand(batch, device=device, generator=generator) < 0.5
    both = torch.rand(batch, device=device, generator=generator) < 2 / 3
    for left, wanted in ((left_first, torch.ones_like(both)), (~left_first, both)):
        pick = [c[torch.randint(c.numel(), (batch,), device=device, generator=generator)]
                for c in centres]
        centre = torch.where(left, pick[0], pick[1])
        haze = _gaussian_blob(size, (centre // size).float().view(batch, 1, 1),
                              (centre % size).float().view(batch, 1, 1), radius, generator)
        weight = torch.maximum(weight, haze * wanted.float().view(batch, 1, 1))
    fine = _unit_noise(batch, size, max(0.5, size * grain), device, generator)
    amplitude = _uniform(0.3, 1.0, (batch, 1, 1), device, generator)
    weight = (weight * (1 + amplitude * fine)).clamp(0, 1) * prior  # (B, S, S)
    strength = _uniform(*alpha, (batch, 1, 1, 1), device, generator) * weight[:, None]
    target = _uniform(*level, (batch, 1, 1, 1), device, generator)
    out = out + strength * (target - out).clamp(min=0)
    return (out * 2 - 1).clamp(-1, 1), strength


def paste_smooth_haze(images: torch.Tensor, soft_prior: torch.Tensor,
                      generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`paste_diffuse_opacities` with the blobs' smooth unevenness instead of a
    fine grain (``grain`` 1/32). Arguments and returns as :func:`paste_opacities`."""
    return paste_diffuse_opacities(images, soft_prior, grain=1 / 32, generator=generator)


def paste_multifocal_opacities(images: torch.Tensor, soft_prior: torch.Tensor,
                               generator: torch.Generator | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to 10 small opacities scattered over the lung field (semi-axes 3-8% of the
    side), as :func:`paste_opacities` draws them: a patchy, multifocal pattern rather
    than one dense region. Arguments and returns as there."""
    return paste_opacities(images, soft_prior, max_count=10, radius=(0.03, 0.08),
                           generator=generator)


def paste_faint_opacities(images: torch.Tensor, soft_prior: torch.Tensor,
                          generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`paste_opacities` blended in faintly (blend factor 0.1-0.4 instead of
    0.2-0.7): the ill-defined opacities of an early or viral pneumonia, placed and shaped
    as the blobs are. Arguments and returns as there."""
    return paste_opacities(images, soft_prior, alpha=(0.1, 0.4), generator=generator)


def paste_dense_opacities(images: torch.Tensor, soft_prior: torch.Tensor,
                          generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`paste_opacities` blended in densely (blend factor 0.4-0.9 instead of
    0.2-0.7): the other side of :func:`paste_faint_opacities`. Arguments and returns as
    there."""
    return paste_opacities(images, soft_prior, alpha=(0.4, 0.9), generator=generator)


def paste_foreign_patches(images: torch.Tensor, soft_prior: torch.Tensor,
                          radius: tuple[float, float] = (0.08, 0.25),
                          alpha: tuple[float, float] = (0.3, 1.0),
                          generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend the same place of another child's film into each film's lung field (after
    Foreign Patch Interpolation): a change of texture, brighter or darker, that no
    single brightness level describes.

    Each film takes the next film of the batch (the batch's order is random; a batch of
    one takes its own mirror image) over a soft-edged Gaussian region centred inside the
    lung prior (semi-axes ``radius`` of the side, masked by the prior), blended as
    ``x + alpha * blob * (other - x)``.

    Arguments and returns as :func:`paste_opacities`; the masks are the blend weights.
    """
    batch, _, size, _ = images.shape
    device = images.device
    prior = soft_prior.to(device).float()
    inside = _lung_centres(prior, "foreign patches")
    others = images.roll(1, dims=0) if batch > 1 else images.flip(-1)
    centre = inside[torch.randint(inside.numel(), (batch,), device=device, generator=generator)]
    blob = _gaussian_blob(size, (centre // size).float().view(batch, 1, 1),
                          (centre % size).float().view(batch, 1, 1), radius,
                          generator) * prior  # (B, S, S)
    strength = _uniform(*alpha, (batch, 1, 1, 1), device, generator) * blob[:, None]
    out = images + strength * (others - images)
    return out.clamp(-1, 1), strength


def _hila(prior: torch.Tensor) -> torch.Tensor:
    """Each lung's hilum as (row, column) pixels (2, 2): on the row through the middle of
    that half's lung prior, the lung pixel nearest the film's midline."""
    size = prior.shape[-1]
    columns = torch.arange(size, device=prior.device)
    hila = []
    for half in (columns < size // 2, columns >= size // 2):
        lung = (prior > 0.5) & half.view(1, size)
        rows = lung.any(1).nonzero().squeeze(1)
        if rows.numel() == 0:
            raise ValueError("the lung-field prior is empty in one half; cannot place streaks")
        row = rows[rows.numel() // 2]
        inside = lung[row].nonzero().squeeze(1)
        column = inside.max() if half[0] else inside.min()  # the medial edge
        hila.append(torch.stack([row, column]).float())
    return torch.stack(hila)


def paste_perihilar_streaks(images: torch.Tensor, soft_prior: torch.Tensor,
                            count: tuple[int, int] = (6, 16),
                            length: tuple[float, float] = (0.12, 0.3),
                            width: tuple[float, float] = (0.6 / 128, 2.0 / 128),
                            level: tuple[float, float] = (0.55, 0.95),
                            alpha: tuple[float, float] = (0.2, 0.6),
                            generator: torch.Generator | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Streaky opacities radiating from the hila into one or both lungs: the
    peribronchial, interstitial pattern of viral pneumonia rather than a dense region.

    Each lung given streaks (both on two films in three) gets ``count`` line segments from
    near its hilum (:func:`_hila`, jittered by 4% of the side) towards the lateral lung,
    at angles within 75 degrees of horizontal, each ``length`` of the side long and
    ``width`` wide (a Gaussian profile across, fading along its length), masked by the
    soft lung prior and blended towards a brightness level as :func:`paste_opacities`'
    blobs are.

    Arguments and returns as :func:`paste_opacities`; the masks are the blend weights.
    """
    batch, _, size, _ = images.shape
    device = images.device
    prior = soft_prior.to(device).float()
    hila = _hila(prior)  # (2, 2): left-half lung, right-half lung
    axis = torch.arange(size, device=device, dtype=torch.float32)
    rows, cols = axis.view(1, size, 1), axis.view(1, 1, size)
    left_first = torch.rand(batch, device=device, generator=generator) < 0.5
    both = torch.rand(batch, device=device, generator=generator) < 2 / 3
    weight = torch.zeros(batch, size, size, device=device)
    for side, wanted in ((left_first, torch.ones_like(both)), (~left_first, both)):
        hilum = torch.where(side.view(batch, 1), hila[0], hila[1])  # (B, 2)
        outward = torch.where(side, -1.0, 1.0).view(batch, 1, 1)  # left half: go left
        hilum = hilum + _uniform(-0.04, 0.04, (batch, 2), device, generator) * size
        streaks = int(torch.randint(count[0], count[1] + 1, (1,), device=device,
                                    generator=generator))
        for _ in range(streaks):
            angle = _uniform(-75, 75, (batch, 1, 1), device, generator) * math.pi / 180
            reach = _uniform(*length, (batch, 1, 1), device, generator) * size
            half_width = _uniform(*width, (batch, 1, 1), device, generator) * size
            dy, dx = rows - hilum[:, 0].view(batch, 1, 1), cols - hilum[:, 1].view(batch, 1, 1)
            along = outward * dx * torch.cos(angle) + dy * torch.sin(angle)
            across = dy * torch.cos(angle) - outward * dx * torch.sin(angle)
            inside = (along > 0) & (along < reach)
            fade = (1 - along / reach).clamp(0, 1) ** 0.5
            line = torch.exp(-(across / half_width) ** 2) * fade * inside
            weight = torch.maximum(weight, line * wanted.float().view(batch, 1, 1))
    weight = weight * prior
    strength = _uniform(*alpha, (batch, 1, 1, 1), device, generator) * weight[:, None]
    target = _uniform(*level, (batch, 1, 1, 1), device, generator)
    out = (images + 1) / 2
    out = out + strength * (target - out).clamp(min=0)
    return (out * 2 - 1).clamp(-1, 1), strength


def paste_hyperinflation(images: torch.Tensor, soft_prior: torch.Tensor,
                         stretch: tuple[float, float] = (1.06, 1.16),
                         darken: tuple[float, float] = (0.03, 0.10),
                         generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lungs made longer and more lucent: the hyperinflation of a child's viral chest
    (air trapped, the diaphragm pushed down) rather than an opacity.

    Each film is stretched downwards from the top of the lung field by a factor drawn in
    ``stretch``, in the columns the lungs occupy (the soft prior's largest value down each
    column: fading to no stretch outside them), and the stretched lung field is then
    darkened by a fraction drawn in ``darken`` of its brightness. Arguments as
    :func:`paste_opacities`; the masks are how far each pixel changed, scaled to 0.6 at
    each film's largest change.
    """
    batch, _, size, _ = images.shape
    device = images.device
    prior = soft_prior.to(device).float()
    lung_rows = (prior > 0.5).any(1).nonzero().squeeze(1)
    if lung_rows.numel() == 0:
        raise ValueError("the lung-field prior is empty; cannot stretch the lungs")
    axis = (2 * torch.arange(size, device=device, dtype=torch.float32) + 1) / size - 1
    rows, cols = axis.view(1, size, 1), axis.view(1, 1, size)  # grid_sample coordinates
    top = axis[lung_rows.min()]
    factor = _uniform(*stretch, (batch, 1, 1), device, generator)
    stretched = torch.where(rows > top, top + (rows - top) / factor, rows)  # (B, S, 1)
    in_lungs = prior.amax(0).view(1, 1, size)  # how much lung each column holds
    source_rows = rows + in_lungs * (stretched - rows)  # (B, S, S)
    grid = torch.stack([cols.expand(batch, size, size), source_rows], dim=-1)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                           align_corners=False)
    moved_prior = F.grid_sample(prior.expand(batch, 1, size, size), grid, mode="bilinear",
                                padding_mode="zeros", align_corners=False)
    lucency = _uniform(*darken, (batch, 1, 1, 1), device, generator) * moved_prior
    out = ((warped + 1) / 2 * (1 - lucency)) * 2 - 1
    change = (out - images).abs()
    masks = 0.6 * change / change.flatten(1).amax(1).clamp_min(1e-6).view(batch, 1, 1, 1)
    return out.clamp(-1, 1), masks


PASTERS = {"blobs": paste_opacities, "patches": paste_patches,
           "varied": paste_varied_opacities, "diffuse": paste_diffuse_opacities,
           "haze": paste_smooth_haze, "multifocal": paste_multifocal_opacities,
           "foreign": paste_foreign_patches, "streaks": paste_perihilar_streaks,
           "faint": paste_faint_opacities, "dense": paste_dense_opacities,
           "hyperinflation": paste_hyperinflation}
MIXTURES = {"mixed": ("blobs", "patches"), "blobs+diffuse": ("blobs", "diffuse"),
            "blobs+haze": ("blobs", "haze"), "blobs+multifocal": ("blobs", "multifocal"),
            "blobs+foreign": ("blobs", "foreign"), "blobs+streaks": ("blobs", "streaks"),
            "blobs+faint": ("blobs", "faint"),
            "blobs+hyperinflation": ("blobs", "hyperinflation")}


def synthesise(images: torch.Tensor, soft_prior: torch.Tensor, kind: str = "blobs"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic opacities of one ``kind`` (:data:`SYNTHESES`): ``blobs``
    (:func:`paste_opacities`), ``patches`` (:func:`paste_patches`), ``varied``
    (:func:`paste_varied_opacities`), ``diffuse`` (:func:`paste_diffuse_opacities`),
    ``haze`` (:func:`paste_smooth_haze`), ``multifocal``
    (:func:`paste_multifocal_opacities`), ``foreign`` (:func:`paste_foreign_patches`),
    ``streaks`` (:func:`paste_perihilar_streaks`), ``faint``
    (:func:`paste_faint_opacities`), ``dense`` (:func:`paste_dense_opacities`),
    ``hyperinflation`` (:func:`paste_hyperinflation`), or a mixture that gives each film
    blobs or the other kind at random: ``mixed`` (patches), ``blobs+diffuse``,
    ``blobs+haze``, ``blobs+multifocal``, ``blobs+foreign``, ``blobs+streaks``,
    ``blobs+faint``, ``blobs+hyperinflation``. Returns (films, masks) as those do."""
    if kind in PASTERS:
        return PASTERS[kind](images, soft_prior)
    if kind not in MIXTURES:
        raise ValueError(f"synthesis must be one of {', '.join(SYNTHESES)}, not {kind!r}")
    first, second = (PASTERS[name](images, soft_prior) for name in MIXTURES[kind])
    use_second = (torch.rand(len(images), device=images.device) < 0.5).view(-1, 1, 1, 1)
    return (torch.where(use_second, second[0], first[0]),
            torch.where(use_second, second[1], first[1]))


def vary_as_configured(images: torch.Tensor, config: CriticConfig,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`vary_acquisition` with a :class:`CriticConfig`'s settings (its shift as a
    fraction of the images' side), as training varies films."""
    return vary_acquisition(images, tuple(config.gamma_range),
                            int(round(config.shift_fraction * images.shape[-1])),
                            tuple(config.scale_range), config.rotation_degrees,
                            generator=generator, sharpness=config.sharpness)


def vary_acquisition(images: torch.Tensor, gamma: tuple[float, float] = (0.8, 1.25),
                     max_shift: int = 0, scale: tuple[float, float] = (1.0, 1.0),
                     max_rotation: float = 0.0, generator: torch.Generator | None = None,
                     sharpness: float = 0.0) -> torch.Tensor:
    """Mirror half the films, apply a random gamma curve, blur or sharpen them, zoom and
    tilt, and a random circular shift.

    Args:
        images: (B, 1, S, S) films in [-1, 1].
        gamma: range of the gamma exponent on [0, 1] intensities ((1, 1): none).
        max_shift: largest shift in pixels along each axis (0: none).
        scale: range of the zoom factor about the centre ((1, 1): none); borders are
            reflected.
        max_rotation: largest tilt in degrees either way (0: none).
        generator: random source on the images' device.
        sharpness: largest amount of blur or sharpening either way (0: none): each film
            becomes ``x + a * (x - blur(x))`` with ``a`` drawn from ``[-sharpness,
            sharpness]`` (``a = -1``: the blurred film; ``a > 0``: an unsharp mask), the
            blur Gaussian with sigma ``SHARPNESS_SIGMA`` of the side, as films of another
            detector or processing chain differ.

    Returns:
        (B, 1, S, S) films in [-1, 1].
    """
    batch, device = images.shape[0], images.device
    flip = torch.rand(batch, device=device, generator=generator) < 0.5
    images = torch.where(flip.view(batch, 1, 1, 1), images.flip(-1), images)
    if gamma != (1.0, 1.0):
        exponent = _uniform(*gamma, (batch, 1, 1, 1), device, generator)
        images = ((images + 1) / 2).clamp(0, 1).pow(exponent) * 2 - 1
    if sharpness > 0:
        amount = _uniform(-sharpness, sharpness, (batch, 1, 1, 1), device, generator)
        sigma = SHARPNESS_SIGMA * images.shape[-1]
        blurred = gaussian_blur(images, [2 * math.ceil(2 * sigma) + 1] * 2, [sigma] * 2)
        images = (images + amount * (images - blurred)).clamp(-1, 1)
    if tuple(scale) != (1.0, 1.0) or max_rotation > 0:
        zoom = _uniform(*scale, (batch,), device, generator)
        angle = _uniform(-max_rotation, max_rotation, (batch,), device, generator) \
            * (math.pi / 180)
        theta = torch.zeros(batch, 2, 3, device=device)  # output -> input coordinates
        theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(angle) / zoom
        theta[:, 0, 1] = -torch.sin(angle) / zoom
        theta[:, 1, 0] = torch.sin(angle) / zoom
        images = _resample(images, theta)
    if max_shift > 0:
        shifts = torch.randint(-max_shift, max_shift + 1, (batch, 2), generator=generator,
                               device=device).tolist()
        images = torch.stack([image.roll(shift, dims=(-2, -1))
                              for image, shift in zip(images, shifts)])
    return images
