"""TensorBoard panels that show, epoch by epoch, what the networks do with normal films
they never trained on: where the critic finds opacity, and the encoder's reconstructions."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from anomaly.data import load_images, uint8_to_model

WATCHED_COUNT = 8


def watched_images(paths: list, preprocess_config, device: torch.device,
                   count: int = WATCHED_COUNT) -> torch.Tensor | None:
    """The first ``count`` readable images of ``paths`` in the model range, or None."""
    if not paths:
        return None
    loaded = load_images(list(paths)[:count], preprocess_config, progress=False)
    if not loaded.paths:
        return None
    return uint8_to_model(loaded.images).to(device)  # (N, 1, S, S)


def _to_image_range(probability: torch.Tensor, size: int) -> torch.Tensor:
    """(N, h, w) probabilities -> (N, 1, S, S) in [-1, 1], bilinearly upsampled."""
    grown = F.interpolate(probability[:, None], size=(size, size), mode="bilinear",
                          align_corners=False)
    return grown * 2 - 1


@torch.no_grad()
def evidence_panel(evidence: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                   pasted: torch.Tensor) -> torch.Tensor:
    """Grid, one row per image: input | evidence | opacities pasted | evidence there.

    Args:
        evidence: maps images (N, 1, S, S) to probabilities (N, h, w) of opacity per cell.
        images: held-out normal films (N, 1, S, S) in [-1, 1].
        pasted: the same films with synthetic opacities (drawn from a fixed seed, so rows
            compare across epochs).
    """
    size = images.shape[-1]
    columns = [images, _to_image_range(evidence(images).float(), size), pasted,
               _to_image_range(evidence(pasted).float(), size)]
    rows = torch.stack(columns, dim=1).flatten(0, 1).float().cpu()  # (N * 4, 1, S, S)
    return make_grid(rows, nrow=4, normalize=True, value_range=(-1, 1))
