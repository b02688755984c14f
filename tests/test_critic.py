"""The opacity critic family: network, synthesis, training, resume, scoring, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly.checkpoint import CheckpointError, load_checkpoint
from anomaly.density import mahalanobis
from anomaly.evaluate import EvaluationError
from anomaly.families.critic.network import CriticArchitecture, OpacityCritic, fold_batchnorm
from anomaly.families.critic.scorer import CriticFamily, critic_embedding
from anomaly.families.critic.synthesis import (
    paste_opacities,
    paste_patches,
    soft_lung_prior,
    synthesise,
    vary_acquisition,
)
from anomaly.families.dcgan.train import train_encoder
from anomaly.regions import find_regions
from anomaly.score import Scorer, available_modes
from anomaly.train import TrainConfig, train_run
from tests.conftest import TINY_DEFAULT

QUIET = dict(progress=False, log=lambda *a: None)
CRITIC_ONLY = {**TINY_DEFAULT, "epochs": 0, "encoder_epochs": 0}
# the probes' run: the l2 embedding and density score they were written for
L2_CRITIC = {**CRITIC_ONLY, "critic_embedding": "l2", "critic_score": "density"}


def lungs(size: int = 32) -> torch.Tensor:
    prior = torch.zeros(size, size)
    prior[size // 4: 3 * size // 4, size // 8: 3 * size // 8] = 1
    prior[size // 4: 3 * size // 4, 5 * size // 8: 7 * size // 8] = 1
    return prior


def test_network_shapes_and_forward_is_its_parts():
    critic = OpacityCritic(CriticArchitecture(image_size=128, width=4)).eval()
    x = torch.randn(2, 1, 128, 128)
    maps = critic.feature_map(x)
    assert maps.shape == (2, 32, 16, 16)  # 16 x 16 cells at 128 px: the heat map's grid
    torch.testing.assert_close(critic(x), critic.logits(critic.pooled(maps)))
    assert critic(x).shape == (2,)
    with pytest.raises(ValueError, match="multiple"):
        CriticArchitecture(image_size=100)


def test_train_mode_batchnorm_differs_but_output_type_does_not():
    critic = OpacityCritic(CriticArchitecture(image_size=32, width=4))
    x = torch.randn(4, 1, 32, 32)
    train_out = critic.train()(x)
    eval_out = critic.eval()(x)
    assert train_out.shape == eval_out.shape == (4,)
    assert not torch.allclose(train_out, eval_out)  # batch vs running statistics


def test_folded_batchnorm_computes_the_eval_mode_critic_without_batchnorm():
    torch.manual_seed(0)
    critic = OpacityCritic(CriticArchitecture(image_size=32, width=4))
    critic.train()(torch.randn(16, 1, 32, 32) * 3)  # running statistics away from 0 / 1
    critic.eval()
    folded = fold_batchnorm(critic)
    x = torch.randn(4, 1, 32, 32)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in critic.modules())  # a copy
    torch.testing.assert_close(folded.feature_map(x), critic.feature_map(x), atol=1e-5,
                               rtol=1e-4)
    torch.testing.assert_close(folded(x), critic(x), atol=1e-5, rtol=1e-4)


def test_opacities_brighten_only_inside_the_lungs_and_towards_a_level():
    torch.manual_seed(0)
    prior = soft_lung_prior(lungs())
    films = torch.rand(16, 1, 32, 32) * 2 - 1
    pasted, masks = paste_opacities(films, prior)
    changed = (pasted - films).abs() > 1e-6
    assert changed.any(dim=(1, 2, 3)).all()  # every film got at least one opacity
    assert not changed[:, :, prior == 0].any()  # nothing outside the (soft) lung prior
    assert (pasted >= films - 1e-6).all()  # blended towards a brighter level, never darker
    bright = (films + 1) / 2 >= 0.95  # above the highest level: left alone
    assert not changed[bright].any()
    assert masks.min() >= 0 and masks.max() <= 0.7 + 1e-6  # alpha at most 0.7
    with pytest.raises(ValueError, match="empty"):
        paste_opacities(films, torch.zeros(32, 32))


def test_zoom_and_tilt_move_structures_about_the_centre():
    films = torch.full((4, 1, 32, 32), -1.0)
    films[:, :, :, [11, 20]] = 1.0  # two stripes 4.5 px either side of the centre
    zoomed = vary_acquisition(films, gamma=(1.0, 1.0), scale=(2.0, 2.0))
    columns = zoomed[:, 0].mean(1)  # (B, S): brightness per column
    for profile in columns:
        bright = set(profile.topk(4).indices.tolist())
        assert bright <= {6, 7, 24, 25}  # 9 px either side: zoomed twice about the centre
    tilted = vary_acquisition(films, gamma=(1.0, 1.0), max_rotation=20.0)
    assert not torch.allclose(tilted, films) and not torch.allclose(tilted, films.flip(-1))
    untouched = vary_acquisition(films, gamma=(1.0, 1.0), scale=(1.0, 1.0), max_rotation=0)
    assert torch.equal(untouched, films)  # both stripes mirror onto each other
    with pytest.raises(ValueError, match="critic: scale_range"):
        TrainConfig(critic_scale_range=[1.1, 0.9])


def test_sharpness_blurs_or_sharpens_an_edge_and_is_off_by_default():
    films = torch.full((32, 1, 128, 128), -0.5)  # the side its blur is set for
    films[:, :, :, 64:] = 0.5  # one vertical edge (mirrored or not, still one edge)
    torch.manual_seed(0)
    plain = vary_acquisition(films, gamma=(1.0, 1.0))
    torch.manual_seed(0)
    off = vary_acquisition(films, gamma=(1.0, 1.0), sharpness=0.0)
    assert torch.equal(plain, off)  # no draw, the same random stream
    torch.manual_seed(0)
    varied = vary_acquisition(films, gamma=(1.0, 1.0), sharpness=1.0)
    assert varied.min() >= -1 and varied.max() <= 1
    steepest = (varied[:, 0, 8, 1:] - varied[:, 0, 8, :-1]).abs().amax(-1)  # (B,)
    assert (steepest < 0.9).any() and (steepest > 1.1).any()  # some blurred, some sharpened
    assert torch.allclose(varied.mean((1, 2, 3)), films.mean((1, 2, 3)), atol=0.05)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="critic: sharpness"):
            TrainConfig(critic_sharpness=bad)


def test_patches_carry_the_same_films_anatomy_into_its_lungs_where_brighter():
    torch.manual_seed(0)
    prior = soft_lung_prior(lungs())
    films = torch.full((16, 1, 32, 32), -1.0)  # dark film with one bright rib-like band
    films[:, :, 2:5, :] = 1.0
    pasted, masks = paste_patches(films, prior)
    changed = (pasted - films).abs() > 1e-6
    assert not changed[:, :, prior == 0].any()  # only inside the (soft) lung prior
    assert (pasted >= films - 1e-6).all()  # brighter where the moved region is, never darker
    assert pasted.amax() <= 1.0 and masks.max() <= 0.9 + 1e-6
    plain = torch.full((4, 1, 32, 32), -1.0)  # nothing brighter to move: nothing changes
    assert torch.equal(paste_patches(plain, prior)[0], plain)
    with pytest.raises(ValueError, match="empty"):
        paste_patches(films, torch.zeros(32, 32))


def test_varied_opacities_brighten_the_lungs_alone_with_sharp_and_soft_edges():
    from anomaly.families.critic.synthesis import paste_varied_opacities

    prior = soft_lung_prior(lungs(64))
    films = torch.rand(64, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pasted, masks = paste_varied_opacities(films, prior,
                                           generator=torch.Generator().manual_seed(1))
    changed = (pasted - films).abs() > 1e-6
    assert changed.any(dim=(1, 2, 3)).all()  # every film got at least one opacity
    assert not changed[:, :, prior == 0].any()  # nothing outside the (soft) lung prior
    assert (pasted >= films - 1e-6).all() and pasted.max() <= 1
    assert masks.min() >= 0 and masks.max() <= 1
    sharp = ((masks > 0.05) & (masks < 0.5)).flatten(1).sum(1)  # a soft rim's pixels
    core = (masks >= 0.5).flatten(1).sum(1)
    ratio = sharp / core.clamp(min=1)
    assert ratio.min() < 0.3 < ratio.max()  # some edges sharp, some soft
    again = paste_varied_opacities(films, prior, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again[0], pasted)


def test_mixed_synthesis_gives_each_film_blobs_or_a_patch():
    prior = soft_lung_prior(lungs())
    films = torch.rand(64, 1, 32, 32) * 2 - 1
    outputs = {}
    for kind in ("blobs", "patches", "mixed"):
        torch.manual_seed(3)
        outputs[kind] = synthesise(films, prior, kind)[0]
    assert not torch.equal(outputs["blobs"], outputs["patches"])
    torch.manual_seed(3)  # the mixture draws blobs first, then patches, then the choice
    blobs = synthesise(films, prior, "blobs")[0]
    patches = synthesise(films, prior, "patches")[0]
    as_blobs = (outputs["mixed"] == blobs).flatten(1).all(1)
    as_patch = (outputs["mixed"] == patches).flatten(1).all(1)
    assert (as_blobs | as_patch).all()  # each film one or the other, whole
    assert 0.25 < as_blobs.float().mean() < 0.75  # about half each
    with pytest.raises(ValueError, match="blobs, patches, mixed, varied, diffuse, blobs"):
        synthesise(films, prior, "stars")
    with pytest.raises(ValueError, match="critic: synthesis"):
        TrainConfig(critic_synthesis="stars").critic_config()


def test_diffuse_opacities_are_a_wide_faint_haze_in_one_or_both_lungs():
    from anomaly.families.critic.synthesis import paste_diffuse_opacities

    prior = soft_lung_prior(lungs(64))
    films = torch.full((60, 1, 64, 64), -0.6)
    pasted, masks = paste_diffuse_opacities(films, prior,
                                            generator=torch.Generator().manual_seed(1))
    changed = (pasted - films).abs() > 1e-6
    assert not changed[:, :, prior == 0].any()  # nothing outside the (soft) lung prior
    assert (pasted >= films - 1e-6).all() and pasted.max() <= 1
    assert masks.min() >= 0 and masks.max() <= 0.5 + 1e-6  # faint: alpha at most 0.5
    seen = masks > 0.05  # a Gaussian's tail reaches the other lung: count what shows
    left, right = seen[..., :32].any(dim=(1, 2, 3)), seen[..., 32:].any(dim=(1, 2, 3))
    assert (left | right).all() and 0.4 < (left & right).float().mean() < 0.9  # 2 in 3: both
    torch.manual_seed(1)
    blobs = synthesise(films, prior, "blobs")[1]
    assert (masks > 0.02).float().mean() > (blobs > 0.02).float().mean()  # wider than blobs
    again = paste_diffuse_opacities(films, prior, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again[0], pasted)
    torch.manual_seed(3)
    either = synthesise(films, prior, "blobs+diffuse")[1]
    torch.manual_seed(3)
    blob_masks = synthesise(films, prior, "blobs")[1]  # drawn first, so the same blobs
    same = (either == blob_masks).flatten(1).all(1)
    assert 0 < same.float().mean() < 1  # some films blobs, the others a haze
    smooth = paste_diffuse_opacities(films, prior, grain=1 / 32,
                                     generator=torch.Generator().manual_seed(1))[1]

    def roughness(masks):  # mean step between neighbouring pixels, per unit of mask
        return (masks[..., 1:] - masks[..., :-1]).abs().mean() / masks.mean()

    assert roughness(smooth) < 0.7 * roughness(masks)  # the haze kind: smoothly uneven


def test_multifocal_opacities_are_many_small_blobs():
    from anomaly.families.critic.synthesis import paste_multifocal_opacities

    prior = soft_lung_prior(lungs(64))
    films = torch.full((40, 1, 64, 64), -0.6)
    _, masks = paste_multifocal_opacities(films, prior, generator=torch.Generator().manual_seed(2))
    _, blobs = paste_opacities(films, prior, generator=torch.Generator().manual_seed(2))
    spots = [len(find_regions(m[0].numpy(), 0.1)) for m in masks]
    assert max(spots) >= 4 and not (masks[:, :, prior == 0] > 0).any()
    assert (masks > 0.1).float().mean() < (blobs > 0.1).float().mean() * 2  # small ones
    torch.manual_seed(3)
    either = synthesise(films, prior, "blobs+multifocal")[1]
    torch.manual_seed(3)
    same = (either == synthesise(films, prior, "blobs")[1]).flatten(1).all(1)
    assert 0 < same.float().mean() < 1  # some films blobs, the others many small ones


def test_faint_and_dense_opacities_are_the_blobs_blended_in_lighter_or_denser():
    from anomaly.families.critic.config import CriticConfig
    from anomaly.families.critic.synthesis import paste_dense_opacities, paste_faint_opacities

    prior = soft_lung_prior(lungs(64))
    films = torch.full((40, 1, 64, 64), -0.6)
    pasted, masks = paste_faint_opacities(films, prior,
                                          generator=torch.Generator().manual_seed(5))
    _, blobs = paste_opacities(films, prior, generator=torch.Generator().manual_seed(5))
    assert masks.max() <= 0.4 + 1e-6 and blobs.max() > 0.4  # the blend factor's range
    assert masks.flatten(1).max(1).values.min() > 0  # every film gets one
    assert (masks[blobs > 0.05] > 0).all() and (masks[blobs == 0] == 0).all()  # where they are
    assert not (pasted - films)[:, :, prior == 0].abs().gt(1e-6).any()  # lungs only
    assert CriticConfig(synthesis="blobs+faint").synthesis == "blobs+faint"
    _, dense = paste_dense_opacities(films, prior, generator=torch.Generator().manual_seed(5))
    peaks = [m.flatten(1).max(1).values.mean() for m in (dense, blobs, masks)]
    assert dense.max() <= 0.9 + 1e-6 and peaks[0] > peaks[1] > peaks[2]  # dense, blobs, faint
    assert (dense[blobs > 0.05] > blobs[blobs > 0.05] * 0.5).all()  # where the blobs are


def test_foreign_patches_blend_another_film_into_the_lungs_both_ways():
    from anomaly.families.critic.synthesis import paste_foreign_patches

    prior = soft_lung_prior(lungs(64))
    films = torch.stack([torch.full((1, 64, 64), level) for level in (-0.8, 0.6, -0.2)])
    pasted, masks = paste_foreign_patches(films, prior,
                                          generator=torch.Generator().manual_seed(4))
    assert not (pasted - films)[:, :, prior == 0].abs().gt(1e-6).any()  # lungs only
    assert masks.min() >= 0 and masks.max() <= 1 and masks.flatten(1).max(1).values.min() > 0.1
    # film i moves towards film i - 1 of the batch: film 0 towards -0.2 (brighter),
    # film 1 towards -0.8 (darker), film 2 towards 0.6 (brighter)
    expected = films + masks * (films.roll(1, dims=0) - films)
    torch.testing.assert_close(pasted, expected)
    assert pasted[0].max() > -0.8 + 0.1 and pasted[1].min() < 0.6 - 0.1  # up and down
    alone, alone_masks = paste_foreign_patches(films[:1] * 0 + torch.linspace(-1, 1, 64),
                                               prior, generator=torch.Generator().manual_seed(4))
    assert alone_masks.max() > 0.1 and torch.isfinite(alone).all()  # its own mirror image
    torch.manual_seed(3)
    either = synthesise(films.repeat(10, 1, 1, 1), prior, "blobs+foreign")[1]
    torch.manual_seed(3)
    same = (either == synthesise(films.repeat(10, 1, 1, 1), prior, "blobs")[1]).flatten(1).all(1)
    assert 0 < same.float().mean() < 1  # some films blobs, the others a foreign patch
    assert TrainConfig(critic_synthesis="blobs+foreign").sections["critic"].synthesis == \
        "blobs+foreign"


def test_perihilar_streaks_are_thin_lines_from_each_hilum_outwards():
    from anomaly.families.critic.synthesis import _hila, paste_perihilar_streaks

    prior = soft_lung_prior(lungs(64))
    hila = _hila(prior)
    assert hila[0, 1] < 32 <= hila[1, 1]  # one per half, at its lung's medial edge
    assert (prior[hila[:, 0].long(), hila[:, 1].long()] > 0.5).all()
    films = torch.full((30, 1, 64, 64), -0.6)
    pasted, masks = paste_perihilar_streaks(films, prior,
                                            generator=torch.Generator().manual_seed(5))
    assert not (pasted - films)[:, :, prior == 0].abs().gt(1e-6).any()
    assert (pasted >= films - 1e-6).all() and masks.min() >= 0 and masks.max() <= 0.6 + 1e-6
    seen = masks > 0.05
    left, right = seen[..., :32].any(dim=(1, 2, 3)), seen[..., 32:].any(dim=(1, 2, 3))
    assert (left | right).all() and 0 < (left & right).float().mean() < 1
    # thin: far fewer pixels than blobs of the same films, and rough across the lines
    _, blobs = paste_opacities(films, prior, generator=torch.Generator().manual_seed(5))
    assert seen.float().mean() < (blobs > 0.05).float().mean()
    with pytest.raises(ValueError, match="empty in one half"):
        _hila(torch.zeros(64, 64))


def test_hyperinflation_stretches_the_lungs_down_and_darkens_them():
    from anomaly.families.critic.synthesis import paste_hyperinflation

    prior = soft_lung_prior(lungs(64))
    top = int((prior > 0.5).any(1).nonzero().min())
    ramp = torch.linspace(-1, 1, 64).view(1, 1, 64, 1).expand(6, 1, 64, 64).clone()
    pasted, masks = paste_hyperinflation(ramp, prior, darken=(0.0, 0.0),
                                         generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(pasted[:, :, :top], ramp[:, :, :top])  # above the lungs
    no_lung = prior.amax(0) == 0
    torch.testing.assert_close(pasted[..., no_lung], ramp[..., no_lung])  # beside them
    centre = int(prior.amax(0).argmax())
    assert (pasted[:, 0, top + 5:, centre] < ramp[:, 0, top + 5:, centre]).all()  # pulled down
    assert masks.min() >= 0 and masks.flatten(1).amax(1).allclose(torch.tensor(0.6))
    flat = torch.zeros(6, 1, 64, 64)
    darker, _ = paste_hyperinflation(flat, prior, stretch=(1.0, 1.0),
                                     generator=torch.Generator().manual_seed(2))
    inside = prior > 0.9
    assert (darker[..., inside] < -0.02).all() and darker[..., prior == 0].eq(0).all()
    assert TrainConfig(critic_synthesis="blobs+hyperinflation").sections["critic"] \
        .synthesis == "blobs+hyperinflation"


def test_acquisition_changes_mirror_gamma_and_shift():
    torch.manual_seed(1)
    films = torch.rand(8, 1, 16, 16) * 2 - 1
    mirrored = vary_acquisition(films, gamma=(1.0, 1.0), max_shift=0)
    for film, out in zip(films, mirrored):
        assert torch.equal(out, film) or torch.equal(out, film.flip(-1))
    curved = vary_acquisition(films, gamma=(0.5, 0.5), max_shift=0)
    expected = ((films + 1) / 2).pow(0.5) * 2 - 1  # gamma 0.5 brightens every pixel
    for film, out in zip(expected, curved):
        assert torch.allclose(out, film, atol=1e-6) or torch.allclose(out, film.flip(-1),
                                                                      atol=1e-6)
    shifted = vary_acquisition(films, gamma=(1.0, 1.0), max_shift=3)
    assert torch.allclose(shifted.sum(dim=(1, 2, 3)), films.sum(dim=(1, 2, 3)), atol=1e-4)
    assert not torch.equal(shifted, mirrored)  # the shift moved something


@pytest.fixture(scope="module")
def critic_run(tmp_path_factory, normal_dir):
    run = tmp_path_factory.mktemp("critic_run")
    train_run(TrainConfig(**L2_CRITIC), normal_dir, run, **QUIET)
    return run


def test_a_critic_run_holds_the_critic_and_nothing_else(critic_run):
    state = load_checkpoint(critic_run)
    assert state["families"] == ["critic"]
    part = state["critic"]
    assert part["epoch"] == 2 and part["density"]["mean"].shape == (32,)
    assert part["heat_scale"] > 0
    assert "generator" not in state and available_modes(state) == ["critic"]
    assert set(state["score_stats"]) == {"critic"}


@pytest.mark.parametrize("mode", ["search", "encoder", "encoder-search", "discriminator"])
def test_modes_without_their_network_are_refused_in_one_line(critic_run, mode):
    with pytest.raises(CheckpointError, match=f"mode '{mode}' needs .*its modes: critic") as err:
        Scorer.from_checkpoint(critic_run, mode=mode)
    assert "\n" not in str(err.value)


def test_train_encoder_refuses_a_run_without_a_trained_generator(critic_run):
    with pytest.raises(CheckpointError, match="no trained DCGAN generator"):
        train_encoder(critic_run, 1, **QUIET)


def test_the_critic_refuses_search_iterations(critic_run):
    with pytest.raises(ValueError, match="--iterations applies to the search modes"):
        Scorer.from_checkpoint(critic_run, iterations=20)


def test_density_score_is_the_mahalanobis_distance_of_the_embedding(critic_run, normal_dir):
    scorer = Scorer.from_checkpoint(critic_run, device="cpu")
    assert (scorer.mode, scorer.score) == ("critic", "density")
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    scores = scorer.score_tensor(images)
    family: CriticFamily = scorer.family
    with torch.no_grad():
        expected = mahalanobis(critic_embedding(family.critic, images, family.views),
                               family.density)
    np.testing.assert_allclose(scores.score, expected.numpy(), rtol=1e-4)
    np.testing.assert_allclose(scores.density, scores.score)
    assert scores.heatmaps.shape == (3, 32, 32) and (scores.heatmaps >= 0).all()
    assert scores.heat_scale == 1.0  # the map is a probability: full red at 1
    gradcam = Scorer.from_checkpoint(critic_run, device="cpu", heat="gradcam")
    assert gradcam.score_tensor(images).heat_scale == \
        load_checkpoint(critic_run)["critic"]["heat_scale"]
    logit = Scorer.from_checkpoint(critic_run, score="logit").score_tensor(images)
    np.testing.assert_allclose(logit.score, scores.logit, rtol=1e-5)
    no_maps = scorer.score_tensor(images, heatmaps=False)
    assert no_maps.heatmaps is None
    np.testing.assert_allclose(no_maps.score, scores.score, rtol=1e-5)


def test_heat_follows_an_opacity_the_critic_was_taught(tmp_path, normal_dir):
    """A critic trained long enough to find pasted opacities scores them higher (density
    and logit), and its heat map is hotter where the opacity was pasted."""
    run = tmp_path / "taught"
    config = TrainConfig(**{**CRITIC_ONLY, "critic_epochs": 25, "critic_width": 8,
                            "holdout_fraction": 0.0})
    train_run(config, normal_dir, run, **QUIET)
    scorer = Scorer.from_checkpoint(run, device="cpu")
    state = load_checkpoint(run)
    from anomaly.data import find_images, load_images, uint8_to_model
    loaded = load_images(find_images(normal_dir), scorer.preprocess_config)
    clean = uint8_to_model(loaded.images)
    torch.manual_seed(3)
    pasted, masks = paste_opacities(clean, soft_lung_prior(state["lung_prior"]))
    before, after = scorer.score_tensor(clean), scorer.score_tensor(pasted)
    from sklearn.metrics import roc_auc_score
    labels = [0] * len(clean) + [1] * len(pasted)
    assert roc_auc_score(labels, np.r_[before.logit, after.logit]) > 0.8
    assert roc_auc_score(labels, np.r_[before.score, after.score]) > 0.7
    inside = masks[:, 0] > 0.2
    heat = after.heatmaps
    assert heat[inside].mean() > heat[~inside].mean()


def test_critic_does_not_depend_on_the_dcgan_trained_after_it(tmp_path, normal_dir, critic_run):
    both = tmp_path / "both"
    train_run(TrainConfig(**{**CRITIC_ONLY, "epochs": 1}), normal_dir, both, **QUIET)
    alone, with_gan = load_checkpoint(critic_run), load_checkpoint(both)
    assert with_gan["families"] == ["critic", "dcgan"]
    for key, value in alone["critic"]["network"].items():
        torch.testing.assert_close(with_gan["critic"]["network"][key], value)


def test_critic_resumes_after_a_crash_exactly(tmp_path, normal_dir, critic_run, monkeypatch):
    import anomaly.checkpoint

    run = tmp_path / "crashed"
    save = anomaly.checkpoint.save_checkpoint
    calls = []

    def save_then_crash(state, path):
        save(state, path)
        calls.append(path)
        raise KeyboardInterrupt  # as if killed right after the first epoch's checkpoint

    monkeypatch.setattr(anomaly.checkpoint, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):  # the family saves through its TrainingRun
        train_run(TrainConfig(**L2_CRITIC), normal_dir, run, **QUIET)
    monkeypatch.setattr(anomaly.checkpoint, "save_checkpoint", save)
    assert load_checkpoint(run)["critic"]["epoch"] == 1 and len(calls) == 1
    train_run(TrainConfig(**L2_CRITIC), normal_dir, run, resume=True, **QUIET)
    resumed, uninterrupted = load_checkpoint(run)["critic"], load_checkpoint(critic_run)["critic"]
    assert resumed["epoch"] == 2
    for key, value in uninterrupted["network"].items():
        torch.testing.assert_close(resumed["network"][key], value)
    for a, b in zip(resumed["optimizer"]["state"].values(),
                    uninterrupted["optimizer"]["state"].values()):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"])
    assert resumed["schedule"]["last_epoch"] == uninterrupted["schedule"]["last_epoch"]
    torch.testing.assert_close(resumed["density"]["precision"],
                               uninterrupted["density"]["precision"])


def test_critic_trains_under_torchrun_with_identical_replicas(tmp_path, normal_dir):
    from tests.test_distributed import free_port, torchrun

    run = tmp_path / "ddp_critic"
    done = torchrun(free_port(), "cli.anomaly_cli", "train-gan", "--data", str(normal_dir),
                    "--out", str(run), "--image-size", "32", "--epochs", "0",
                    "--critic-epochs", "2", "--batch-size", "4", "--no-progress",
                    "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("critic epoch 2/2") == 1  # only rank 0 logs
    assert "critic weights identical on all 2 ranks" in done.stdout
    state = load_checkpoint(run)
    assert state["critic"]["epoch"] == 2 and state["critic"]["density"] is not None


@pytest.mark.parametrize("statistics", ["clean", "split"])
def test_a_critic_trained_with_the_clean_films_batchnorm_statistics(tmp_path, normal_dir,
                                                                    critic_run, statistics):
    run = tmp_path / statistics
    train_run(TrainConfig(**CRITIC_ONLY, critic_batchnorm_statistics=statistics), normal_dir,
              run, **QUIET)
    part, plain = load_checkpoint(run)["critic"], load_checkpoint(critic_run)["critic"]
    assert part["config"]["batchnorm_statistics"] == statistics
    key = "blocks.0.1.running_mean"  # the same seed and films: only the statistics differ
    assert not torch.allclose(part["network"][key], plain["network"][key])
    scores = Scorer.from_checkpoint(run, device="cpu").score_tensor(torch.rand(3, 1, 32, 32) * 2 - 1)
    assert np.isfinite(scores.density).all() and (scores.density > 0).all()


def test_a_critic_with_instance_norm_in_its_first_block_trains_scores_and_exports(
        tmp_path, normal_dir):
    from anomaly.export import export_run
    from anomaly.exported import ExportedScorer

    run = tmp_path / "instance"
    train_run(TrainConfig(**CRITIC_ONLY, critic_instance_norm_blocks=1), normal_dir, run,
              **QUIET)
    part = load_checkpoint(run)["critic"]
    assert part["architecture"]["instance_norm_blocks"] == 1
    critic = OpacityCritic(CriticArchitecture(**part["architecture"]))
    critic.load_state_dict(part["network"])
    assert isinstance(critic.blocks[0][1], torch.nn.InstanceNorm2d)
    assert isinstance(critic.blocks[1][1], torch.nn.BatchNorm2d)
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():  # folding leaves the InstanceNorm as it is
        torch.testing.assert_close(fold_batchnorm(critic)(images), critic.eval()(images),
                                   rtol=1e-4, atol=1e-5)
        # each film's own contrast is normalised away: half the contrast, the same output
        torch.testing.assert_close(critic(images * 0.5), critic(images), rtol=1e-3, atol=1e-4)
        plain = OpacityCritic(CriticArchitecture(image_size=32, width=4)).eval()
        assert not torch.allclose(plain(images * 0.5), plain(images), rtol=1e-3, atol=1e-4)
    scorer = Scorer.from_checkpoint(run, device="cpu")
    export_run(run, tmp_path / "export")
    paths = sorted(normal_dir.iterdir())[:3]
    np.testing.assert_allclose(ExportedScorer(tmp_path / "export").score_paths(paths).score,
                               scorer.score_paths(paths, progress=False).score,
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="instance_norm_blocks"):
        TrainConfig(critic_instance_norm_blocks=3).critic_config()  # beside 2 own blocks
    with pytest.raises(ValueError, match="instance_norm_blocks"):
        CriticArchitecture(instance_norm_blocks=5)


def test_config_refuses_a_run_that_trains_nothing():
    with pytest.raises(ValueError, match="train nothing"):
        TrainConfig(epochs=0, critic_epochs=0)
    with pytest.raises(ValueError, match="critic: gamma_range"):
        TrainConfig(critic_gamma_range=[1.2, 0.8])
    assert TrainConfig().section("critic").epochs == TrainConfig().critic_epochs == 30


def test_density_is_mirror_invariant_with_two_views(tmp_path, normal_dir):
    run = tmp_path / "two_views"
    train_run(TrainConfig(**CRITIC_ONLY, critic_score_views=2), normal_dir, run, **QUIET)
    scorer = Scorer.from_checkpoint(run, device="cpu")
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    scorer.family.map_field = None  # the run's map field is its own, not mirror-symmetric
    plain, mirrored = scorer.score_tensor(images), scorer.score_tensor(images.flip(-1))
    np.testing.assert_allclose(plain.density, mirrored.density, rtol=1e-4)
    np.testing.assert_allclose(plain.logit, mirrored.logit, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(plain.heatmaps.flip(-1), mirrored.heatmaps, rtol=1e-3, atol=1e-4)


def test_lung_brightness_is_the_mean_inside_the_prior(critic_run):
    state = load_checkpoint(critic_run)
    scorer = Scorer.from_state(state, score="lung-brightness")
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    prior = state["lung_prior"]
    expected = (images[:, 0] * prior).sum((1, 2)) / prior.sum()
    np.testing.assert_allclose(scorer.score_tensor(images).score, expected.numpy(), rtol=1e-5)


def test_scores_of_another_family_are_refused(critic_run, trained_run):
    with pytest.raises(ValueError, match="not one of mode 'critic'"):
        Scorer.from_checkpoint(critic_run, score="lung-opacity")
    with pytest.raises(ValueError, match="not one of mode 'encoder'"):
        Scorer.from_checkpoint(trained_run, score="logit")


def test_cli_choices_are_the_families_declarations():
    from anomaly import score
    from anomaly.families import critic, dcgan
    from anomaly.families.critic.scorer import CriticFamily
    from anomaly.families.dcgan.scorer import DCGANFamily
    from cli import anomaly_cli

    assert anomaly_cli.MODES.choices == score.MODES == (*CriticFamily.modes, *DCGANFamily.modes)
    assert set(anomaly_cli.SCORES.choices) == {*critic.SCORES, *dcgan.SCORES, "lung-brightness"}
    assert set(DCGANFamily.score_kinds) <= set(dcgan.SCORES)


def example_module(name: str):
    """examples/<name>.py imported as the script would run (its folder on the path)."""
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def run_example(name: str, argv: list[str]) -> None:
    example_module(name).main(argv)


def test_critic_probes_example_prints_every_component(critic_run, labelled_dir, capsys):
    run_example("critic_probes", ["--model", str(critic_run), "--data", str(labelled_dir)])
    out = capsys.readouterr().out
    for name in ("density", "logit", "brightness", "z(density)+z(brightness)"):
        assert 0 <= _row(out, name) <= 1
    assert _row(out, "density") == pytest.approx(_auroc_of_default(critic_run, labelled_dir),
                                                 abs=2e-3)  # the run's own score


def test_seed_ensemble_averages_standardised_runs(critic_run, tmp_path, normal_dir,
                                                  labelled_dir, capsys):
    """Two seeds: the ensemble's AUROC is that of the mean of their standardised scores,
    recomputed here from the two scorers."""
    from anomaly.data import scan_labelled_folder
    from anomaly.evaluate import auroc
    from anomaly.evaluate_model import heldout_normal_scores

    other = tmp_path / "seed1"
    train_run(TrainConfig(**{**CRITIC_ONLY, "seed": 1}), normal_dir, other, **QUIET)
    run_example("seed_ensemble", ["--model", str(critic_run), "--model", str(other),
                                  "--data", str(labelled_dir)])
    lines = capsys.readouterr().out.splitlines()
    folder = scan_labelled_folder(labelled_dir)
    standardised = []
    for run in (critic_run, other):
        scorer = Scorer.from_checkpoint(run, device="cpu")
        normal = np.asarray(heldout_normal_scores(scorer, log=lambda *a: None))
        result = scorer.score_paths(folder.paths, progress=False)
        standardised.append((np.asarray(result.score) - normal.mean()) / normal.std())
    expected = auroc(folder.binary_labels, np.mean(standardised, axis=0))
    assert lines[2].startswith(f"{labelled_dir.name}: average of 2 runs: AUROC")
    assert float(lines[2].rsplit(" ", 1)[1]) == pytest.approx(expected, abs=1e-3)
    assert standardised[0].tolist() != standardised[1].tolist()  # two different runs


def test_an_old_checkpoint_with_an_opacity_head_is_refused_in_one_line(trained_run, tmp_path):
    from anomaly.checkpoint import save_checkpoint

    state = load_checkpoint(trained_run)
    state["architecture"] = {**state["architecture"], "lesion_head": True}
    save_checkpoint(state, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="opacity head of an earlier version"):
        Scorer.from_checkpoint(tmp_path / "old.pt", mode="encoder")


def test_a_format_1_checkpoint_is_read_as_a_dcgan(trained_run, tmp_path):
    from anomaly.checkpoint import save_checkpoint

    state = load_checkpoint(trained_run)
    assert state["format_version"] == 3 and state["families"] == ["dcgan"]
    del state["families"]
    state["format_version"] = 1
    save_checkpoint(state, tmp_path / "v1.pt")
    old = Scorer.from_checkpoint(tmp_path / "v1.pt")
    assert old.mode == "encoder" and available_modes(load_checkpoint(tmp_path / "v1.pt")) == [
        "discriminator", "search", "encoder", "encoder-search"]
    state["format_version"] = 4
    save_checkpoint(state, tmp_path / "v4.pt")
    with pytest.raises(CheckpointError, match="newer version"):
        load_checkpoint(tmp_path / "v4.pt")


def test_block_probe_reproduces_the_default_density(critic_run, labelled_dir, capsys):
    """Its 'block 4' row is the density the critic scores with, so its AUROC matches."""
    run_example("critic_block_probe", ["--model", str(critic_run), "--data",
                                       str(labelled_dir)])
    out = capsys.readouterr().out
    assert _row(out, "block 4") == pytest.approx(
        _auroc_of_default(critic_run, labelled_dir), abs=2e-3)
    assert "| blocks 2+3+4 |" in out


def test_bfloat16_scoring_stays_close_to_float32(critic_run):
    from anomaly.device import cpu_bf16_supported

    if not cpu_bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    images = torch.rand(4, 1, 32, 32) * 2 - 1
    full = Scorer.from_checkpoint(critic_run, device="cpu")
    fast = Scorer.from_checkpoint(critic_run, device="cpu", cpu_bf16=True)
    assert fast.settings() == {"mode": "critic", "cpu_bf16": True}
    # loose here: a toy critic on random films is far from its normals, where the
    # Mahalanobis distance magnifies bfloat16's rounding (README: within 1% on real films)
    np.testing.assert_allclose(fast.score_tensor(images).score, full.score_tensor(images).score,
                               rtol=0.25)
    assert not np.array_equal(fast.score_tensor(images).score, full.score_tensor(images).score)


def test_the_wide_placement_prior_reaches_further_than_the_lung_prior():
    from anomaly.families.critic.synthesis import wide_lung_prior
    from anomaly.lungs import lung_field_prior
    from tests.conftest import synthetic_xray

    rng = np.random.default_rng(0)
    films = torch.from_numpy(np.stack([synthetic_xray(rng, 64) for _ in range(8)]))[:, None]
    wide, lung = wide_lung_prior(films), lung_field_prior(films)
    assert wide.shape == lung.shape == (64, 64) and set(wide.unique().tolist()) <= {0.0, 1.0}
    assert wide.sum() > lung.sum()
    assert abs(wide.mean().item() - 0.35 * 0.42 * 0.45 * np.pi) < 0.03  # 35% of the ellipse
    with pytest.raises(ValueError, match="lung or wide"):
        TrainConfig(critic_opacity_prior="everywhere").critic_config()


def test_weights_that_do_not_fit_their_architecture_are_refused_in_one_line(critic_run,
                                                                            tmp_path):
    from anomaly.checkpoint import save_checkpoint

    state = load_checkpoint(critic_run)
    state["critic"]["architecture"] = {**state["critic"]["architecture"], "map_width": 8}
    save_checkpoint(state, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="critic weights do not fit") as err:
        Scorer.from_checkpoint(tmp_path / "odd.pt")
    assert "\n" not in str(err.value)
    state["critic"]["architecture"] = {**state["critic"]["architecture"], "map_width": 4,
                                       "width": 8}  # its density no longer fits either
    save_checkpoint(state, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="critic.density.mean has 32 values") as err:
        Scorer.from_checkpoint(tmp_path / "odd.pt")
    assert "\n" not in str(err.value)


def _auroc_of_default(critic_run, labelled_dir) -> float:
    from anomaly.data import scan_labelled_folder
    from anomaly.evaluate import auroc

    folder = scan_labelled_folder(labelled_dir)
    result = Scorer.from_checkpoint(critic_run, device="cpu").score_paths(folder.paths,
                                                                          progress=False)
    return auroc(folder.binary_labels, np.asarray(result.score))


def _subgroup_row(out: str, name: str) -> list[float]:
    """The numbers of a probe row's first cell, ``all (kind / kind ...)``."""
    line = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
    return [float(x) for x in line.split("|")[2].replace("(", " ").replace(")", " ")
            .replace("/", " ").split()]


def _row(out: str, name: str) -> float:
    return float(next(line for line in out.splitlines()
                      if line.startswith(f"| {name} |")).split("|")[2])


def test_view_probe_reproduces_the_default_density(critic_run, labelled_dir, capsys):
    """Its one-view row refits the density the run fitted, on the same training films."""
    run_example("critic_view_probe", ["--model", str(critic_run), "--data",
                                      str(labelled_dir), "--gamma"])
    out = capsys.readouterr().out
    assert _row(out, "one view") == pytest.approx(
        _auroc_of_default(critic_run, labelled_dir), abs=2e-3)
    for name in ("mirror", "mirror x gamma", "one view, density of films and mirrors",
                 "mirror, kNN (k=10)"):
        assert 0 <= _row(out, name) <= 1


def test_varied_density_probe_reproduces_the_default_and_fits_copies(critic_run, labelled_dir,
                                                                     capsys):
    """Its 0-copies row is the run's own density; varied copies fit another one."""
    run_example("critic_varied_density_probe", [
        "--model", str(critic_run), "--data", str(labelled_dir), "--copies", "1", "2",
        "--kind", "img_00", "--variation", "training", "--variation", "contrast",
        "--variation", "framing"])
    out = capsys.readouterr().out
    own = _subgroup_row(out, "0 copies")[0]
    assert own == pytest.approx(_auroc_of_default(critic_run, labelled_dir), abs=2e-3)
    assert "2 varied copies of each" in out
    rows = {v: [_subgroup_row(out, f"{n} copies, {v}")[0] for n in (1, 2)]
            for v in ("training", "contrast", "framing")}
    assert all(0 <= a <= 1 for pair in rows.values() for a in pair)
    from anomaly.families.critic.config import CriticConfig

    vary = example_module("critic_varied_density_probe").vary

    films = torch.rand(4, 1, 32, 32) * 2 - 1
    varied = {v: vary(films, v, CriticConfig(), torch.Generator().manual_seed(0))
              for v in ("training", "contrast", "framing")}
    for name, images in varied.items():
        assert images.shape == films.shape and images.abs().max() <= 1, name
    assert not torch.allclose(varied["contrast"], varied["framing"])
    with pytest.raises(SystemExit):
        run_example("critic_varied_density_probe", ["--model", str(critic_run), "--data",
                                                    str(labelled_dir), "--copies", "0"])


def test_site_density_probe_fits_on_one_half_and_checks_the_other(critic_run, labelled_dir,
                                                                   capsys):
    run_example("site_density_probe", ["--model", str(critic_run), "--data", str(labelled_dir)])
    out = capsys.readouterr().out
    assert out.count("5 site normals, 5 normals and 10 abnormal films checked") == 2
    header = next(line for line in out.splitlines() if line.startswith("| score |"))
    assert "A fits, B checked" in header and "B fits, A checked" in header
    for name in ("density fitted on the training normals (the run's)",
                 "density fitted on the training and site normals",
                 "density fitted on the site's normals alone", "lung brightness (no network)"):
        assert 0 <= _row(out, name) <= 1


def test_average_probe_rows_of_epochs_their_average_and_ensemble(critic_run, labelled_dir,
                                                                  tmp_path, capsys):
    """Two kept copies of the run, as epochs 1 and 2 with the same weights: epoch 2's row is
    the run's own density, the two densities summed score as either does, the weights
    averaged (their BatchNorm recomputed) give a row of their own; a kind matching every
    anomalous file scores as the whole folder. Too few epochs for an average is refused."""
    from anomaly.checkpoint import save_checkpoint

    state = load_checkpoint(critic_run)
    snapshots = tmp_path / "kept"
    snapshots.mkdir()
    for epoch in (1, 2):
        state["critic"]["epoch"] = epoch
        save_checkpoint(state, snapshots / f"copy_{epoch:03d}.pt")
    argv = ["--model", str(critic_run), "--data", str(labelled_dir), "--snapshots",
            str(snapshots), "--from", "1", "--kind", "img_00"]
    run_example("critic_average_probe", [*argv, "--average", "2"])
    out = capsys.readouterr().out

    own = _auroc_of_default(critic_run, labelled_dir)
    assert _subgroup_row(out, "epoch 2") == pytest.approx([own, own], abs=2e-3)
    assert _subgroup_row(out, "densities of epochs 1-2 summed") == pytest.approx(_subgroup_row(out, "epoch 2"), abs=1e-6)
    assert all(0 <= a <= 1 for a in _subgroup_row(out, "weights of epochs 1-2 averaged"))
    with pytest.raises(SystemExit, match="--average"):
        run_example("critic_average_probe", [*argv, "--average", "3"])
    with pytest.raises(SystemExit, match="--from"):
        run_example("critic_average_probe",
                    [*argv[:-4], "--from", "3", "--kind", "img_00", "--average", "1"])
    (snapshots / "copy_001.pt").unlink()  # epoch 1 gone: an average of 2 has a gap
    state["critic"]["epoch"] = 3
    save_checkpoint(state, snapshots / "copy_003.pt")
    with pytest.raises(SystemExit, match="every epoch of the last"):
        run_example("critic_average_probe", [*argv, "--average", "3"])


def test_batchnorm_probe_recomputes_the_chosen_layers_only(critic_run, labelled_dir, capsys):
    """Recomputing block 4's statistics leaves blocks 1-3's as they were and changes
    block 4's; every layer's without a choice. The probe's own row is the run's density;
    a block that does not exist is refused."""
    import copy

    from anomaly.families.critic.config import CriticConfig

    recompute_batchnorm = example_module("critic_batchnorm_probe").recompute_batchnorm
    critic_and_its_training_normals = example_module(
        "probe_common").critic_and_its_training_normals
    state = load_checkpoint(critic_run)
    critic, _, train = critic_and_its_training_normals(state)
    config = CriticConfig.from_saved(state["critic"]["config"])
    prior = torch.ones(32, 32)

    def means(network) -> list[list[torch.Tensor]]:
        return [[m.running_mean.clone() for m in block.modules()
                 if isinstance(m, torch.nn.BatchNorm2d)] for block in network.blocks]

    before = means(critic)
    last_only = copy.deepcopy(critic)
    recompute_batchnorm(last_only, train, "clean", config, prior, blocks=[4])
    after = means(last_only)
    for block in range(3):
        assert all(torch.equal(a, b) for a, b in zip(before[block], after[block]))
    assert not any(torch.allclose(a, b) for a, b in zip(before[3], after[3]))
    every = copy.deepcopy(critic)
    recompute_batchnorm(every, train, "varied", config, prior)
    assert not any(torch.allclose(a, b) for block in range(4)
                   for a, b in zip(before[block], means(every)[block]))
    head_before = [m.running_mean for m in critic.map_head.modules()
                   if isinstance(m, torch.nn.BatchNorm2d)]
    head_after = [m.running_mean for m in every.map_head.modules()
                  if isinstance(m, torch.nn.BatchNorm2d)]
    assert head_before and all(torch.equal(a, b) for a, b in zip(head_before, head_after))
    assert not last_only.training and not every.training

    argv = ["--model", str(critic_run), "--data", str(labelled_dir), "--kind", "img_00"]
    run_example("critic_batchnorm_probe", [*argv, "--blocks", "4"])
    out = capsys.readouterr().out

    own = _auroc_of_default(critic_run, labelled_dir)
    assert _subgroup_row(out, "the run's own statistics") == pytest.approx([own, own], abs=2e-3)
    for name in ("recomputed on batches clean", "recomputed on batches clean, block 4 only",
                 "the run's own and those recomputed on batches clean, densities summed"):
        assert all(0 <= a <= 1 for a in _subgroup_row(out, name))
    for wrong in ("5", "44", "x"):
        with pytest.raises(SystemExit, match="--blocks"):
            run_example("critic_batchnorm_probe", [*argv, "--blocks", wrong])
    with pytest.raises(EvaluationError, match="no anomalous file"):
        run_example("critic_batchnorm_probe", [*argv[:4], "--kind", "virus"])


def test_subspace_probe_splits_the_density_along_the_principal_axes(critic_run, labelled_dir,
                                                                      capsys):
    """The axes are sorted by variance and their shares sum to 1; the two parts of a
    split are the squared distances within each subspace (an identity covariance where
    the features are white); the probe's first row is the run's own density."""
    probe = example_module("critic_subspace_probe")
    rng = np.random.default_rng(0)
    train = rng.normal(size=(400, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    mean, axes, shares = probe.principal_axes(train)
    assert np.all(np.diff(shares) <= 0) and shares.sum() == pytest.approx(1)
    assert abs(axes[0, 0]) == pytest.approx(1, abs=0.02)  # the widest axis first
    films = np.zeros((2, 6))
    films[0, 0], films[1, 5] = 10.0, 1.0  # one far along the widest axis, one the narrowest
    leading, rest = probe.split_distances(train, films, 0.9)  # 0.9: the first two axes
    assert leading[0] == pytest.approx(4, rel=0.2) and rest[0] < 0.5
    assert rest[1] == pytest.approx(100, rel=0.3) and leading[1] < 0.5

    argv = ["--model", str(critic_run), "--data", str(labelled_dir), "--kind", "img_00"]
    run_example("critic_subspace_probe", argv)
    out = capsys.readouterr().out
    own = _auroc_of_default(critic_run, labelled_dir)
    assert _subgroup_row(out, "every axis (the run's density, refitted)") == pytest.approx(
        [own, own], abs=2e-3)
    for name in ("the axes holding 50% of the variance", "the other axes (beyond 99%)"):
        assert all(0 <= a <= 1 for a in _subgroup_row(out, name))


def test_cell_probe_prints_the_default_beside_the_cell_densities(critic_run, labelled_dir,
                                                                 capsys):
    run_example("critic_cell_probe", ["--model", str(critic_run), "--data", str(labelled_dir)])
    out = capsys.readouterr().out
    assert _row(out, "global density (the default)") == pytest.approx(
        _auroc_of_default(critic_run, labelled_dir), abs=2e-3)
    for name in ("cells: mean", "cells: max", "cells: mean of the 8 largest"):
        assert 0 <= _row(out, name) <= 1


def test_the_default_critic_scores_the_film_alone_and_exports_so(critic_run):
    """critic_score_views: 1 (the default) fits the density on the films alone and scores
    them so, in PyTorch and in the exported network alike."""
    from anomaly.families.critic.export import CriticEmbedding
    from anomaly.families.critic.normal_level import shown_map

    run = critic_run
    assert load_checkpoint(run)["critic"]["views"] == 1
    scorer = Scorer.from_checkpoint(run, device="cpu")
    family: CriticFamily = scorer.family
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    scores = scorer.score_tensor(images)
    with torch.no_grad():
        embedding = critic_embedding(family.critic, images, views=1)
        expected = mahalanobis(embedding, family.density)
        exported, logit, quiet, opacity = CriticEmbedding(family.critic, views=1)(images)
    np.testing.assert_allclose(scores.density, expected.numpy(), rtol=1e-4)
    np.testing.assert_allclose(scores.quiet, quiet.numpy(), rtol=1e-4)
    np.testing.assert_allclose(scores.logit, family.critic(images).numpy(), rtol=1e-4,
                               atol=1e-5)
    torch.testing.assert_close(exported, embedding)
    assert scores.heatmaps.shape == (3, 32, 32) and (scores.heatmaps >= 0).all()
    shown = shown_map(opacity, family.normal_level, family.map_field)  # in its field, above
    torch.testing.assert_close(shown, torch.as_tensor(scores.heatmaps), rtol=1e-4, atol=1e-5)
    mirrored = scorer.score_tensor(images.flip(-1))
    assert not np.allclose(mirrored.density, scores.density, rtol=1e-4)  # one view: not
    with pytest.raises(ValueError, match="critic: score_views"):
        TrainConfig(critic_score_views=3).critic_config()


def test_refitting_views_reproduces_the_run_and_records_one_view(critic_run, tmp_path):
    refit_views = example_module("refit_critic_views").refit_views
    original = load_checkpoint(critic_run)["critic"]
    same = load_checkpoint(refit_views(critic_run, 1, tmp_path / "one", log=lambda *a: None))
    torch.testing.assert_close(same["critic"]["density"]["mean"], original["density"]["mean"],
                               rtol=1e-5, atol=1e-6)
    two = load_checkpoint(refit_views(critic_run, 2, tmp_path / "two", log=lambda *a: None))
    assert two["critic"]["views"] == 2 and "critic" in two["score_stats"]
    assert not torch.allclose(two["critic"]["density"]["mean"], original["density"]["mean"])
    with pytest.raises(FileExistsError):
        refit_views(critic_run, 1, tmp_path / "one")
