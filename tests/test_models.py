"""Generator, discriminator and encoder shapes at every supported size."""

from __future__ import annotations

import pytest
import torch

from anomaly.families.dcgan.networks import Discriminator, Encoder, GANArchitecture, Generator


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("spectral", [False, True])
def test_shapes(size, spectral):
    arch = GANArchitecture(image_size=size, latent_dim=16, generator_width=8,
                           discriminator_width=8, spectral_norm=spectral)
    generator, discriminator, encoder = Generator(arch), Discriminator(arch), Encoder(arch)
    z = torch.randn(3, 16)
    images = generator(z)
    assert images.shape == (3, 1, size, size)
    assert images.abs().max() <= 1.0
    assert discriminator(images).shape == (3,)
    features = discriminator.features(images)
    assert features.shape[0] == 3 and features.shape[2:] == (4, 4)
    assert features[0].numel() == discriminator.feature_dim
    assert encoder(images).shape == (3, 16)


def test_same_output_in_train_and_eval_apart_from_batch_statistics():
    """One fixed output type and shape in both modes; eval uses the running statistics,
    so with BatchNorm the values differ, and two eval calls agree exactly."""
    arch = GANArchitecture(image_size=32, latent_dim=8, generator_width=8, discriminator_width=8)
    discriminator = Discriminator(arch)
    x = torch.randn(4, 1, 32, 32)
    train_out = discriminator.train()(x)
    eval_out = discriminator.eval()(x)
    assert isinstance(train_out, torch.Tensor) and isinstance(eval_out, torch.Tensor)
    assert train_out.shape == eval_out.shape == (4,)
    assert not torch.allclose(train_out, eval_out)
    assert torch.equal(eval_out, discriminator(x))


@pytest.mark.parametrize("size", [16, 48, 512])
def test_unsupported_sizes_are_refused(size):
    with pytest.raises(ValueError, match="power of two"):
        GANArchitecture(image_size=size)
