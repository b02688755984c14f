"""Score images with a trained GAN: its discriminator, AnoGAN latent search, encoder modes.

A *mode* says how an image is looked at:

    discriminator   one pass of D over the image and its mirror image; no G(z).
    search          AnoGAN: z optimised from a fixed start by Adam, batched, each image
                    with its own z and loss (results do not depend on the batch); the
                    loss is (1 - lambda) * residual + lambda * discrimination.
    encoder         f-AnoGAN izi_f: z = E(x), one forward pass.
    encoder-search  z starts at E(x) and is refined by a few search steps.

Components per image (NaN where a mode or checkpoint cannot measure one):

    residual       = mean |x - G(z)|                       (pixels; not in discriminator mode)
    discrimination = mean |f(x) - f(G(z))|                 (discriminator features; idem)
    opacity        = mean over the lung-field prior of max(blur(x - G(z)), 0)   (idem)
    critic         = -D(x)                                 (discriminator logit)
    density        = Mahalanobis distance of D's embedding from the training normals'
                     (anomaly.density; checkpoints trained with this version)
    lesion         = strongest cell of D's synthetic-opacity head (lesion_weight > 0)
    brightness     = mean of the input over the lung-field prior (no network at all)

and a *score* kind combines them into the anomaly score:

    density         density (the default where the checkpoint has a lesion head)
    lesion          lesion
    anogan          (1 - lambda) * residual + lambda * discrimination (AnoGAN's)
    lung-opacity    opacity (see anomaly.lungs; the default of older checkpoints)
    lung-brightness brightness: the no-GAN baseline, scored through the same evaluation
    fused           opacity and critic, each standardised by its mean and standard
                    deviation on the normal images held out from training, summed

Why ``density`` of a discriminator taught synthetic opacities is the default, and what
each other score measures on real films: README, "Results".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from anomaly.checkpoint import CheckpointError, checkpoint_digest, load_checkpoint
from anomaly.data import iter_preprocessed_batches, uint8_to_model
from anomaly.density import flip_embedding, mahalanobis
from anomaly.device import autocast, resolve_device
from anomaly.heatmap import heatmap_panel
from anomaly.lungs import geometric_lung_prior, lung_brightness, lung_opacity, opacity_map
from anomaly.models import Discriminator, Encoder, GANArchitecture, Generator
from anomaly.preprocess import PreprocessConfig, preprocess

MODES = ("discriminator", "search", "encoder", "encoder-search")
DEFAULT_ITERATIONS = {"discriminator": 0, "search": 500, "encoder": 0, "encoder-search": 20}
SCORES = ("density", "lesion", "lung-opacity", "fused", "anogan", "lung-brightness")
RECONSTRUCTION_SCORES = ("lung-opacity", "fused", "anogan")  # need G(z)
COMPONENTS = ("residual", "discrimination", "opacity", "critic", "density", "lesion",
              "brightness")


def has_lesion_head(state: dict) -> bool:
    """Whether the checkpoint's discriminator was taught synthetic opacities."""
    return bool(state["architecture"].get("lesion_head"))


def available_modes(state: dict) -> list[str]:
    """Scoring modes a checkpoint supports (encoder modes need a trained encoder)."""
    modes = ["discriminator"] if state.get("feature_density") is not None else []
    if state.get("generator_trained", True):
        modes += list(MODES[1:]) if state.get("encoder") is not None else ["search"]
    return modes


def default_mode(state: dict) -> str:
    """The best measured mode the checkpoint supports: D alone where it learned
    opacities, else the encoder when there is one, else latent search."""
    if has_lesion_head(state) and state.get("feature_density") is not None:
        return "discriminator"
    return "encoder" if state.get("encoder") is not None else "search"


def default_score(state: dict) -> str:
    """The best measured score kind for a checkpoint (README, "Results")."""
    if has_lesion_head(state) and state.get("feature_density") is not None:
        return "density"
    return "lung-opacity"


@dataclass
class BatchScores:
    """Scores of one batch; arrays have one entry per image."""

    score: np.ndarray
    residual: np.ndarray
    discrimination: np.ndarray
    opacity: np.ndarray
    critic: np.ndarray
    density: np.ndarray
    lesion: np.ndarray
    brightness: np.ndarray
    inputs: torch.Tensor  # (B, 1, S, S) model range
    reconstructions: torch.Tensor | None  # (B, 1, S, S) model range; None: no G(z)
    heatmaps: torch.Tensor  # (B, S, S): what the score looks at, per pixel


@dataclass
class ScoreResult:
    """Scores of a list of files, with the files that could not be read."""

    paths: list[Path] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    residual: list[float] = field(default_factory=list)
    discrimination: list[float] = field(default_factory=list)
    opacity: list[float] = field(default_factory=list)
    critic: list[float] = field(default_factory=list)
    density: list[float] = field(default_factory=list)
    lesion: list[float] = field(default_factory=list)
    brightness: list[float] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, paths: list[Path], scores: BatchScores) -> None:
        """Append one scored batch."""
        self.paths.extend(paths)
        for name in ("score", *COMPONENTS):
            getattr(self, name).extend(getattr(scores, name).tolist())

    def components(self) -> dict[str, list[float]]:
        """Each component's values, by name."""
        return {name: list(getattr(self, name)) for name in COMPONENTS}

    def statistics(self) -> dict[str, dict[str, float]]:
        """Mean, std and 90/95/99% quantiles of the score and each component."""
        stats = {}
        for name in ("score", *COMPONENTS):
            values = np.asarray(getattr(self, name), dtype=np.float64)
            stats[name] = {
                "mean": float(values.mean()), "std": float(values.std()),
                **{f"q{q}": float(np.quantile(values, q / 100)) for q in (90, 95, 99)},
            }
        return stats


class Scorer:
    """Scores images with a trained GAN; build one with :meth:`from_checkpoint`.

    Example:
        >>> scorer = Scorer.from_checkpoint("runs/gan", mode="search", iterations=200)
        >>> result = scorer.score_paths(["a.png", "b.dcm"])
        >>> result.score
    """

    def __init__(self, generator: Generator, discriminator: Discriminator,
                 encoder: Encoder | None, preprocess_config: PreprocessConfig,
                 mode: str = "search", iterations: int | None = None, lr: float = 0.05,
                 lam: float = 0.1, batch_size: int = 64, device: str = "auto",
                 amp: bool = True, seed: int = 0, score: str = "anogan",
                 lung_prior: torch.Tensor | None = None,
                 normal_components: dict[str, list[float]] | None = None,
                 holdout_paths: Sequence[str | os.PathLike] = (),
                 feature_density: dict[str, torch.Tensor] | None = None):
        """Build a scorer from networks; :meth:`from_checkpoint` is the usual way.

        ``normal_components`` are the components of held-out normal images scored with
        the same mode and settings (the ``fused`` score and thresholds need them);
        ``lung_prior`` is the (S, S) lung-field mask (default: a geometric one);
        ``holdout_paths`` are the normal images held out from training;
        ``feature_density`` is the Gaussian of D's training-normal embeddings.
        """
        if mode not in MODES:
            raise ValueError(f"unknown scoring mode {mode!r}; choose from {', '.join(MODES)}")
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; choose from {', '.join(SCORES)}")
        if mode.startswith("encoder") and encoder is None:
            raise CheckpointError(f"mode {mode!r} needs a trained encoder; run "
                                  "'anomaly train-encoder' or train with encoder_epochs > 0")
        if mode == "discriminator" and score in RECONSTRUCTION_SCORES:
            raise ValueError(f"score {score!r} needs a reconstruction; use --mode search or "
                             "encoder, or --score density, lesion")
        if score == "density" and feature_density is None:
            raise CheckpointError("this checkpoint has no feature density (trained by an "
                                  "older version); use --score lung-opacity")
        if score == "lesion" and discriminator.lesion_head is None:
            raise CheckpointError("the lesion score needs a discriminator trained with "
                                  "lesion_weight > 0")
        self.device = resolve_device(device)
        # channels-last weights: oneDNN's and cuDNN's faster convolutions (1.4-1.6x for D
        # on this project's CPU; bench/README.md)
        fast = dict(device=self.device, memory_format=torch.channels_last)
        self.generator = generator.to(**fast).eval().requires_grad_(False)
        self.discriminator = discriminator.to(**fast).eval().requires_grad_(False)
        self.encoder = encoder.to(**fast).eval().requires_grad_(False) if encoder else None
        self.preprocess_config = preprocess_config
        self.mode = mode
        self.iterations = DEFAULT_ITERATIONS[mode] if iterations is None else iterations
        self.lr = lr
        self.lam = lam
        self.batch_size = batch_size
        self.use_amp = amp and self.device.type == "cuda"
        self.seed = seed
        self.score = score
        size = generator.arch.image_size
        self.lung_prior = (geometric_lung_prior(size) if lung_prior is None
                           else lung_prior.float()).to(self.device)
        self.normal_components = normal_components
        self.holdout_paths = [Path(p) for p in holdout_paths]
        self.feature_density = feature_density
        self.checkpoint_id: str | None = None  # set by from_checkpoint
        self.latent_dim = generator.arch.latent_dim

    @classmethod
    def from_state(cls, state: dict, mode: str | None = None, score: str | None = None,
                   **options) -> "Scorer":
        """Build a scorer from a loaded checkpoint dict.

        The ``fused`` score is standardised on the normal images held out from training:
        their components are stored in the checkpoint for the default mode, and scored
        here (once) for other modes or settings.
        """
        arch = GANArchitecture(**state["architecture"])
        generator, discriminator = Generator(arch), Discriminator(arch)
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        encoder = None
        if state.get("encoder") is not None:
            encoder = Encoder(arch)
            encoder.load_state_dict(state["encoder"])
        mode = mode or default_mode(state)
        prior = state.get("lung_prior")
        scorer = cls(generator, discriminator, encoder, PreprocessConfig(**state["preprocess"]),
                     mode=mode, score=score or default_score(state), lung_prior=prior,
                     holdout_paths=state.get("holdout_paths", []),
                     feature_density=state.get("feature_density"), **options)
        fitted = state.get("score_stats", {}).get(mode, {})
        if all(fitted.get(k) == v for k, v in scorer.settings().items()):
            scorer.normal_components = fitted.get("components")
        if scorer.normal_components is None and scorer.score == "fused":
            holdout = scorer.available_holdout()
            if len(holdout) >= 2:
                scorer.calibrate(holdout)
            else:
                raise CheckpointError("the fused score needs the normal images held out from "
                                      "training, and they cannot be found; use --score "
                                      "lung-opacity or anogan")
        return scorer

    @classmethod
    def from_checkpoint(cls, model: str | os.PathLike, mode: str | None = None,
                        **options) -> "Scorer":
        """Load a run directory or ``.pt`` file (safely) and build a scorer.

        Args:
            model: run directory or checkpoint file.
            mode: ``discriminator``, ``search``, ``encoder`` or ``encoder-search``;
                default: the best the checkpoint supports.
            **options: ``iterations``, ``lr``, ``lam``, ``batch_size``, ``device``, ``seed``.
        """
        scorer = cls.from_state(load_checkpoint(model), mode=mode, **options)
        scorer.checkpoint_id = checkpoint_digest(model)
        return scorer

    def settings(self) -> dict:
        """The settings that change the components (stored beside fitted statistics)."""
        return {"mode": self.mode, "iterations": self.iterations, "lr": self.lr,
                "lam": self.lam, "seed": self.seed}

    def output_settings(self) -> dict:
        """Everything that makes a row of scores: the checkpoint (by content digest, when
        loaded from a file), the score kind and :meth:`settings`."""
        return {"checkpoint": self.checkpoint_id, "score": self.score, **self.settings()}

    def available_holdout(self) -> list[Path]:
        """The held-out normal images that can still be found on disk."""
        return [p for p in self.holdout_paths if p.exists()]

    def calibrate(self, normal_paths: Sequence[str | os.PathLike],
                  on_batch: Callable[[list[Path], BatchScores], None] | None = None) -> None:
        """Score normal images (never trained on) to standardise the ``fused`` score;
        ``on_batch`` sees each scored batch of that pass (e.g. to measure fidelity)."""
        score, self.score = self.score, "anogan"  # needs no calibration itself
        try:
            result = self.score_paths(normal_paths, progress=False, on_batch=on_batch)
        finally:
            self.score = score
        if len(result.paths) < 2:
            raise CheckpointError("fewer than 2 readable held-out normal images to calibrate "
                                  "the fused score")
        self.normal_components = result.components()

    def combine(self, components: dict[str, np.ndarray]) -> np.ndarray:
        """The anomaly score of this scorer's kind from per-image components."""
        if self.score == "anogan":
            return (1 - self.lam) * np.asarray(components["residual"]) \
                + self.lam * np.asarray(components["discrimination"])
        single = {"lung-opacity": "opacity", "density": "density", "lesion": "lesion",
                  "lung-brightness": "brightness"}
        if self.score in single:
            return np.asarray(components[single[self.score]], dtype=np.float64)
        if self.normal_components is None:
            raise CheckpointError("the fused score needs held-out normal statistics; call "
                                  "calibrate() with normal images")
        total = 0.0
        for name in ("opacity", "critic"):
            normal = np.asarray(self.normal_components[name], dtype=np.float64)
            total = total + (np.asarray(components[name]) - normal.mean()) / \
                max(normal.std(), 1e-12)
        return np.asarray(total, dtype=np.float64)

    def fitted_normal_scores(self) -> list[float] | None:
        """Scores of the held-out normal images, when their components are known."""
        if self.normal_components is None:
            return None
        return self.combine(self.normal_components).tolist()

    # -- scoring tensors -------------------------------------------------------------

    def initial_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Starting z for each image: E(x) in encoder modes, else one fixed seeded z."""
        if self.mode.startswith("encoder"):
            with torch.no_grad(), autocast(self.device, self.use_amp):
                return self.encoder(images).float()
        start = torch.randn(1, self.latent_dim, generator=torch.Generator().manual_seed(self.seed))
        return start.to(self.device).expand(images.shape[0], -1).clone()

    def _components(self, images: torch.Tensor, features_real: torch.Tensor,
                    z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image residual and discrimination losses for latents z, and G(z)."""
        reconstruction = self.generator(z).float()  # (B, 1, S, S)
        residual = (images - reconstruction).abs().flatten(1).mean(1)  # (B,)
        features_fake = self.discriminator.features(reconstruction).float()
        discrimination = (features_real - features_fake).abs().flatten(1).mean(1)  # (B,)
        return residual, discrimination, reconstruction

    def _discriminator_components(self, images: torch.Tensor
                                  ) -> tuple[dict[str, np.ndarray], torch.Tensor, torch.Tensor]:
        """critic, density and lesion of a batch, D's features, and the lesion map.

        Returns:
            (components, features (B, C, 4, 4), lesion probability map (B, S, S) or
            zeros where D has no lesion head).
        """
        discriminator, batch, size = self.discriminator, images.shape[0], images.shape[-1]
        nan = np.full(batch, np.nan)
        lesion_map = torch.zeros(batch, size, size, device=self.device)
        with torch.no_grad(), autocast(self.device, self.use_amp):
            if self.feature_density is None and discriminator.lesion_head is None:
                features = discriminator.features(images).float()  # no mirror pass needed
                return ({"critic": -discriminator.logits(features).float().cpu().numpy(),
                         "density": nan, "lesion": nan}, features, lesion_map)
            embedding, features, features_flipped = flip_embedding(discriminator, images)
            critic = -discriminator.logits(features).float()
            density = nan if self.feature_density is None else \
                mahalanobis(embedding, self.feature_density).cpu().numpy()
            lesion = nan
            if discriminator.lesion_head is not None:  # the image's and its mirror's maps
                cells = (discriminator.lesion_logits(features).float()
                         + discriminator.lesion_logits(features_flipped).float().flip(-1)) / 2
                lesion = cells.flatten(1).amax(1).cpu().numpy()  # (B,)
                lesion_map = torch.nn.functional.interpolate(
                    torch.sigmoid(cells)[:, None], size=(size, size), mode="bilinear",
                    align_corners=False)[:, 0]
        return ({"critic": critic.cpu().numpy(), "density": density, "lesion": lesion},
                features, lesion_map)

    def score_tensor(self, images: torch.Tensor) -> BatchScores:
        """Score a batch of preprocessed images (B, 1, S, S) in [-1, 1]."""
        images = images.to(self.device, torch.float32)
        components, features_real, lesion_map = self._discriminator_components(images)
        components["brightness"] = lung_brightness(images, self.lung_prior).cpu().numpy()
        if self.mode == "discriminator":  # no reconstruction: D's components only
            nan = np.full(images.shape[0], np.nan)
            components.update(residual=nan, discrimination=nan, opacity=nan)
            return BatchScores(self.combine(components), **components, inputs=images.cpu(),
                               reconstructions=None,
                               heatmaps=self._heatmaps(images, None, lesion_map).cpu())
        z = self.initial_latent(images)
        if self.iterations > 0:
            z = z.detach().requires_grad_(True)
            optimizer = torch.optim.Adam([z], lr=self.lr, betas=(0.9, 0.999))
            for _ in range(self.iterations):
                optimizer.zero_grad(set_to_none=True)
                with autocast(self.device, self.use_amp):
                    residual, discrimination, _ = self._components(images, features_real, z)
                    # summed, so each z gets exactly the gradient of its own loss
                    loss = ((1 - self.lam) * residual + self.lam * discrimination).sum()
                loss.backward()
                optimizer.step()
        with torch.no_grad(), autocast(self.device, self.use_amp):
            residual, discrimination, reconstruction = self._components(
                images, features_real, z.detach())
        opacity = lung_opacity(images, reconstruction, self.lung_prior)
        components.update(residual=residual.cpu().numpy(),
                          discrimination=discrimination.cpu().numpy(),
                          opacity=opacity.cpu().numpy())
        return BatchScores(self.combine(components), **components, inputs=images.cpu(),
                           reconstructions=reconstruction.cpu(),
                           heatmaps=self._heatmaps(images, reconstruction, lesion_map).cpu())

    @property
    def heatmap_scale(self) -> float | None:
        """Heat value shown as full red: 1 for the opacity head's probabilities, so a
        normal film stays cool; None (each image's own maximum) for residual maps."""
        return 1.0 if self.score in ("density", "lesion") else None

    def heatmap_panel(self, scores: BatchScores, index: int, display_size: int = 256
                      ) -> np.ndarray:
        """The heatmap panel of image ``index`` of a scored batch: input, G(z) when the
        mode reconstructs, and the heat over the input (:func:`anomaly.heatmap.heatmap_panel`)."""
        reconstruction = (None if scores.reconstructions is None
                          else scores.reconstructions[index, 0].numpy())
        return heatmap_panel(scores.inputs[index, 0].numpy(), reconstruction, display_size,
                             self.heatmap_scale, scores.heatmaps[index].numpy())

    def _heatmaps(self, images: torch.Tensor, reconstruction: torch.Tensor | None,
                  lesion_map: torch.Tensor) -> torch.Tensor:
        """What this scorer's score looks at, per pixel, (B, S, S)."""
        if self.score in ("density", "lesion"):  # where D finds opacity
            return lesion_map
        if self.score == "lung-brightness":
            return ((images + 1) / 2 * self.lung_prior)[:, 0]
        if self.score == "anogan":
            return (images - reconstruction).abs()[:, 0]
        return (opacity_map(images, reconstruction) * self.lung_prior)[:, 0]  # what it averages

    def score_arrays(self, images: Sequence[np.ndarray]) -> BatchScores:
        """Score raw grayscale arrays in [0, 1] (preprocessed with the model's settings)."""
        batch = np.stack([preprocess(image, self.preprocess_config) for image in images])
        return self.score_tensor(torch.from_numpy(batch).unsqueeze(1))

    # -- scoring files ---------------------------------------------------------------

    def iter_batches(self, paths: Sequence[str | os.PathLike]
                     ) -> Iterator[tuple[list[Path], BatchScores | None, list[tuple[Path, str]]]]:
        """Read, preprocess and score files a batch at a time (memory stays flat).

        Yields:
            (paths scored, their scores or None, (path, reason) for files skipped).
        """
        for batch_paths, images, failures in iter_preprocessed_batches(
                paths, self.preprocess_config, self.batch_size):
            scores = self.score_tensor(uint8_to_model(images)) if batch_paths else None
            yield batch_paths, scores, failures

    def score_paths(self, paths: Sequence[str | os.PathLike], progress: bool = True,
                    on_batch: Callable[[list[Path], BatchScores], None] | None = None
                    ) -> ScoreResult:
        """Score files, skipping unreadable ones (listed in ``failures``).

        Args:
            paths: image files.
            progress: show a progress bar with images per second.
            on_batch: called with each scored batch (to write CSV rows or heatmaps
                as results come).
        """
        from tqdm import tqdm

        result = ScoreResult()
        bar = tqdm(total=len(paths), desc=f"scoring ({self.mode})", unit="img",
                   disable=not progress)
        for batch_paths, scores, failures in self.iter_batches(paths):
            result.failures.extend(failures)
            if scores is not None:
                result.add(batch_paths, scores)
                if on_batch is not None:
                    on_batch(batch_paths, scores)
            bar.update(len(batch_paths) + len(failures))
        bar.close()
        return result
