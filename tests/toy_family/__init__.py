"""A toy model family, defined here and nowhere in the toolkit: it proves that a family
adds files only. Its "model" is the mean brightness of the training normals; a film
scores by how far its own mean lies from it. It trains, scores, reports and calibrates
through the shared commands, and declares that it does not export."""

from dataclasses import dataclass, replace

NAME = "toy"
TITLE = "Toy brightness family"
MODES = ("toy",)
ONE_PASS_MODES = ("toy",)
SCORES = ("toy-distance",)
DEFAULT_SCORE = "toy-distance"
REQUIRES = {"toy": "a trained toy part (train-gan with families: [toy])"}
PART = "toy"
HEATS = ()


@dataclass
class ToyConfig:
    """The toy's section: ``epochs`` (0: not trained) and a ``scale`` of its distance."""

    epochs: int = 1
    scale: float = 1.0


CONFIG = ToyConfig
RESUMABLE = ("epochs",)
EXPORT_REFUSALS = {"toy": "the toy family has no network to export"}


def available_modes(state: dict) -> list[str]:
    """``toy`` where the checkpoint holds the toy's part."""
    return ["toy"] if state.get(PART) else []


def default_mode(state: dict) -> str | None:
    """``toy`` where it can score."""
    return next(iter(available_modes(state)), None)


def trains(config: ToyConfig) -> bool:
    """Whether the run trains the toy."""
    return config.epochs > 0


def dry_run(config: ToyConfig) -> ToyConfig:
    """At most one epoch."""
    return replace(config, epochs=min(config.epochs, 1))


def train_family(run, config: ToyConfig, state: dict) -> dict:
    """"Train": the mean of the training normals in the model range."""
    from anomaly.data import uint8_to_model
    from anomaly.families import with_part

    mean = float(uint8_to_model(run.images.cpu()).mean())
    run.log(f"toy: mean of {len(run.images)} normals {mean:.4f}")
    state = with_part(state, NAME, {"mean": mean, "scale": config.scale,
                                    "epoch": config.epochs})
    run.save(state)
    return state


def heat_note(scorer) -> str:
    """What its panels show."""
    return "Left: the preprocessed input. Right: the film itself (the toy has no map)."
