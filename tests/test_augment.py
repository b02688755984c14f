"""DiffAugment of the discriminator's inputs."""

from __future__ import annotations

import pytest
import torch

from anomaly.checkpoint import load_checkpoint
from anomaly.families.dcgan.augment import diff_augment, translate
from anomaly.train import TrainConfig, train_run
from tests.conftest import TINY_CONFIG


def test_translation_moves_a_pixel_within_the_limit():
    torch.manual_seed(0)
    images = torch.full((200, 1, 16, 16), -1.0)
    images[:, :, 8, 8] = 1.0
    moved = translate(images, 0.125)  # at most 2 pixels
    positions = (moved[:, 0] == 1.0).nonzero()[:, 1:]
    assert len(positions) == 200  # the bright pixel survives exactly once in every image
    shifts = positions - 8
    assert shifts.abs().max() == 2 and len({tuple(s) for s in shifts.tolist()}) > 10


def test_off_is_identity_and_gradients_flow():
    images = torch.rand(4, 1, 16, 16, requires_grad=True)
    same = diff_augment(images, brightness=0, contrast=0, translation=0)
    assert torch.equal(same, images)
    augmented = diff_augment(images)
    assert augmented.shape == images.shape and not torch.equal(augmented, images)
    augmented.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.parametrize("enabled", [True, False])
def test_training_augments_what_d_sees_only_when_asked(tmp_path, normal_dir, monkeypatch,
                                                        enabled):
    import anomaly.families.dcgan.train as train_module

    seen = []

    def recording(images):
        seen.append(images.shape[0])
        return diff_augment(images)

    monkeypatch.setattr(train_module, "diff_augment", recording)
    config = TrainConfig(**{**TINY_CONFIG, "epochs": 1, "diff_augment": enabled})
    train_run(config, normal_dir, tmp_path / "run", progress=False, log=lambda *a: None)
    assert load_checkpoint(tmp_path / "run")["train_config"]["dcgan"]["diff_augment"] is enabled
    steps = 24 // TINY_CONFIG["batch_size"]
    # per step: the real batch, the fakes for D and the fakes for G
    assert len(seen) == (3 * steps if enabled else 0)
