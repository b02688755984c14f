"""Score images with a trained run, whatever its model family.

The :class:`Scorer` reads files, preprocesses them as the checkpoint says, batches them
and hands each batch to one family's scoring object (the seam, :mod:`anomaly.families`),
which returns named components per image, a heat map and its reconstruction (or None).
The shell adds ``brightness`` (the mean of the input over the lung-field prior: no
network at all) and turns components into the score kind asked for:

    critic family   density (default), logit
    dcgan family    density, lung-opacity, anogan, fanogan, fused (anomaly.families.dcgan)
    any             lung-brightness: the no-GAN baseline, scored through the same evaluation

Modes say which family looks and how: ``critic``; ``discriminator``, ``search`` (AnoGAN),
``encoder``, ``encoder-search`` (the DCGAN). The default is the best measured one the
checkpoint holds. What each score measures on real films: README, "Results".
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from anomaly.checkpoint import CheckpointError, checkpoint_digest, load_checkpoint
from anomaly.data import iter_preprocessed_batches, uint8_to_model
from anomaly.decision import Decision, make_decision, threshold_key
from anomaly.device import resolve_device
from anomaly.families import FAMILIES, families_in, family_of_mode
from anomaly.families import scores as registered_scores
from anomaly.families.base import Family
from anomaly.heatmap import heatmap_panel
from anomaly.io import film_from_array
from anomaly.lungs import checkpoint_lung_prior, geometric_lung_prior, lung_brightness
from anomaly.preprocess import PreprocessConfig, preprocess
from anomaly.regions import Region, check_threshold, draw_regions, film_regions, find_regions
from anomaly.results import BatchScores, ScoreResult
from anomaly.validate import whole_number

__all__ = ["BatchScores", "ScoreResult", "Scorer", "available_modes",
           "default_mode"]


def available_modes(state: dict) -> list[str]:
    """Scoring modes a checkpoint supports, over all the families it holds."""
    held = families_in(state)
    return [mode for name, module in FAMILIES.items() if name in held
            for mode in module.available_modes(state)]


def default_mode(state: dict) -> str:
    """The best measured mode the checkpoint supports: the first family (in
    :data:`anomaly.families.FAMILIES` order) that can score, by its own default."""
    modes = available_modes(state)
    if not modes:
        raise CheckpointError("this checkpoint holds no trained model to score with")
    held = families_in(state)
    defaults = [module.default_mode(state) for name, module in FAMILIES.items() if name in held]
    return next((mode for mode in defaults if mode in modes), modes[0])


class Scorer:
    """Scores images with a trained run; build one with :meth:`from_checkpoint`.

    Example:
        >>> scorer = Scorer.from_checkpoint("runs/gan")            # the default mode
        >>> scorer = Scorer.from_checkpoint("runs/gan", mode="search", iterations=200)
        >>> result = scorer.score_paths(["a.png", "b.dcm"])
        >>> result.score
    """

    def __init__(self, family: Family, preprocess_config: PreprocessConfig,
                 score: str | None = None, lung_prior: torch.Tensor | None = None,
                 batch_size: int = 64, holdout_paths: Sequence[str | os.PathLike] = (),
                 normal_components: dict[str, list[float]] | None = None):
        """Build a scorer around a family's scoring object; :meth:`from_checkpoint` is
        the usual way.

        ``lung_prior`` is the (S, S) lung-field mask (default: a geometric one);
        ``holdout_paths`` are the normal images held out from training;
        ``normal_components`` their components scored with the same settings.
        """
        self.family = family
        self.device = family.device
        self.preprocess_config = preprocess_config
        self.score = score or family.default_score
        if self.score not in registered_scores():
            raise ValueError(f"unknown score {self.score!r}; choose from {', '.join(registered_scores())}")
        if self.score != "lung-brightness" and self.score not in family.score_kinds:
            raise ValueError(f"score {self.score!r} is not one of mode {self.mode!r}'s "
                             f"({', '.join([*family.score_kinds, 'lung-brightness'])})")
        family.check_score(self.score)
        size = preprocess_config.image_size
        self.lung_prior = (geometric_lung_prior(size) if lung_prior is None
                           else lung_prior.float()).to(self.device)
        self.batch_size = whole_number(batch_size, "batch_size", low=1)
        self.holdout_paths = [Path(p) for p in holdout_paths]
        self.normal_components = normal_components
        self.checkpoint_id: str | None = None  # set by from_checkpoint
        self.stored_thresholds: dict[str, dict] = {}  # by anomaly calibrate, per settings
        self.region_threshold: float | None = None  # of this heat map, fitted on normals

    @classmethod
    def from_state(cls, state: dict, mode: str | None = None, score: str | None = None,
                   batch_size: int = 64, device: str = "auto", **options) -> "Scorer":
        """Build a scorer from a loaded checkpoint dict.

        Args:
            state: the checkpoint.
            mode: a mode the checkpoint supports (default: the best measured one).
            score: a score kind of that mode (default: the family's).
            batch_size: images per forward pass.
            device: ``auto``, ``cpu`` or ``cuda``.
            **options: the family's settings (DCGAN: ``iterations``, ``lr``, ``lam``,
                ``seed``, ``amp``).

        Raises:
            CheckpointError: the checkpoint cannot score in that mode (a network that was
                never trained), said in one line.
        """
        mode = mode or default_mode(state)
        name = family_of_mode(mode)
        if mode not in available_modes(state):
            held = ", ".join(available_modes(state)) or "none"
            raise CheckpointError(f"mode {mode!r} needs {FAMILIES[name].REQUIRES[mode]}, which "
                                  f"this checkpoint does not hold (its modes: {held})")
        torch_device = resolve_device(device)
        preprocess_config = PreprocessConfig(**state["preprocess"])
        prior = checkpoint_lung_prior(state, preprocess_config.image_size)
        family = importlib.import_module(f"{FAMILIES[name].__name__}.scorer").build_family(
            state, mode, torch_device, prior, **options)
        scorer = cls(family, preprocess_config, score=score, lung_prior=prior,
                     batch_size=batch_size, holdout_paths=state.get("holdout_paths", []))
        scorer.stored_thresholds = dict(state.get("thresholds") or {})
        fitted = (state.get("score_stats") or {}).get(mode) or {}
        if all(fitted.get(k) == v for k, v in scorer.settings().items()):
            scorer.normal_components = fitted.get("components")
            scorer.region_threshold = (fitted.get("region_thresholds") or {}).get(
                scorer.heat_name)
        stored = scorer.stored_thresholds.get(threshold_key(scorer.output_settings())) or {}
        calibrated = (stored.get("region_thresholds") or {}).get(scorer.heat_name)
        if calibrated is not None:  # fitted on a site's normal films by anomaly calibrate
            scorer.region_threshold = calibrated["value"]
        stale = not set(scorer.component_names) <= set(scorer.normal_components or {})
        if stale and scorer.needs_calibration:  # none stored, or stored before a component
            holdout = scorer.available_holdout()
            if len(holdout) < 2:
                raise CheckpointError(f"the {scorer.score} score needs the normal images held "
                                      "out from training, and they cannot be found; choose "
                                      "another --score")
            scorer.calibrate(holdout)
        return scorer

    @classmethod
    def from_checkpoint(cls, model: str | os.PathLike, mode: str | None = None,
                        **options) -> "Scorer":
        """Load a run directory or ``.pt`` file (safely) and build a scorer.

        Args:
            model: run directory or checkpoint file.
            mode: see :meth:`from_state`; default: the best the checkpoint supports.
            **options: ``score``, ``batch_size``, ``device`` and the family's settings.
        """
        scorer = cls.from_state(load_checkpoint(model), mode=mode, **options)
        scorer.checkpoint_id = checkpoint_digest(model)
        return scorer

    # -- what this scorer is ---------------------------------------------------------

    @property
    def mode(self) -> str:
        """The scoring mode (``critic``, ``search``, ...)."""
        return self.family.settings()["mode"]

    @property
    def iterations(self) -> int:
        """Latent-search steps per image (0 where the mode searches nothing)."""
        return getattr(self.family, "iterations", 0)

    @property
    def lam(self) -> float | None:
        """Weight of the discrimination loss in the search (None where none is made)."""
        return getattr(self.family, "lam", None) if self.reconstructs else None

    @property
    def reconstructs(self) -> bool:
        """Whether the mode draws a reconstruction G(z)."""
        return self.family.reconstructs

    @property
    def heat_name(self) -> str:
        """What the heat map shows (the family's ``heat``: ``map``, ``gradcam``, ...;
        ``lung-brightness`` for the baseline), the key of its region threshold."""
        if self.score == "lung-brightness":
            return "lung-brightness"
        return getattr(self.family, "heat", "heat")

    @property
    def needs_calibration(self) -> bool:
        """Whether the score is standardised on the held-out normals (``fused``)."""
        return self.score in getattr(self.family, "calibrated_scores", ())

    @property
    def component_names(self) -> tuple[str, ...]:
        """The components every scored image gets, in CSV order."""
        return (*self.family.components, "brightness")

    def settings(self) -> dict:
        """The settings that change the components (stored beside fitted statistics)."""
        return self.family.settings()

    def output_settings(self) -> dict:
        """Everything that makes a row of scores: the checkpoint (by content digest, when
        loaded from a file), the score kind and :meth:`settings`."""
        return {"checkpoint": self.checkpoint_id, "score": self.score, **self.settings()}

    def available_holdout(self) -> list[Path]:
        """The held-out normal images that can still be found on disk."""
        return [p for p in self.holdout_paths if p.exists()]

    def calibrate(self, normal_paths: Sequence[str | os.PathLike],
                  on_batch: Callable[[list[Path], BatchScores], None] | None = None) -> None:
        """Score normal images (never trained on) for their components: they standardise
        ``fused`` and give thresholds; ``on_batch`` sees each scored batch (e.g. to
        measure fidelity)."""
        score, self.score = self.score, "lung-brightness"  # needs no calibration itself
        try:
            result = self.score_paths(normal_paths, progress=False, on_batch=on_batch)
        finally:
            self.score = score
        if len(result.paths) < 2:
            raise CheckpointError("fewer than 2 readable held-out normal images to calibrate "
                                  f"the {score} score")
        self.normal_components = result.components()

    def combine(self, components: dict[str, np.ndarray]) -> np.ndarray:
        """The anomaly score of this scorer's kind from per-image components."""
        if self.score == "lung-brightness":
            return np.asarray(components["brightness"], dtype=np.float64)
        name = self.family.score_kinds[self.score]
        if name is not None:
            return np.asarray(components[name], dtype=np.float64)
        return self.family.combine(self.score, components, self.normal_components)

    def decision(self, threshold: float | None = None, alpha: float | None = None
                 ) -> Decision:
        """How this scorer's scores become labels (:mod:`anomaly.decision`): ``threshold``
        if given, else the one ``anomaly calibrate`` stored for these settings, else the
        held-out normals' 95% quantile; ``alpha`` flags by conformal p-value instead.

        The held-out normals are scored here once when their scores are not stored for
        this mode (search modes) or were stored before a component this score reads, for
        the p-values."""
        normal_scores = self.fitted_normal_scores()
        if normal_scores is None and len(self.available_holdout()) >= 2:
            self.calibrate(self.available_holdout())
            normal_scores = self.fitted_normal_scores()
        stored = self.stored_thresholds.get(threshold_key(self.output_settings()))
        return make_decision(normal_scores, stored, threshold, alpha)

    def fitted_normal_scores(self) -> list[float] | None:
        """Scores of the held-out normal images, when the components this score reads
        are known (None: not stored, or stored before one of them)."""
        if self.normal_components is None:
            return None
        try:
            return self.combine(self.normal_components).tolist()
        except KeyError:  # stored by an earlier version, without a component
            return None

    # -- scoring tensors -------------------------------------------------------------

    def score_tensor(self, images: torch.Tensor, heatmaps: bool = True) -> BatchScores:
        """Score a batch of preprocessed images (B, 1, S, S) in [-1, 1]."""
        images = images.to(self.device, torch.float32)
        output = self.family.score_batch(images, score=self.score,
                                         heatmaps=heatmaps and self.score != "lung-brightness")
        components = {**output.components,
                      "brightness": lung_brightness(images, self.lung_prior).cpu().numpy()}
        heat, heat_scale = output.heatmaps, output.heat_scale
        if heatmaps and self.score == "lung-brightness":
            heat, heat_scale = ((images + 1) / 2 * self.lung_prior)[:, 0], None
        reconstructions = output.reconstructions
        return BatchScores(self.combine(components), components, images.cpu(),
                           None if reconstructions is None else reconstructions.cpu(),
                           None if heat is None else heat.cpu(), heat_scale)

    def heatmap_panel(self, scores: BatchScores, index: int, display_size: int = 256,
                      boxes: list[Region] | None = None) -> np.ndarray:
        """The heatmap panel of image ``index`` of a scored batch: input, G(z) when the
        mode reconstructs, and the heat over the input (:func:`anomaly.heatmap.heatmap_panel`),
        with ``boxes`` (regions of the model input's map) drawn on the heat panel; by
        default the map's regions, where the run has a region threshold for it."""
        if scores.heatmaps is None:
            raise ValueError("these scores were computed without heat maps")
        reconstruction = (None if scores.reconstructions is None
                          else scores.reconstructions[index, 0].numpy())
        heat = scores.heatmaps[index].numpy()
        panel = heatmap_panel(scores.inputs[index, 0].numpy(), reconstruction, display_size,
                              scores.heat_scale, heat)
        if boxes is None and self.region_threshold is not None:
            boxes = self.regions(heat)
        if boxes:  # boxes of the model input's map, drawn on the last (heat) panel
            draw_regions(panel, boxes, scale=display_size / heat.shape[-1],
                         offset_x=panel.shape[1] - display_size)
        return panel

    def regions(self, heat: np.ndarray) -> list[Region]:
        """The regions of a heat map (H, W) above the stored region threshold
        (:mod:`anomaly.regions`); refused in one line when the run has none."""
        threshold = check_threshold(self.region_threshold,
                                    f"this run's {self.heat_name} heat map")
        return find_regions(heat, threshold)

    def film_regions(self, scores: BatchScores, index: int) -> list[Region]:
        """The regions of image ``index`` of a scored batch in its file's own pixels
        (:func:`anomaly.regions.film_regions`; the model input's where the shape is
        unknown)."""
        shape = scores.shapes[index] if scores.shapes is not None else None
        return film_regions(scores.heatmaps[index].numpy(), shape,
                            self.preprocess_config.resize, self.region_threshold,
                            f"this run's {self.heat_name} heat map")

    def score_arrays(self, images: Sequence[np.ndarray], heatmaps: bool = True) -> BatchScores:
        """Score films given as arrays (:func:`anomaly.io.film_from_array`: uint8/uint16
        scaled, floats in [0, 1]), preprocessed with the model's settings.

        Raises:
            ImageReadError: an array that is not a film, in one line naming which.
        """
        films = [film_from_array(image, f"array {i}") for i, image in enumerate(images)]
        batch = np.stack([preprocess(image, self.preprocess_config) for image in films])
        return self.score_tensor(torch.from_numpy(batch).unsqueeze(1), heatmaps)

    # -- scoring files ---------------------------------------------------------------

    def iter_batches(self, paths: Sequence[str | os.PathLike], heatmaps: bool = False
                     ) -> Iterator[tuple[list[Path], BatchScores | None, list[tuple[Path, str]]]]:
        """Read, preprocess and score files a batch at a time (memory stays flat).

        Yields:
            (paths scored, their scores or None, (path, reason) for files skipped).
        """
        shapes: dict[Path, tuple[int, int]] = {}
        for batch_paths, images, failures in iter_preprocessed_batches(
                paths, self.preprocess_config, self.batch_size, shapes=shapes):
            scores = self.score_tensor(uint8_to_model(images), heatmaps) if batch_paths \
                else None
            if scores is not None:
                scores.shapes = [shapes.get(path) for path in batch_paths]
                for path in batch_paths:
                    shapes.pop(path, None)
            yield batch_paths, scores, failures

    def score_paths(self, paths: Sequence[str | os.PathLike], progress: bool = True,
                    on_batch: Callable[[list[Path], BatchScores], None] | None = None,
                    heatmaps: bool = False) -> ScoreResult:
        """Score files, skipping unreadable ones (listed in ``failures``).

        Args:
            paths: image files.
            progress: show a progress bar with images per second.
            on_batch: called with each scored batch (to write CSV rows or heatmaps
                as results come).
            heatmaps: compute the heat maps too (for ``on_batch``).
        """
        from tqdm import tqdm

        result = ScoreResult()
        bar = tqdm(total=len(paths), desc=f"scoring ({self.mode})", unit="img",
                   disable=not progress)
        for batch_paths, scores, failures in self.iter_batches(paths, heatmaps):
            result.failures.extend(failures)
            if scores is not None:
                result.add(batch_paths, scores)
                if on_batch is not None:
                    on_batch(batch_paths, scores)
            bar.update(len(batch_paths) + len(failures))
        bar.close()
        return result


def __getattr__(name: str):
    """``MODES`` and ``SCORES``: those of the families registered now."""
    if name in ("MODES", "SCORES"):
        import anomaly.families

        return getattr(anomaly.families, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
