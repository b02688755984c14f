"""The DCGAN's TensorBoard panel of its encoder's reconstructions."""

from __future__ import annotations

import torch
from torchvision.utils import make_grid

from anomaly.families.dcgan.networks import Encoder, Generator


@torch.no_grad()
def reconstruction_panel(generator: Generator, encoder: Encoder, images: torch.Tensor
                         ) -> torch.Tensor:
    """Grid, one row per image: input | G(E(x)) | |x - G(E(x))| (0 black, 2 white)."""
    reconstruction = generator(encoder(images)).float()
    residual = (images - reconstruction).abs() - 1  # [0, 2] shown as [-1, 1]
    rows = torch.stack([images, reconstruction, residual], dim=1).flatten(0, 1).cpu()
    return make_grid(rows, nrow=3, normalize=True, value_range=(-1, 1))
