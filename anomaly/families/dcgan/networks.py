"""DCGAN generator, discriminator (with a ``features`` view) and encoder.

Pure ``nn.Module``s: explicit constructor arguments, one output type in train and eval
mode, no losses or optimisers. Sizes are powers of two from 32 to 256.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class GANArchitecture:
    """Constructor arguments shared by the generator, discriminator and encoder.

    Attributes:
        image_size: side of the square images, a power of two from 32 to 256.
        channels: image channels (1 for X-rays).
        latent_dim: size of z.
        generator_width: channels of the generator's last hidden layer (DCGAN's ngf).
        discriminator_width: channels of the discriminator's first layer (ndf).
        max_channels: cap on channels in any layer (keeps 128/256 models affordable).
        spectral_norm: spectral normalisation in the discriminator instead of BatchNorm.
    """

    image_size: int = 64
    channels: int = 1
    latent_dim: int = 100
    generator_width: int = 64
    discriminator_width: int = 64
    max_channels: int = 512
    spectral_norm: bool = False

    def __post_init__(self) -> None:
        size = self.image_size
        if size < 32 or size > 256 or size & (size - 1):
            raise ValueError(f"image_size must be a power of two from 32 to 256, not {size}")

    @property
    def num_stride2_blocks(self) -> int:
        """Stride-2 layers between the 4x4 map and the first full-size layer."""
        return int(math.log2(self.image_size)) - 3


def _width(base: int, level: int, cap: int) -> int:
    return min(base * 2**level, cap)


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """Maps z of shape (B, latent_dim) to images (B, C, S, S) in [-1, 1]."""

    def __init__(self, arch: GANArchitecture):
        super().__init__()
        self.arch = arch
        blocks = arch.num_stride2_blocks
        width = arch.generator_width
        channels = _width(width, blocks, arch.max_channels)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(arch.latent_dim, channels, 4, 1, 0, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(True),
        ]  # state size. (width * 2^blocks) x 4 x 4
        for level in reversed(range(blocks)):
            out_channels = _width(width, level, arch.max_channels)
            layers += [
                nn.ConvTranspose2d(channels, out_channels, 4, 2, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(True),
            ]  # state size doubles; channels halve down to `width` at S/2 x S/2
            channels = out_channels
        layers += [nn.ConvTranspose2d(channels, arch.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)  # output: (B, C, S, S)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Generate images from latent vectors (B, latent_dim)."""
        return self.net(z.view(z.shape[0], -1, 1, 1))


def _conv_trunk(arch: GANArchitecture, width: int, spectral: bool) -> tuple[nn.Sequential, int]:
    """Strided conv stack from (B, C, S, S) down to (B, channels, 4, 4)."""

    def conv(cin: int, cout: int) -> nn.Module:
        layer = nn.Conv2d(cin, cout, 4, 2, 1, bias=spectral)
        return nn.utils.spectral_norm(layer) if spectral else layer

    layers: list[nn.Module] = [conv(arch.channels, width), nn.LeakyReLU(0.2, True)]
    channels = width  # state size. width x S/2 x S/2
    for level in range(1, arch.num_stride2_blocks + 1):
        out_channels = _width(width, level, arch.max_channels)
        layers.append(conv(channels, out_channels))
        if not spectral:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.LeakyReLU(0.2, True))
        channels = out_channels  # spatial size halves each block, down to 4 x 4
    return nn.Sequential(*layers), channels


class Discriminator(nn.Module):
    """Scores images (B, C, S, S) with one real/fake logit each, shape (B,)."""

    def __init__(self, arch: GANArchitecture):
        super().__init__()
        self.arch = arch
        self.trunk, channels = _conv_trunk(arch, arch.discriminator_width, arch.spectral_norm)
        head = nn.Conv2d(channels, 1, 4, 1, 0, bias=arch.spectral_norm)
        self.head = nn.utils.spectral_norm(head) if arch.spectral_norm else head
        self.feature_dim = channels * 16

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Intermediate features used by the discrimination loss: (B, channels, 4, 4)."""
        return self.trunk(x)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Real/fake logits (B,) from :meth:`features`."""
        return self.head(features).view(-1)

    @staticmethod
    def embedding(features: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled, L2-normalised :meth:`features`, (B, channels)."""
        return nn.functional.normalize(features.mean(dim=(2, 3)), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Real/fake logits, shape (B,)."""
        return self.logits(self.trunk(x))


class Encoder(nn.Module):
    """Maps images (B, C, S, S) to latent vectors (B, latent_dim) (f-AnoGAN's E)."""

    def __init__(self, arch: GANArchitecture):
        super().__init__()
        self.arch = arch
        self.trunk, channels = _conv_trunk(arch, arch.discriminator_width, spectral=False)
        self.head = nn.Conv2d(channels, arch.latent_dim, 4, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Latent vectors, shape (B, latent_dim)."""
        return self.head(self.trunk(x)).flatten(1)
