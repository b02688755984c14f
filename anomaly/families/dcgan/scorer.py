"""Score films with a trained DCGAN: its discriminator, AnoGAN latent search, the encoder.

Modes (how a film is looked at):

    discriminator   one pass of D over the image and its mirror image; no G(z).
    search          AnoGAN: z optimised from a fixed start by Adam, batched, each image
                    with its own z and loss (results do not depend on the batch); the
                    loss is (1 - lambda) * residual + lambda * discrimination.
    encoder         f-AnoGAN izi_f: z = E(x), one forward pass.
    encoder-search  z starts at E(x) and is refined by a few search steps.

Components per image (NaN where a mode or checkpoint cannot measure one):

    residual       = mean |x - G(z)|                       (not in discriminator mode)
    discrimination = mean |f(x) - f(G(z))|                 (D's features; idem)
    mse            = mean (x - G(z))^2                     (idem)
    feature_mse    = mean (f(x) - f(G(z)))^2               (idem)
    opacity        = mean over the lung-field prior of max(blur(x - G(z)), 0)   (idem)
    critic         = -D(x)                                 (D's real/fake logit)
    density        = Mahalanobis distance of D's embedding from the training normals'

Scores: ``density``, ``lung-opacity`` (opacity), ``anogan`` (AnoGAN's (1 - lambda) *
residual + lambda * discrimination, the search's own loss), ``fanogan`` (f-AnoGAN's
izi_f score, mse + kappa * feature_mse, kappa the one the encoder was trained with) and
``fused`` (opacity and critic, each standardised on the held-out normals, summed).
"""

from __future__ import annotations

import numpy as np
import torch

from anomaly.checkpoint import CheckpointError, load_weights
from anomaly.density import density_and_heat
from anomaly.device import autocast, cpu_bf16_supported
from anomaly.families.base import FamilyOutput
from anomaly.families.dcgan import (
    DEFAULT_ITERATIONS,
    MODES,
    RECONSTRUCTION_SCORES,
)
from anomaly.families.dcgan.networks import Discriminator, Encoder, GANArchitecture, Generator
from anomaly.lungs import lung_opacity, opacity_map
from anomaly.standardise import standardised_sum


def build_family(state: dict, mode: str, device: torch.device, lung_prior: torch.Tensor,
                 **options) -> "DCGANFamily":
    """The DCGAN's scoring object for ``mode`` from a checkpoint (its top-level keys);
    ``heat`` is refused (the DCGAN has one heat map per mode)."""
    if options.pop("heat", None):
        raise ValueError(f"--heat applies to mode 'critic', not to mode {mode!r}")
    return DCGANFamily.from_state(state, mode, device, lung_prior, **options)


def recorded_kappa(state: dict) -> float:
    """The feature weight a checkpoint's encoder was trained with: stored beside it, else
    its config's (runs before it was stored; 1.0, the default, without either)."""
    if state.get("encoder_kappa") is not None:
        return float(state["encoder_kappa"])
    config = state.get("train_config") or {}
    section = config.get("dcgan") if isinstance(config.get("dcgan"), dict) else {}
    encoder = section.get("encoder") if isinstance(section.get("encoder"), dict) else {}
    kappa = encoder.get("kappa", config.get("encoder_kappa", 1.0))
    return float(kappa) if isinstance(kappa, (int, float)) and not isinstance(kappa, bool) \
        else 1.0


class DCGANFamily:
    """The DCGAN's scoring object behind the seam (:mod:`anomaly.families`)."""

    name = "dcgan"
    title = "DCGAN"
    modes = MODES
    components = ("residual", "discrimination", "mse", "feature_mse", "opacity", "critic",
                  "density")
    score_kinds = {"density": "density", "lung-opacity": "opacity", "anogan": None,
                   "fanogan": None, "fused": None}
    calibrated_scores = ("fused",)  # standardised on the held-out normals

    def __init__(self, generator: Generator, discriminator: Discriminator,
                 encoder: Encoder | None, mode: str, device: torch.device,
                 lung_prior: torch.Tensor, iterations: int | None = None, lr: float = 0.05,
                 lam: float = 0.1, seed: int = 0, amp: bool = True, cpu_bf16: bool = False,
                 feature_density: dict[str, torch.Tensor] | None = None,
                 generator_trained: bool = True, kappa: float = 1.0):
        """G, D and (optionally) E in eval mode on ``device``, scoring in ``mode``.

        Args:
            iterations, lr, lam, seed: the latent search's steps (None: the mode's
                default), Adam rate, weight of the discrimination loss and start.
            amp: float16 autocast on CUDA; cpu_bf16: bfloat16 on a CPU that has it.
            feature_density: D's fitted density (None: no ``density`` score).
            generator_trained: False refuses the modes that need G.
            kappa: the feature weight of the ``fanogan`` score.
        """
        if mode not in MODES:
            raise ValueError(f"unknown DCGAN mode {mode!r}; choose from {', '.join(MODES)}")
        if mode != "discriminator" and not generator_trained:
            raise CheckpointError(f"mode {mode!r} needs a trained generator, and this "
                                  "checkpoint's generator was never trained")
        if mode.startswith("encoder") and encoder is None:
            raise CheckpointError(f"mode {mode!r} needs a trained encoder; run "
                                  "'anomaly train-encoder' or train with encoder_epochs > 0")
        self.device = device
        fast = dict(device=device, memory_format=torch.channels_last)  # oneDNN, cuDNN
        self.generator = generator.to(**fast).eval().requires_grad_(False)
        self.discriminator = discriminator.to(**fast).eval().requires_grad_(False)
        self.encoder = encoder.to(**fast).eval().requires_grad_(False) if encoder else None
        self.mode = mode
        self.iterations = DEFAULT_ITERATIONS[mode] if iterations is None else iterations
        self.lr, self.lam, self.seed, self.kappa = lr, lam, seed, kappa
        self.use_amp = (amp if device.type == "cuda" else
                        cpu_bf16 and device.type == "cpu" and cpu_bf16_supported())
        self.lung_prior = lung_prior.to(device)
        self.feature_density = feature_density
        self.latent_dim = generator.arch.latent_dim
        self.default_score = "density" if mode == "discriminator" else "lung-opacity"
        if iterations is not None and mode in ("discriminator", "encoder"):
            raise ValueError(f"--iterations applies to the search modes (search, "
                             f"encoder-search), not to mode {mode!r}")

    @classmethod
    def from_state(cls, state: dict, mode: str, device: torch.device,
                   lung_prior: torch.Tensor, **options) -> "DCGANFamily":
        """Build from a checkpoint holding a DCGAN (its top-level keys)."""
        if "generator" not in state:
            raise CheckpointError(f"mode {mode!r} needs a DCGAN, and this checkpoint holds "
                                  "none (train it with epochs > 0)")
        if state["architecture"].get("lesion_head"):
            raise CheckpointError("this checkpoint's discriminator has the opacity head of an "
                                  "earlier version, which this version no longer reads; "
                                  "retrain it (the opacity critic, mode 'critic', succeeds it)")
        arch = GANArchitecture(**{k: v for k, v in state["architecture"].items()
                                  if k != "lesion_head"})
        generator, discriminator = Generator(arch), Discriminator(arch)
        load_weights(generator, state["generator"], "generator")
        load_weights(discriminator, state["discriminator"], "discriminator")
        encoder = None
        if state.get("encoder") is not None:
            encoder = Encoder(arch)
            load_weights(encoder, state["encoder"], "encoder")
        return cls(generator, discriminator, encoder, mode, device, lung_prior,
                   feature_density=state.get("feature_density"),
                   generator_trained=state.get("generator_trained", True),
                   kappa=recorded_kappa(state), **options)

    @property
    def reconstructs(self) -> bool:
        """Whether this mode draws G(z)."""
        return self.mode != "discriminator"

    def check_score(self, score: str) -> None:
        """Refuse a score kind this mode or checkpoint cannot compute, in one line."""
        if not self.reconstructs and score in RECONSTRUCTION_SCORES:
            raise ValueError(f"score {score!r} needs a reconstruction; use --mode search or "
                             "encoder, or --score density")
        if score == "density" and self.feature_density is None:
            raise CheckpointError("this checkpoint has no feature density (trained by an "
                                  "older version); use --score lung-opacity")

    def report_settings(self, score: str) -> dict:
        """What a report of ``score`` lists beside its scores: the settings it depends
        on (None where it does not)."""
        searched = self.mode in ("search", "encoder-search")
        weighs_lam = searched or (score == "anogan" and self.reconstructs)
        return {"iterations": self.iterations, "lam": self.lam if weighs_lam else None,
                "search_lr": self.lr if searched else None,
                "kappa": self.kappa if score == "fanogan" else None}

    def settings(self) -> dict:
        """The settings that change the components."""
        reduced = self.use_amp and self.device.type == "cpu"
        return {"mode": self.mode, "iterations": self.iterations, "lr": self.lr,
                "lam": self.lam, "seed": self.seed, **({"cpu_bf16": True} if reduced else {})}

    def combine(self, score: str, components: dict[str, np.ndarray],
                normal_components: dict[str, list[float]] | None) -> np.ndarray:
        """The ``anogan`` and ``fused`` scores from the components."""
        if score == "anogan":
            return (1 - self.lam) * np.asarray(components["residual"]) \
                + self.lam * np.asarray(components["discrimination"])
        if score == "fanogan":
            return np.asarray(components["mse"]) \
                + self.kappa * np.asarray(components["feature_mse"])
        return standardised_sum(components, normal_components, ("opacity", "critic"), score)


    # -- scoring tensors -------------------------------------------------------------

    def initial_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Starting z for each image: E(x) in encoder modes, else one fixed seeded z."""
        if self.mode.startswith("encoder"):
            with torch.no_grad(), autocast(self.device, self.use_amp):
                return self.encoder(images).float()
        start = torch.randn(1, self.latent_dim, generator=torch.Generator().manual_seed(self.seed))
        return start.to(self.device).expand(images.shape[0], -1).clone()

    def _differences(self, images: torch.Tensor, features_real: torch.Tensor,
                     z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """G(z), and its differences from the images (B, 1, S, S) and from their D
        features (B, C, 4, 4)."""
        reconstruction = self.generator(z).float()  # (B, 1, S, S)
        features_fake = self.discriminator.features(reconstruction).float()
        return reconstruction, images - reconstruction, features_real - features_fake

    def _discriminator_components(self, images: torch.Tensor, heatmaps: bool
                                  ) -> tuple[dict[str, np.ndarray], torch.Tensor,
                                             torch.Tensor | None]:
        """critic and density of a batch, D's features, and the density's heat map.

        Returns:
            (components, features (B, C, 4, 4), Grad-CAM of the density on D's 4 x 4 map
            (B, S, S), or None when not asked for or there is no density).
        """
        discriminator, batch, size = self.discriminator, images.shape[0], images.shape[-1]
        with torch.no_grad(), autocast(self.device, self.use_amp):
            features = discriminator.features(images).float()  # (B, C, 4, 4)
            critic = -discriminator.logits(features).float().cpu().numpy()
            if self.feature_density is None:  # no mirror pass needed
                return {"critic": critic, "density": np.full(batch, np.nan)}, features, None
            features_flipped = discriminator.features(images.flip(-1)).float()
        # each view's embedding normalised before the two are summed and normalised
        # again, as the density was fitted (density.flip_embedding)
        density, cells = density_and_heat([features, features_flipped], self.feature_density,
                                          Discriminator.embedding)
        heat = torch.nn.functional.interpolate(
            cells[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0] \
            if heatmaps else None
        return {"critic": critic, "density": density.cpu().numpy()}, features, heat

    def score_batch(self, images: torch.Tensor, score: str = "lung-opacity",
                    heatmaps: bool = True) -> FamilyOutput:
        """Components of a batch of preprocessed images (B, 1, S, S) in [-1, 1], G(z)
        where the mode reconstructs, and the heat map of ``score``."""
        components, features_real, density_heat = self._discriminator_components(
            images, heatmaps and score == "density")
        if not self.reconstructs:  # no reconstruction: D's components only
            nan = np.full(images.shape[0], np.nan)
            components.update(residual=nan, discrimination=nan, mse=nan, feature_mse=nan,
                              opacity=nan)
            return FamilyOutput(components, density_heat, None, None)
        z = self.initial_latent(images)
        if self.iterations > 0:
            z = z.detach().requires_grad_(True)
            optimizer = torch.optim.Adam([z], lr=self.lr, betas=(0.9, 0.999))
            # summed over the images, so each z gets exactly the gradient of its own
            # loss, and scaled by the pixels per image (Adam ignores the scale): a
            # per-pixel mean's gradients would vanish in float16 on CUDA
            loss_scale = float(images[0].numel())
            for _ in range(self.iterations):
                optimizer.zero_grad(set_to_none=True)
                with autocast(self.device, self.use_amp):
                    _, image_difference, feature_difference = self._differences(
                        images, features_real, z)
                    loss = ((1 - self.lam) * image_difference.abs().flatten(1).mean(1)
                            + self.lam * feature_difference.abs().flatten(1).mean(1)).sum()
                (loss * loss_scale).backward()
                optimizer.step()
        with torch.no_grad(), autocast(self.device, self.use_amp):
            reconstruction, image_difference, feature_difference = self._differences(
                images, features_real, z.detach())
        opacity = lung_opacity(images, reconstruction, self.lung_prior)
        components.update(
            residual=image_difference.abs().flatten(1).mean(1).cpu().numpy(),
            discrimination=feature_difference.abs().flatten(1).mean(1).cpu().numpy(),
            mse=image_difference.square().flatten(1).mean(1).cpu().numpy(),
            feature_mse=feature_difference.square().flatten(1).mean(1).cpu().numpy(),
            opacity=opacity.cpu().numpy())
        heat = self._heatmaps(images, reconstruction, density_heat, score) if heatmaps \
            else None
        return FamilyOutput(components, heat, None, reconstruction)

    def _heatmaps(self, images: torch.Tensor, reconstruction: torch.Tensor,
                  density_heat: torch.Tensor | None, score: str) -> torch.Tensor:
        """What ``score`` looks at, per pixel, (B, S, S) (each image's own scale)."""
        if score == "density":  # the density's Grad-CAM on D's 4 x 4 map
            return density_heat
        if score in ("anogan", "fanogan"):
            return (images - reconstruction).abs()[:, 0]
        return (opacity_map(images, reconstruction) * self.lung_prior)[:, 0]  # what it averages
