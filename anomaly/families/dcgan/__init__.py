"""The DCGAN family: generator, discriminator and f-AnoGAN encoder (``anomaly.models``,
``anomaly.train``), scored by AnoGAN latent search, the encoder, or the discriminator.

What the family offers, declared without importing torch (the CLI reads it for --help).
"""

NAME = "dcgan"
MODES = ("discriminator", "search", "encoder", "encoder-search")
SCORES = ("density", "lesion", "lung-opacity", "fused", "anogan")
RECONSTRUCTION_SCORES = ("lung-opacity", "fused", "anogan")  # need G(z)
DEFAULT_ITERATIONS = {"discriminator": 0, "search": 500, "encoder": 0, "encoder-search": 20}


def has_lesion_head(state: dict) -> bool:
    """Whether the checkpoint's discriminator was taught synthetic opacities."""
    return bool(state.get("architecture", {}).get("lesion_head"))


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
    """The best measured DCGAN mode: D alone where it learned opacities, else the encoder
    when there is one, else latent search (None: no usable DCGAN)."""
    modes = available_modes(state)
    if has_lesion_head(state) and "discriminator" in modes:
        return "discriminator"
    return next((mode for mode in ("encoder", "search") if mode in modes), None)


def default_score(state: dict) -> str:
    """The best measured DCGAN score kind for a checkpoint (README, "Results")."""
    if has_lesion_head(state) and state.get("feature_density") is not None:
        return "density"
    return "lung-opacity"

REQUIRES = {
    "discriminator": "a DCGAN discriminator with its fitted feature density",
    "search": "a trained DCGAN generator (train-gan with epochs > 0 and adversarial_weight > 0)",
    "encoder": "a trained generator and f-AnoGAN encoder (anomaly train-encoder)",
    "encoder-search": "a trained generator and f-AnoGAN encoder (anomaly train-encoder)",
}
ONE_PASS_MODES = ("discriminator", "encoder")
