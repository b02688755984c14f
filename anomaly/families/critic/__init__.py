"""The opacity critic: a CNN taught on synthetic opacities in normal films, scored by
the density of its features (network, synthesis, train, scorer).

What the family offers, declared without importing torch (the CLI reads it for --help).
"""

NAME = "critic"
MODES = ("critic",)
SCORES = ("density", "logit", "map", "density+map")
DEFAULT_SCORE = "density"


def available_modes(state: dict) -> list[str]:
    """``critic`` when the checkpoint holds a trained critic with its fitted density."""
    return ["critic"] if (state.get("critic") or {}).get("density") is not None else []

REQUIRES = {"critic": "a trained opacity critic (train-gan with critic_epochs > 0)"}
ONE_PASS_MODES = ("critic",)


def default_mode(state: dict) -> str | None:
    """``critic`` where the checkpoint can score with it."""
    return next(iter(available_modes(state)), None)
