"""The density of the discriminator's features (:mod:`anomaly.density`): each film's
embedding averaged with its mirror image's, and the density fitted to the normals'."""

from __future__ import annotations

from typing import Iterable

import torch

from anomaly.density import fit_density
from anomaly.families.dcgan.networks import Discriminator


def flip_embedding(discriminator: Discriminator, images: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings of images and their mirror images, averaged and re-normalised.

    Args:
        discriminator: a trained discriminator in eval mode.
        images: (B, 1, S, S) in [-1, 1].

    Returns:
        (embedding (B, C), features of the images (B, C, 4, 4), features of the mirrored
        images (B, C, 4, 4)).
    """
    features = discriminator.features(images).float()
    features_flipped = discriminator.features(images.flip(-1)).float()
    pooled = discriminator.embedding(features) + discriminator.embedding(features_flipped)
    return torch.nn.functional.normalize(pooled, dim=1), features, features_flipped


@torch.no_grad()
def fit_density_on_images(discriminator: Discriminator, batches: Iterable[torch.Tensor],
                          device: torch.device) -> dict[str, torch.Tensor]:
    """Embed normal images batch by batch and fit the density to them."""
    discriminator.eval()
    embeddings = [flip_embedding(discriminator, batch.to(device))[0].cpu() for batch in batches]
    return fit_density(torch.cat(embeddings).numpy())
