"""The critic's settings: its section of a training config (no torch needed to read it)."""

from __future__ import annotations

from dataclasses import dataclass

# the kinds of synthetic opacity (synthesis.py)
SYNTHESES = ("blobs", "patches", "mixed", "varied", "diffuse", "blobs+diffuse", "haze",
             "blobs+haze", "multifocal", "blobs+multifocal", "foreign", "blobs+foreign",
             "streaks", "blobs+streaks", "faint", "blobs+faint", "dense", "hyperinflation",
             "blobs+hyperinflation")
MAP_TARGETS = ("blend", "change")  # what the map head's stage teaches it to find
MAP_FIELDS = ("lungs", "film")  # where the map shown may show opacity
MAP_LEVELS = (2, 3, 4)  # how many of the critic's blocks the map head may read
BATCHNORM_STATISTICS = ("batch", "clean", "split")  # which films set them in training
EMBEDDINGS = ("l2", "sqrt")  # how pooled features become the density's embedding
# scores that sum components, each standardised on the held-out normals (scorer.py)
COMBINED = {"density+map": ("density", "map"), "density+quiet": ("density", "quiet")}
SCORE_KINDS = ("density", "logit", "quiet", "map", *COMBINED)  # a run's default score


@dataclass
class CriticConfig:
    """How the critic is trained: the ``critic:`` section of ``train-gan``'s config
    (``critic_<name>`` keys in configs written before sections).

    Attributes:
        epochs: passes over the training normals (0: no critic).
        batch_size: films per step (half of them, at random, get opacities).
        lr: peak learning rate of the one-cycle schedule (AdamW).
        weight_decay: AdamW's decoupled weight decay.
        width: channels of the first block (doubled by each of the 4 blocks).
        instance_norm_blocks: how many of the first blocks normalise each film by its own
            feature statistics (InstanceNorm, as IBN-Net's shallow layers) instead of
            BatchNorm: 0 (none, the default) to ``4 - map_own_blocks``.
        gamma_range: range of the random gamma curve (``[1, 1]``: none).
        shift_fraction: largest random shift as a fraction of the side (0: none).
        scale_range: range of the random zoom about the centre (``[1, 1]``: none).
        rotation_degrees: largest random tilt either way (0: none).
        sharpness: largest random blur or sharpening either way (0: none; 1: from the
            film blurred at sigma 1 px of 128 to an unsharp mask of the same strength).
        batchnorm_statistics: which films set the critic's BatchNorm statistics while it
            trains (:mod:`~anomaly.families.critic.batchnorm_statistics`): ``batch`` (the
            whole batch, the default), ``clean`` (the films without opacities, applied to
            all) or ``split`` (each half its own; the running statistics from the clean).
        score_views: how films are embedded for the density and scored: 1 (the film
            alone, the default) or 2 (the film and its mirror image averaged, so a film
            and its mirror score the same; twice the work).
        embedding: how the pooled features become the embedding the density is fitted
            on: ``sqrt`` (their square roots L2-normalised, the power normalisation of
            Fisher vectors: channels that fire strongly weigh less against the rest; the
            default) or ``l2`` (L2-normalised, as runs before it).
        score: the score kind the run scores with when none is asked for (recorded in
            the checkpoint): ``density`` (the default), ``logit``, ``quiet``, ``map``,
            ``density+quiet`` or ``density+map`` (the last two standardised on the
            held-out normals: a run without held-out films records ``density`` instead).
            ``quiet``'s direction (quieter features = more abnormal) was read off
            labelled films, and the training's own opacities move it the other way
            (docs/results.md): measured, not the default.
        synthesis: the synthetic opacities the critic learns from (one of
            :data:`SYNTHESES`, :func:`~anomaly.families.critic.synthesis.synthesise`):
            ``blobs`` (consolidation-like, the default), ``diffuse`` (a wide faint haze
            in one or both lungs, finely grained), ``haze`` (the same, smoothly uneven),
            ``multifocal`` (up to 10 small blobs), ``foreign`` (another child's film
            blended in), ``streaks`` (thin lines from each hilum), ``faint`` (the blobs
            blended in at 0.1-0.4 instead of 0.2-0.7; ``dense``: at 0.4-0.9),
            ``blobs+diffuse``, ``blobs+haze``, ``blobs+multifocal``, ``blobs+foreign``,
            ``blobs+streaks`` or ``blobs+faint`` (blobs or the other, at random),
            ``patches``, ``mixed`` or ``varied``.
        opacity_prior: where opacities are placed: ``lung`` (the run's lung-field prior,
            the darkest 30% of a central ellipse) or ``wide`` (the darkest 35% of a wider
            ellipse that reaches the lung bases; :func:`wide_lung_prior`).
        map_width: channels of the map head's finest level (0: no map head; the heat map
            is then the density's Grad-CAM).
        map_levels: the blocks the map head reads (3: blocks 2-4, logits at half the side;
            2: blocks 3-4, at a quarter, about half the head's work; 4: blocks 1-4, at
            the film's own side).
        map_own_blocks: how many of the critic's deepest blocks the map head reads
            through its own copies (0: none, the critic's features alone; up to 3): the
            head's stage starts them as copies of the critic's and fine-tunes them with
            the head at the critic's peak rate ``lr``, so the map gets features of its
            own while the critic, its density and every image score but ``map`` stay as
            they were. Each costs that block's work again when scoring. Set before the
            head's stage begins (a resumed run whose stage has not started may set it);
            without that stage (``map_epochs: 0``) the head reads the critic's blocks,
            and without a head (``map_width: 0``) it means nothing.
        map_weight: weight of the map head's loss (pixel BCE + Dice) beside the film's.
        map_detach: the map head learns from the critic's features without changing them
            (its loss stops at the features), so the critic trains exactly as without a
            head: the same weights and density. False trains both jointly.
        map_mask_level: blend weight above which a pixel counts as opacity in the map
            head's target.
        map_epochs: passes of the map head's own stage after the critic's: the head
            trains alone on the frozen critic (0: none; the head is then the one trained
            beside the critic). May grow when a run is resumed.
        map_lr: peak learning rate of that stage's one-cycle schedule (AdamW).
        map_synthesis: the synthetic opacities that stage teaches the head on (one of
            :data:`SYNTHESES`; None: the critic's ``synthesis``).
        map_decoys: share of that stage's films that also get opacities pasted where
            no lung is (:func:`~anomaly.families.critic.synthesis.decoy_prior`), left
            out of the head's target: the head learns that a bright blob is an opacity
            only in a lung (0: none).
        map_target: what that stage teaches the head to find: ``blend`` (the pixels
            whose blend weight exceeds ``map_mask_level``) or ``change`` (the pixels an
            opacity visibly changed: by more than 0.02 of the intensity range, as the
            evaluation lesions' masks, :data:`anomaly.eval_lesions.VISIBLE_CHANGE`).
        map_field: where the map shown may show opacity: ``lungs`` (where a lung can be:
            the run's and the wide lung prior, grown by S/16, fitted on the training
            normals, :func:`~anomaly.families.critic.synthesis.map_field`) or ``film``
            (everywhere). The ``map`` score reads the lung field either way. May change
            when a run is resumed.
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    width: int = 32
    instance_norm_blocks: int = 0
    gamma_range: tuple[float, float] = (0.8, 1.25)
    shift_fraction: float = 1 / 16
    opacity_prior: str = "lung"
    synthesis: str = "blobs"
    scale_range: tuple[float, float] = (0.85, 1.15)
    rotation_degrees: float = 8.0
    sharpness: float = 0.0
    score_views: int = 1
    embedding: str = "sqrt"
    score: str = "density"
    batchnorm_statistics: str = "batch"
    map_width: int = 32
    map_levels: int = 3
    map_own_blocks: int = 2
    map_weight: float = 1.0
    map_mask_level: float = 0.1
    map_detach: bool = True
    map_epochs: int = 20
    map_lr: float = 6e-3
    map_synthesis: str | None = None
    map_decoys: float = 0.0
    map_target: str = "blend"
    map_field: str = "lungs"

    @classmethod
    def from_saved(cls, values: dict) -> "CriticConfig":
        """The settings a checkpoint's critic part saved (``part["config"]``), less the
        keys that are not settings (its ``seed``) or that this version no longer knows."""
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    def __post_init__(self) -> None:
        for name in ("gamma_range", "scale_range"):
            values = tuple(getattr(self, name))
            if len(values) != 2 or not 0 < values[0] <= values[1]:
                raise ValueError(f"{name} must be [low, high] with 0 < low <= high")
            setattr(self, name, values)
        if not 0 <= self.sharpness <= 1:
            raise ValueError(f"sharpness must be in [0, 1], not {self.sharpness!r}")
        if self.epochs < 0 or self.map_epochs < 0:
            raise ValueError(f"epochs and map_epochs must be >= 0, not {self.epochs!r}, "
                             f"{self.map_epochs!r}")
        if not 0 < self.map_lr < 1:
            raise ValueError(f"map_lr must be in (0, 1), not {self.map_lr!r}")
        if self.map_width < 0 or not self.map_weight >= 0 or not 0 < self.map_mask_level < 1:
            raise ValueError("map_width and map_weight must be >= 0 and "
                             f"map_mask_level in (0, 1), not {self.map_width!r}, "
                             f"{self.map_weight!r}, {self.map_mask_level!r}")
        if not 0 <= self.map_decoys <= 1:
            raise ValueError(f"map_decoys must be in [0, 1], not {self.map_decoys!r}")
        if self.map_levels not in MAP_LEVELS:
            raise ValueError(f"map_levels must be one of {MAP_LEVELS}, not {self.map_levels!r}")
        if not 0 <= self.map_own_blocks <= 3:
            raise ValueError(f"map_own_blocks must be in [0, 3], not {self.map_own_blocks!r}")
        if not 0 <= self.instance_norm_blocks <= 4 - self.map_own_blocks:
            raise ValueError(f"instance_norm_blocks must be in [0, {4 - self.map_own_blocks}] "
                             f"(4 blocks less map_own_blocks), not "
                             f"{self.instance_norm_blocks!r}")
        if self.score_views not in (1, 2):
            raise ValueError(f"score_views must be 1 or 2, not {self.score_views!r}")
        for name, choices in (("map_target", MAP_TARGETS), ("map_field", MAP_FIELDS),
                              ("batchnorm_statistics", BATCHNORM_STATISTICS),
                              ("score", SCORE_KINDS), ("embedding", EMBEDDINGS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, not "
                                 f"{getattr(self, name)!r}")
        for name in ("synthesis", "map_synthesis"):
            value = getattr(self, name)
            if value not in SYNTHESES and not (name == "map_synthesis" and value is None):
                raise ValueError(f"{name} must be one of {', '.join(SYNTHESES)}, not "
                                 f"{value!r}")
        taught = self.map_synthesis or self.synthesis
        if self.map_epochs > 0 and self.map_decoys > 0 and "hyperinflation" in taught:
            raise ValueError(f"map_decoys needs opacities it can paste where no lung is; "
                             f"{taught!r} stretches the whole film (choose another "
                             "map_synthesis, or map_decoys 0)")
        if self.opacity_prior not in ("lung", "wide"):
            raise ValueError(f"opacity_prior must be lung or wide, not "
                             f"{self.opacity_prior!r}")
