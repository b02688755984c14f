"""Model families behind one seam (:mod:`anomaly.families.base`), and their registry.

Each family is a package of its own: its config section, networks, training loop, scoring
object and what it exports. Its ``__init__`` declares, without importing torch, what the
shared code needs (see ``CONTRIBUTING.md`` for the list): its name, modes and scores, its
config class and the flat keys of older configs, its training entry, its checks, its
report notes and export. Shared code only reads this registry, so a new family adds its
package and registers it: ``register(module)``, or a package's entry point in the
``anomaly.families`` group.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from types import ModuleType

from anomaly.families import critic, dcgan

FAMILIES: dict[str, ModuleType] = {}
SHARED_SCORES = ("lung-brightness",)  # the no-network baseline, any family
REQUIRED = ("NAME", "TITLE", "MODES", "SCORES", "ONE_PASS_MODES", "REQUIRES", "PART",
            "CONFIG", "available_modes", "default_mode", "trains", "train_family")


def register(module: ModuleType) -> ModuleType:
    """Add a family package (or any module declaring :data:`REQUIRED`) to the registry.

    Raises:
        ValueError: a declaration is missing, or a mode is already another family's.
    """
    missing = [name for name in REQUIRED if not hasattr(module, name)]
    if missing:
        raise ValueError(f"family {getattr(module, 'NAME', module.__name__)!r} does not "
                         f"declare {', '.join(missing)}")
    taken = {mode for name, other in FAMILIES.items() if name != module.NAME
             for mode in other.MODES}
    if taken & set(module.MODES):
        raise ValueError(f"family {module.NAME!r}: mode(s) {', '.join(taken & set(module.MODES))}"
                         " belong to another family")
    FAMILIES[module.NAME] = module
    return module


def unregister(name: str) -> None:
    """Remove a family from the registry (tests of a toy family)."""
    FAMILIES.pop(name, None)


def modes() -> tuple[str, ...]:
    """Every registered family's modes."""
    return tuple(mode for module in FAMILIES.values() for mode in module.MODES)


def one_pass_modes() -> tuple[str, ...]:
    """The modes that score a film in one pass (no search), whose statistics a run fits."""
    return tuple(mode for module in FAMILIES.values() for mode in module.ONE_PASS_MODES)


def scores() -> tuple[str, ...]:
    """Every registered family's score kinds, then the shared ones."""
    return tuple(dict.fromkeys(
        [score for module in FAMILIES.values() for score in module.SCORES]
        + list(SHARED_SCORES)))


def heats() -> tuple[str, ...]:
    """Every heat map a registered family can draw (``--heat``)."""
    return tuple(dict.fromkeys(heat for module in FAMILIES.values()
                               for heat in getattr(module, "HEATS", ())))


def family_of_mode(mode: str) -> str:
    """The family whose scoring object implements ``mode``."""
    for name, module in FAMILIES.items():
        if mode in module.MODES:
            return name
    raise ValueError(f"unknown scoring mode {mode!r}; choose from {', '.join(modes())}")


def families_in(state: dict) -> list[str]:
    """The families a checkpoint holds (format 1 checkpoints hold the DCGAN alone)."""
    return list(state.get("families", [dcgan.NAME]))


def with_part(state: dict, name: str, part: dict) -> dict:
    """``state`` with a family's checkpoint part added (under the family's ``PART`` key,
    or at the top level where it declares None) and listed in ``families``."""
    key = FAMILIES[name].PART
    merged = {**state, key: part} if key is not None else {**state, **part}
    merged["families"] = sorted(set(state.get("families", [])) | {name})
    return merged


def __getattr__(name: str):
    """``MODES``, ``ONE_PASS_MODES`` and ``SCORES``: the registry's, as it is now."""
    lists = {"MODES": modes, "ONE_PASS_MODES": one_pass_modes, "SCORES": scores}
    if name in lists:
        return lists[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


for _module in (critic, dcgan):
    register(_module)
for _entry in entry_points(group="anomaly.families"):  # families installed as plugins
    register(_entry.load())
