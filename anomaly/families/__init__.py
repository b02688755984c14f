"""Model families behind one seam (:mod:`anomaly.families.base`).

Each family is a package of its own: its networks, its training loop and one scoring
object. This module only knows their names, their modes and scores (declared in each
package's ``__init__`` without torch, so the CLI's choices come from them) and which
family a checkpoint holds. Adding a family adds its package and one line to ``FAMILIES``.
"""

from __future__ import annotations

from anomaly.families import critic, dcgan

FAMILIES = {module.NAME: module for module in (critic, dcgan)}
SHARED_SCORES = ("lung-brightness",)  # the no-network baseline, any family

MODES = tuple(mode for module in FAMILIES.values() for mode in module.MODES)
ONE_PASS_MODES = tuple(mode for module in FAMILIES.values() for mode in module.ONE_PASS_MODES)
SCORES = tuple(dict.fromkeys(
    [score for module in FAMILIES.values() for score in module.SCORES] + list(SHARED_SCORES)))


def family_of_mode(mode: str) -> str:
    """The family whose scoring object implements ``mode``."""
    for name, module in FAMILIES.items():
        if mode in module.MODES:
            return name
    raise ValueError(f"unknown scoring mode {mode!r}; choose from {', '.join(MODES)}")


def families_in(state: dict) -> list[str]:
    """The families a checkpoint holds (format 1 checkpoints hold the DCGAN alone)."""
    return list(state.get("families", ["dcgan"]))
