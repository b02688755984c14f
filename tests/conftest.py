"""Shared fixtures: tiny synthetic X-ray-like images and one tiny trained GAN run."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_xray"


def synthetic_xray(rng: np.random.Generator, size: int = 32, blob: bool = False) -> np.ndarray:
    """A smooth chest-like uint8 image; ``blob`` adds a bright opacity (the 'anomaly')."""
    y, x = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-((x - 0.3) ** 2 + (y - 0.5) ** 2) / 0.03) + np.exp(
        -((x - 0.7) ** 2 + (y - 0.5) ** 2) / 0.03)
    image = 0.7 - 0.4 * lungs + 0.05 * rng.standard_normal((size, size))
    if blob:
        cx, cy = rng.uniform(0.25, 0.75, 2)
        image += 0.6 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.01)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def write_images(folder: Path, count: int, seed: int, blob: bool = False, size: int = 32) -> list[Path]:
    """Write ``count`` synthetic PNGs into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:03d}.png"
        cv2.imwrite(str(path), synthetic_xray(rng, size, blob))
        paths.append(path)
    return paths


# the classic DCGAN alone (no critic)
TINY_CONFIG = dict(image_size=32, generator_width=8, discriminator_width=8, latent_dim=16,
                   batch_size=8, epochs=2, holdout_fraction=0.0, seed=0, critic_epochs=0,
                   spectral_norm=False, diff_augment=False, encoder_epochs=0)
# the built-in defaults (critic, then DCGAN and encoder), shrunk to run in seconds
TINY_DEFAULT = dict(image_size=32, generator_width=8, discriminator_width=8, latent_dim=16,
                    batch_size=8, epochs=1, encoder_epochs=1, critic_epochs=2,
                    critic_batch_size=8, critic_width=4, critic_map_epochs=2,
                    holdout_fraction=0.25, seed=0)


@pytest.fixture(scope="session")
def normal_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("normal")
    write_images(folder, 24, seed=1)
    return folder


@pytest.fixture(scope="session")
def labelled_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    write_images(root / "NORMAL", 10, seed=2)
    write_images(root / "PNEUMONIA", 10, seed=3, blob=True)
    return root


@pytest.fixture(scope="session")
def val_dir(tmp_path_factory) -> Path:
    """A labelled validation folder with images of its own (none shared with labelled_dir)."""
    root = tmp_path_factory.mktemp("val")
    write_images(root / "NORMAL", 8, seed=22)
    write_images(root / "PNEUMONIA", 8, seed=23, blob=True)
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, normal_dir) -> Path:
    """A 2-epoch tiny GAN with a 1-epoch encoder."""
    from anomaly.train import TrainConfig, train_run

    run = tmp_path_factory.mktemp("run")
    config = TrainConfig(**{**TINY_CONFIG, "encoder_epochs": 1})
    train_run(config, normal_dir, run, progress=False, log=lambda *a: None)
    return run


@pytest.fixture(scope="session")
def default_run(tmp_path_factory, normal_dir) -> Path:
    """The built-in defaults at toy size: a critic, then a DCGAN with its encoder."""
    from anomaly.train import TrainConfig, train_run

    run = tmp_path_factory.mktemp("default_run")
    train_run(TrainConfig(**TINY_DEFAULT), normal_dir, run, progress=False,
              log=lambda *a: None)
    return run


@pytest.fixture(scope="session")
def exported(default_run, tmp_path_factory) -> Path:
    """``default_run`` exported to ONNX (read-only: tests that tamper copy it first)."""
    from anomaly.export import export_run

    out = tmp_path_factory.mktemp("exported")
    export_run(default_run, out)
    return out
