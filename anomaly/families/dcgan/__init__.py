"""The DCGAN family: generator, discriminator and f-AnoGAN encoder (``networks``, trained
by ``train``), scored by AnoGAN latent search, the encoder, or the discriminator.

What the family offers, declared without importing torch (the CLI reads it for --help),
and its entries for the shared run: its config section, training, checks and export.
"""

from dataclasses import replace

from anomaly.families.dcgan.config import DCGANConfig

NAME = "dcgan"
MODES = ("discriminator", "search", "encoder", "encoder-search")
SCORES = ("density", "lung-opacity", "fused", "anogan", "fanogan")
RECONSTRUCTION_SCORES = ("lung-opacity", "fused", "anogan", "fanogan")  # need G(z)
DEFAULT_ITERATIONS = {"discriminator": 0, "search": 500, "encoder": 0, "encoder-search": 20}


def available_modes(state: dict) -> list[str]:
    """DCGAN modes a checkpoint supports: ``discriminator`` needs D's fitted density,
    the others a trained generator (the encoder modes a trained encoder too)."""
    if "generator" not in state:
        return []
    modes = ["discriminator"] if state.get("feature_density") is not None else []
    if state.get("generator_trained", True):
        modes += list(MODES[1:]) if state.get("encoder") is not None else ["search"]
    return modes


def default_mode(state: dict) -> str | None:
    """The best measured DCGAN mode: the encoder when there is one, else latent search,
    else D's feature density (None: no usable DCGAN)."""
    modes = available_modes(state)
    return next((mode for mode in ("encoder", "search", "discriminator") if mode in modes),
                None)

REQUIRES = {
    "discriminator": "a DCGAN discriminator with its fitted feature density",
    "search": "a trained DCGAN generator (train-gan with epochs > 0)",
    "encoder": "a trained generator and f-AnoGAN encoder (anomaly train-encoder)",
    "encoder-search": "a trained generator and f-AnoGAN encoder (anomaly train-encoder)",
}
ONE_PASS_MODES = ("discriminator", "encoder")


# -- training (anomaly.families.base.TrainingRun) ----------------------------------------

TITLE = "DCGAN"
PART = None  # its part lives at the top level of a checkpoint, as in format 1
CONFIG = DCGANConfig
LEGACY_KEYS = {  # the flat keys of configs written before sections
    **{name: name for name in DCGANConfig.__dataclass_fields__ if name != "encoder"},
    "encoder_epochs": "encoder.epochs", "encoder_lr": "encoder.lr",
    "encoder_kappa": "encoder.kappa"}
RESUMABLE = ("epochs", "encoder.epochs", "sample_count")  # more epochs may follow
CLI_OPTIONS = (
    ("--epochs", "epochs", int, "Epochs of the DCGAN, trained next (0: no DCGAN)."),
    ("--batch-size", "batch_size", int, "The DCGAN's batch size."),
    ("--lr", "lr", float, "The DCGAN's learning rate."),
    ("--encoder-epochs", "encoder_epochs", int, "Train the f-AnoGAN encoder afterwards."),
)


def trains(config: DCGANConfig) -> bool:
    """Whether a run with this section trains a DCGAN."""
    return config.epochs > 0


def dry_run(config: DCGANConfig) -> DCGANConfig:
    """The section for ``train-gan --dry-run``: at most one epoch of G/D and of E."""
    return replace(config, epochs=min(config.epochs, 1),
                   encoder=replace(config.encoder, epochs=min(config.encoder.epochs, 1)))


def train_family(run, config: DCGANConfig, state: dict) -> dict:
    """Train G and D, fit D's density, train the encoder
    (:func:`anomaly.families.dcgan.train.train_family`)."""
    from anomaly.families.dcgan.train import train_family

    return train_family(run, config, state)


def check_state(state: dict) -> None:
    """Refuse a checkpoint whose DCGAN feature density holds meaningless values."""
    from anomaly import validate

    if state.get("feature_density") is not None:
        validate.density_part(state["feature_density"], "feature_density")
    if state.get("encoder_kappa") is not None:
        kappa = validate.finite_number(state["encoder_kappa"], "encoder_kappa")
        if kappa < 0:
            raise validate.BadValue(f"encoder_kappa is {kappa!r}, not a number >= 0")


# -- reports and export --------------------------------------------------------------

NOTES = {
    "density": "Left: the preprocessed input. Right: where the discriminator's features "
               "push the film away from the normal films (Grad-CAM of the density on its "
               "4 x 4 map; full red = this image's largest).",
    "anogan": "Input, G(z), and |input - G(z)| (full red = this image's largest residual).",
    "lung-opacity": "Input, G(z), and where the input is brighter than G(z) inside the lung "
                    "prior, what the score averages (full red = this image's largest).",
}
NOTES["fused"] = NOTES["lung-opacity"]


def heat_note(scorer) -> str | None:
    """What a report's heat-map panels show for this scorer (None: a shared score's)."""
    if scorer.score not in SCORES:
        return None
    return NOTES.get(scorer.score, NOTES["anogan"])


_SEARCH = ("AnoGAN latent search is an optimisation loop run per image, not a network "
           "(export the default mode, critic)")
EXPORT_REFUSALS = {"search": _SEARCH, "encoder-search": _SEARCH,
                   "discriminator": "not exportable yet; export the default mode, critic",
                   "encoder": "not exportable yet; export the default mode, critic"}
