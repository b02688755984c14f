"""train-gan: checkpoint content, TensorBoard events, resume, determinism, divergence."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from anomaly.checkpoint import load_checkpoint
from anomaly.config import ConfigError, load_config
from anomaly.errors import TrainingDiverged
from anomaly.train import TrainConfig, train_run
from tests.conftest import TINY_CONFIG

QUIET = dict(progress=False, log=lambda *a: None)


def test_checkpoint_and_tensorboard(trained_run):
    state = load_checkpoint(trained_run)
    assert state["epoch"] == 2
    assert state["preprocess"]["image_size"] == 32 and state["preprocess"]["clahe"] is True
    assert state["architecture"]["latent_dim"] == 16
    assert state["encoder"] is not None
    assert (trained_run / "config.yaml").exists()
    events = EventAccumulator(str(trained_run), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"samples", "real"} <= set(tags["images"])
    assert len(events.Images("samples")) == 2  # one grid per epoch
    assert {"loss/discriminator", "loss/generator", "D(x)", "D(G(z))"} <= set(tags["scalars"])


def test_resume_continues_from_saved_epoch_and_matches_uninterrupted(tmp_path, normal_dir):
    config = TrainConfig(**TINY_CONFIG)
    full = tmp_path / "full"
    train_run(config, normal_dir, full, **QUIET)
    parts = tmp_path / "parts"
    train_run(config.replace(epochs=1), normal_dir, parts, **QUIET)
    assert load_checkpoint(parts)["epoch"] == 1
    train_run(config, normal_dir, parts, resume=True, **QUIET)
    resumed, uninterrupted = load_checkpoint(parts), load_checkpoint(full)
    assert resumed["epoch"] == 2
    for network in ("generator", "discriminator"):
        for key, value in uninterrupted[network].items():
            torch.testing.assert_close(resumed[network][key], value)
    for optimizer in ("optimizer_g", "optimizer_d"):
        for a, b in zip(resumed[optimizer]["state"].values(),
                        uninterrupted[optimizer]["state"].values()):
            torch.testing.assert_close(a["exp_avg"], b["exp_avg"])
            torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"])
    torch.testing.assert_close(resumed["torch_rng"], uninterrupted["torch_rng"])


def test_training_is_reproducible_with_a_seed(tmp_path, normal_dir):
    config = TrainConfig(**{**TINY_CONFIG, "epochs": 1})
    train_run(config, normal_dir, tmp_path / "a", **QUIET)
    train_run(config, normal_dir, tmp_path / "b", **QUIET)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for key, value in a["discriminator"].items():
        torch.testing.assert_close(b["discriminator"][key], value)


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path, normal_dir, monkeypatch):
    run = tmp_path / "run"
    config = TrainConfig(**{**TINY_CONFIG, "epochs": 1})
    train_run(config, normal_dir, run, **QUIET)
    before = load_checkpoint(run)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    monkeypatch.setattr(torch.nn.functional, "binary_cross_entropy_with_logits",
                        lambda *a, **k: bce(*a, **k) * float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite"):
        train_run(config.replace(epochs=2), normal_dir, run, resume=True, **QUIET)
    after = load_checkpoint(run)
    assert after["epoch"] == 1
    torch.testing.assert_close(after["generator"], before["generator"])


def test_size_128_trains(tmp_path, normal_dir):
    config = TrainConfig(**{**TINY_CONFIG, "image_size": 128, "epochs": 1, "max_images": 8,
                            "batch_size": 4})
    train_run(config, normal_dir, tmp_path / "r128", **QUIET)
    state = load_checkpoint(tmp_path / "r128")
    from anomaly.families.dcgan.networks import GANArchitecture, Generator
    generator = Generator(GANArchitecture(**state["architecture"]))
    generator.load_state_dict(state["generator"])  # the weights are a 128 px generator's
    assert generator(torch.randn(2, 16)).shape == (2, 1, 128, 128)
    assert state["lung_prior"].shape == (128, 128)  # fitted on 128 px training images
    assert state["epoch"] == 1


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nimage_size: 32\n")
    config = load_config(TrainConfig, path, {"epochs": 5, "lr": None})
    assert config.epochs == 5 and config.image_size == 32 and config.lr == 2e-4
    path.write_text("epochs: 3\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_config(TrainConfig, path)
    path.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match="epochs"):
        load_config(TrainConfig, path)


def test_cpu_bf16_trains_with_finite_weights(tmp_path, normal_dir):
    from anomaly.device import cpu_bf16_supported

    messages = []
    config = TrainConfig(**{**TINY_CONFIG, "epochs": 1, "cpu_bf16": True, "device": "cpu"})
    train_run(config, normal_dir, tmp_path / "bf16", progress=False, log=messages.append)
    assert ("with mixed precision" in messages[0]) == cpu_bf16_supported()
    state = load_checkpoint(tmp_path / "bf16")
    assert all(torch.isfinite(v).all() for v in state["generator"].values() if v.is_floating_point())
    assert state["generator"]["net.0.weight"].dtype == torch.float32  # weights stay float32


def test_builtin_defaults_are_the_recommended_config():
    """`anomaly train-gan` without --config trains the model of configs/chest_xray.yaml."""
    from pathlib import Path

    recommended = load_config(TrainConfig, Path(__file__).parents[1] / "configs" /
                              "chest_xray.yaml")
    assert recommended == TrainConfig()
    assert recommended.critic_epochs > 0 and recommended.epochs > 0  # both families
    assert recommended.encoder_epochs > 0


def test_encoder_backward_goes_through_the_grad_scaler(trained_run, normal_dir, monkeypatch):
    """float16 autocast on CUDA needs a scaler: every encoder step must backpropagate the
    scaled loss and step through the scaler (disabled, so a no-op, on the CPU)."""
    import anomaly.train as train_module
    from anomaly.families.dcgan.train import train_encoder

    calls = []

    class RecordingScaler(torch.amp.GradScaler):
        def scale(self, outputs):
            calls.append("scale")
            scaled = super().scale(outputs) * 1.0  # a new node, to see its backward
            scaled.register_hook(lambda grad: calls.append("backward"))
            return scaled

        def step(self, optimizer, *args, **kwargs):
            calls.append("step")
            return super().step(optimizer, *args, **kwargs)

        def update(self, *args, **kwargs):
            calls.append("update")
            return super().update(*args, **kwargs)

    monkeypatch.setattr(train_module.torch.amp, "GradScaler", RecordingScaler)
    train_encoder(trained_run, 1, data_dir=normal_dir, **QUIET)
    assert calls == ["scale", "backward", "step", "update"] * 3  # 24 films, batches of 8


def test_every_training_config_in_configs_loads():
    """Each YAML under configs/ (but the classifier's) is a valid train-gan config."""
    from pathlib import Path

    root = Path(__file__).parents[1] / "configs"
    files = [p for p in sorted(root.rglob("*.yaml")) if not p.name.startswith("classify")]
    assert len(files) >= 5
    for path in files:
        config = load_config(TrainConfig, path)
        assert config.critic_epochs > 0 or config.epochs > 0, path


def test_resume_refuses_settings_that_change_what_was_trained(tmp_path, normal_dir):
    from anomaly.train import resume_config

    run = tmp_path / "run"
    config = TrainConfig(**{**TINY_CONFIG, "epochs": 1})
    train_run(config, normal_dir, run, **QUIET)
    for change in ({"seed": 1}, {"holdout_fraction": 0.5}, {"max_images": 10}):
        with pytest.raises(ConfigError, match=f"{next(iter(change))} .* there, .* now"):
            train_run(config.replace(**change), normal_dir, run, resume=True,
                      **QUIET)
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes((normal_dir / "img_000.png").read_bytes())
    with pytest.raises(ConfigError, match="data .* there"):
        train_run(config, other, run, resume=True, **QUIET)
    # the saved settings are the base: no flag falls back to a built-in default
    resumed = resume_config(run, overrides={"epochs": 2})
    assert resumed == config.replace(epochs=2)
    train_run(resumed, normal_dir, run, resume=True, **QUIET)
    assert load_checkpoint(run)["epoch"] == 2


def test_train_encoder_refuses_another_data_folder(trained_run, tmp_path):
    from anomaly.data import DataError
    from anomaly.families.dcgan.train import train_encoder

    with pytest.raises(DataError, match="re-split its held-out normals"):
        train_encoder(trained_run, 1, data_dir=tmp_path, **QUIET)


@pytest.mark.parametrize("setting, message", [
    ({"label_smoothing": 1.0}, "label_smoothing must be in"),
    ({"beta1": 1.0}, "beta1 and beta2 must be in"),
    ({"beta2": -0.1}, "beta1 and beta2 must be in"),
    ({"latent_dim": 0}, "latent_dim, generator_width"),
    ({"sample_count": -1}, "sample_count >= 0"),
])
def test_meaningless_dcgan_settings_are_refused(setting, message):
    from anomaly.families.dcgan.config import DCGANConfig

    with pytest.raises(ValueError, match=message):
        DCGANConfig(**setting)
