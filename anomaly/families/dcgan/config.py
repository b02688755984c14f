"""The DCGAN's settings: its section of a training config (no torch needed to read it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EncoderConfig:
    """f-AnoGAN's encoder (izi_f), trained after the GAN with G and D frozen.

    Attributes:
        epochs: passes over the training normals (0: no encoder).
        lr: Adam's learning rate.
        kappa: weight of the discriminator-feature loss beside the image loss.
    """

    epochs: int = 10
    lr: float = 1e-4
    kappa: float = 1.0

    def __post_init__(self) -> None:
        if self.epochs < 0 or not self.lr > 0 or not self.kappa >= 0:
            raise ValueError("epochs must be >= 0, lr > 0 and kappa >= 0, not "
                             f"{self.epochs!r}, {self.lr!r}, {self.kappa!r}")


@dataclass
class DCGANConfig:
    """How the DCGAN is trained: the ``dcgan:`` section of ``train-gan``'s config (its
    unprefixed keys in configs written before sections).

    Attributes:
        epochs: passes over the training normals (0: no DCGAN).
        batch_size, lr, beta1, beta2: Adam, the same for G and D.
        label_smoothing: one-sided: D's target for real films is 1 minus this.
        flip: random horizontal mirror of the training films.
        diff_augment: DiffAugment (brightness, contrast, translation) of D's inputs.
        latent_dim, generator_width, discriminator_width, max_channels, spectral_norm:
            the networks (:class:`anomaly.families.dcgan.networks.GANArchitecture`).
        sample_count: fixed latent vectors drawn every epoch to TensorBoard.
        encoder: the f-AnoGAN encoder's section.
    """

    epochs: int = 25
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    label_smoothing: float = 0.1
    flip: bool = True
    diff_augment: bool = True
    latent_dim: int = 100
    generator_width: int = 32
    discriminator_width: int = 32
    max_channels: int = 512
    spectral_norm: bool = True
    sample_count: int = 64
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs must be >= 0, batch_size >= 1 and lr > 0, not "
                             f"{self.epochs!r}, {self.batch_size!r}, {self.lr!r}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), not {self.beta1!r}, "
                             f"{self.beta2!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), not {self.label_smoothing!r}")
        if min(self.latent_dim, self.generator_width, self.discriminator_width,
               self.max_channels) < 1 or self.sample_count < 0:
            raise ValueError("latent_dim, generator_width, discriminator_width and "
                             "max_channels must be >= 1 and sample_count >= 0")
