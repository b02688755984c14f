"""The DCGAN family: generator, discriminator and f-AnoGAN encoder (``networks``, trained
by ``train``), scored by AnoGAN latent search, the encoder, or the discriminator.

What the family offers, declared without importing torch (the CLI reads it for --help).
"""

NAME = "dcgan"
MODES = ("discriminator", "search", "encoder", "encoder-search")
SCORES = ("density", "lung-opacity", "fused", "anogan")
RECONSTRUCTION_SCORES = ("lung-opacity", "fused", "anogan")  # need G(z)
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
