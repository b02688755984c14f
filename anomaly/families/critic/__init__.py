"""The opacity critic: a CNN taught on synthetic opacities in normal films, scored by
the density of its features (network, synthesis, train, scorer).

What the family offers, declared without importing torch (the CLI reads it for --help),
and its entries for the shared run: its config section, training, checks and export.
"""

from dataclasses import replace

from anomaly.families.critic.config import CriticConfig

NAME = "critic"
MODES = ("critic",)
SCORES = ("density", "logit", "quiet", "density+quiet", "map", "density+map")
DEFAULT_SCORE = "density"  # a run records its own (CriticConfig.score)
HEATS = ("map", "gradcam")  # its map head's opacity map, the density's Grad-CAM


def available_modes(state: dict) -> list[str]:
    """``critic`` when the checkpoint holds a trained critic with its fitted density."""
    return ["critic"] if (state.get("critic") or {}).get("density") is not None else []

REQUIRES = {"critic": "a trained opacity critic (train-gan with critic_epochs > 0)"}
ONE_PASS_MODES = ("critic",)


def default_mode(state: dict) -> str | None:
    """``critic`` where the checkpoint can score with it."""
    return next(iter(available_modes(state)), None)

# -- training (anomaly.families.base.TrainingRun) ----------------------------------------

TITLE = "Opacity critic"
PART = "critic"  # where its part of a checkpoint lives
CONFIG = CriticConfig
LEGACY_KEYS = {f"critic_{name}": name for name in CriticConfig.__dataclass_fields__}
# the map stage's settings, which a resumed run may change; every other one is kept
RESUMABLE = ("map_epochs", "map_lr", "map_synthesis", "map_decoys", "map_target",
             "map_field", "map_own_blocks")
# settings added after runs were saved without them: what those runs did (a run saved
# before the map head had blocks of its own resumes without them, not with the default)
SAVED_BEFORE = {"map_own_blocks": 0, "sharpness": 0.0}
CLI_OPTIONS = (("--critic-epochs", "critic_epochs", int,
                "Epochs of the opacity critic, trained first (0: no critic)."),)


def trains(config: CriticConfig) -> bool:
    """Whether a run with this section trains a critic."""
    return config.epochs > 0


def dry_run(config: CriticConfig) -> CriticConfig:
    """The section for ``train-gan --dry-run``: at most one epoch."""
    return replace(config, epochs=min(config.epochs, 1), map_epochs=min(config.map_epochs, 1))


def train_family(run, config: CriticConfig, state: dict) -> dict:
    """Train the critic (:func:`anomaly.families.critic.train.train_family`)."""
    from anomaly.families.critic.train import train_family

    return train_family(run, config, state)


def check_state(state: dict) -> None:
    """Refuse a checkpoint whose critic part holds meaningless values."""
    from anomaly.families.critic.checks import check_critic_part

    if state.get(PART) is not None:
        check_critic_part(state[PART])


# -- reports and export --------------------------------------------------------------

HEAT_NOTES = {
    "gradcam": "Left: the preprocessed input. Right: where the critic's features push the "
               "film away from the normal films (Grad-CAM of the density on its 16 x 16 "
               "map; full red = the 99th percentile over training normals).",
    "map": "Left: the preprocessed input. Right: the critic's opacity map (its map head's "
           "probability of opacity per pixel; full red = 1). Boxes: the map's regions above "
           "the threshold fitted on the held-out normals (95% of them have none above it).",
}
EXPORT_REFUSALS: dict[str, str] = {}  # every mode exports


def heat_note(scorer) -> str | None:
    """What a report's heat-map panels show for this scorer."""
    return HEAT_NOTES.get(scorer.heat_name)


def export_parts(scorer):
    """The network to export and its extra export.json keys
    (:mod:`anomaly.families.critic.export`)."""
    from anomaly.families.critic.export import export_parts as parts

    return parts(scorer)


def export_reader(info: dict):
    """How an export of the critic is scored without torch
    (:class:`anomaly.families.critic.exported.CriticExportReader`)."""
    from anomaly.families.critic.exported import CriticExportReader

    return CriticExportReader(info)
