"""Which films set the critic's BatchNorm statistics in training (batchnorm_statistics)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from anomaly.families.critic.batchnorm_statistics import statistics_from
from anomaly.families.critic.config import CriticConfig

CLEAN = torch.tensor([True, False, True, False, True, False, True, False])


def norm_and_batch() -> tuple[nn.BatchNorm2d, torch.Tensor]:
    """A BatchNorm with non-trivial affine weights and a batch whose films with
    opacities (the odd ones) are brighter in every channel."""
    generator = torch.Generator().manual_seed(0)
    norm = nn.BatchNorm2d(3)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2, generator=generator)
        norm.bias.normal_(generator=generator)
    features = torch.randn(8, 3, 5, 5, generator=generator)
    features[~CLEAN] += 3
    return norm, features


def test_clean_statistics_normalise_every_film_by_the_clean_films_alone():
    norm, features = norm_and_batch()
    alone = copy.deepcopy(norm)
    with statistics_from(norm, CLEAN, "clean"):
        out = norm(features)
    torch.testing.assert_close(out[CLEAN], alone(features[CLEAN]))  # as if alone
    torch.testing.assert_close(norm.running_mean, alone.running_mean)
    torch.testing.assert_close(norm.running_var, alone.running_var)
    shift = (out[~CLEAN] - out[CLEAN]).mean(dim=(0, 2, 3)) / norm.weight.detach()
    assert (shift > 2).all()  # the brighter films stay brighter, not normalised away
    out.sum().backward()  # gradients reach the affine weights
    assert norm.weight.grad is not None and "forward" not in vars(norm)


def test_split_statistics_normalise_each_half_by_its_own_and_keep_the_clean_running():
    norm, features = norm_and_batch()
    clean_alone, opacity_alone = copy.deepcopy(norm), copy.deepcopy(norm)
    with statistics_from(norm, CLEAN, "split"):
        out = norm(features)
    torch.testing.assert_close(out[CLEAN], clean_alone(features[CLEAN]))
    torch.testing.assert_close(out[~CLEAN], opacity_alone(features[~CLEAN]))
    torch.testing.assert_close(norm.running_mean, clean_alone.running_mean)
    assert not torch.allclose(norm.running_mean, opacity_alone.running_mean)

    norm.momentum = clean_alone.momentum = None  # a cumulative mean of the statistics
    for batch in (features, features * 2):
        with statistics_from(norm, CLEAN, "split"):
            norm(batch)
        clean_alone(batch[CLEAN])
    torch.testing.assert_close(norm.running_var, clean_alone.running_var)


def test_the_batch_default_evaluation_mode_and_an_error_leave_batchnorm_as_it_is():
    norm, features = norm_and_batch()
    plain = copy.deepcopy(norm)
    with statistics_from(norm, CLEAN, "batch"):
        torch.testing.assert_close(norm(features), plain(features))
    norm.eval(), plain.eval()
    with statistics_from(norm, CLEAN, "clean"):
        torch.testing.assert_close(norm(features), plain(features))
    with pytest.raises(RuntimeError), statistics_from(norm, CLEAN, "clean"):
        raise RuntimeError("a crash inside the step")
    assert "forward" not in vars(norm)  # restored after the crash
    with pytest.raises(ValueError, match="batchnorm statistics must be one of"):
        with statistics_from(norm, CLEAN, "opacity"):
            pass
    with pytest.raises(ValueError, match="batchnorm_statistics must be one of batch, clean"):
        CriticConfig(batchnorm_statistics="opacity")


def test_a_batch_with_fewer_than_two_clean_films_uses_the_whole_batch():
    norm, features = norm_and_batch()
    plain = copy.deepcopy(norm)
    one_clean = torch.zeros(8, dtype=torch.bool)
    one_clean[0] = True
    with statistics_from(norm, one_clean, "clean"):
        torch.testing.assert_close(norm(features), plain(features))
