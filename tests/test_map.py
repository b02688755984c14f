"""The critic's opacity map: its head, its loss, regions above a threshold fitted on
normals, maps in the film's own pixels, the export and the localisation measures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from anomaly.checkpoint import load_checkpoint, save_checkpoint
from anomaly.detector import Detector
from anomaly.families.critic.config import CriticConfig
from anomaly.families.critic.network import CriticArchitecture, OpacityCritic, fold_batchnorm
from anomaly.families.critic.synthesis import decoy_prior, map_field, soft_lung_prior
from anomaly.families.critic.train_map import map_loss, opacity_batch, opacity_target
from anomaly.localisation import mass_inside, maximum_inside, pixel_auroc, pointing_game
from anomaly.preprocess import map_to_original
from anomaly.regions import check_threshold, film_regions, find_regions, fit_region_threshold
from anomaly.score import Scorer
from cli.anomaly_cli import main as anomaly_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "data" / "test").rglob("*.jpeg"))


def scored(scorer, paths):
    """The one batch of scores (with heat maps and film shapes) of a few files."""
    batches = []
    scorer.score_paths(paths, on_batch=lambda _, scores: batches.append(scores),
                       heatmaps=True, progress=False)
    assert len(batches) == 1
    return batches[0]


def test_the_map_head_gives_one_logit_per_input_pixel():
    critic = OpacityCritic(CriticArchitecture(image_size=32, width=4, map_width=4)).eval()
    logits, pixel_logits = critic(torch.randn(3, 1, 32, 32), with_map=True)
    assert logits.shape == (3,) and pixel_logits.shape == (3, 1, 32, 32)
    assert torch.isfinite(pixel_logits).all() and pixel_logits.std() > 0
    without = OpacityCritic(CriticArchitecture(image_size=32, width=4)).eval()
    assert without.map_head is None
    assert without(torch.randn(1, 1, 32, 32), with_map=True)[1] is None
    with pytest.raises(ValueError, match="no map head"):
        without.opacity_logits(without.block_features(torch.randn(1, 1, 32, 32)))


def test_the_film_logit_does_not_depend_on_asking_for_the_map():
    torch.manual_seed(0)
    critic = OpacityCritic(CriticArchitecture(image_size=32, width=4, map_width=4)).eval()
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(critic(x), critic(x, with_map=True)[0])


def test_folding_batchnorm_keeps_the_map():
    torch.manual_seed(0)
    critic = OpacityCritic(CriticArchitecture(image_size=32, width=4, map_width=4))
    critic.train()(torch.randn(16, 1, 32, 32) * 3, with_map=True)  # running stats move
    critic.eval()
    x = torch.randn(4, 1, 32, 32)
    expected = critic(x, with_map=True)
    folded = fold_batchnorm(critic)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    for got, want in zip(folded(x, with_map=True), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_map_target_is_the_thresholded_blend_of_films_given_an_opacity():
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, 2:4, 2:4] = 0.5
    masks[:, :, 5, 5] = 0.05  # a faint edge of a blob: below the level
    target = opacity_target(masks, torch.tensor([True, False]), level=0.1)
    assert target[0].sum() == 4 and target[0, 0, 5, 5] == 0
    assert target[1].sum() == 0  # a clean film: nothing to find, whatever its mask
    assert set(target.unique().tolist()) <= {0.0, 1.0}


def lung_films(count: int = 16, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 films (N, 1, S, S) with two dark lungs, and their 0/1 lung prior (S, S)."""
    films = torch.full((count, 1, size, size), 200, dtype=torch.uint8)
    films[:, :, 8:24, 5:14] = 60
    films[:, :, 8:24, 18:27] = 60
    return films, (films[0, 0] == 60).float()


def test_decoys_lie_outside_the_lungs_and_stay_out_of_the_target():
    films, lungs = lung_films()
    outside = decoy_prior(films, lungs)
    assert outside.shape == lungs.shape and outside.min() >= 0 and outside.max() <= 1
    assert outside[lungs > 0].max() == 0  # never on a lung
    assert outside[0, 0] > 0.5  # the film's corner is far from any lung
    config = CriticConfig(gamma_range=(1, 1), shift_fraction=0, scale_range=(1, 1),
                          rotation_degrees=0)
    prior = soft_lung_prior(lungs)
    torch.manual_seed(0)
    plain = opacity_batch(films, config, prior, "blobs")
    torch.manual_seed(0)
    decoyed = opacity_batch(films, config, prior, "blobs", outside, decoy_share=1.0)
    assert torch.equal(plain.targets, decoyed.targets)  # decoys are never opacities
    changed = (decoyed.inputs - plain.inputs).abs().sum(dim=(0, 1)) > 0
    assert changed.any() and not (changed & (lungs > 0)).any()  # only where no lung is
    torch.manual_seed(0)
    none = opacity_batch(films, config, prior, "blobs", outside, decoy_share=0.0)
    assert torch.equal(none.inputs, plain.inputs)


def test_the_change_target_marks_the_pixels_an_opacity_visibly_changed():
    films, lungs = lung_films()
    films[:, :, 8:16] = 250  # the lungs' upper half brighter than any opacity's level
    config = CriticConfig(gamma_range=(1, 1), shift_fraction=0, scale_range=(1, 1),
                          rotation_degrees=0)
    prior = soft_lung_prior(lungs)
    torch.manual_seed(1)
    batch = opacity_batch(films, config, prior, "blobs", target="change")
    moved = (batch.pasted - batch.films).abs() / 2 > 0.02  # on [0, 1] intensities
    expected = moved & batch.has_opacity.view(-1, 1, 1, 1)
    assert batch.has_opacity.any() and expected.any()
    assert torch.equal(batch.targets.bool(), expected)
    assert not batch.targets[:, :, 8:16].any()  # too bright to change: no target there
    torch.manual_seed(1)
    blend = opacity_batch(films, config, prior, "blobs")
    assert blend.targets[:, :, 8:16].any()  # the blend weight marks it all the same


def test_map_decoys_must_be_a_share_and_the_target_a_known_one():
    with pytest.raises(ValueError, match="map_decoys"):
        CriticConfig(map_decoys=1.5)
    with pytest.raises(ValueError, match="map_target"):
        CriticConfig(map_target="visible")


def test_the_map_loss_prefers_the_right_map_and_counts_clean_films():
    target = torch.zeros(2, 1, 8, 8)
    target[0, :, 2:4, 2:4] = 1
    right = torch.where(target > 0, 6.0, -6.0)
    wrong = -right
    assert map_loss(right, target) < 0.1 < map_loss(wrong, target)
    clean = torch.zeros(1, 1, 8, 8)
    assert map_loss(torch.full((1, 1, 8, 8), 4.0), clean) > map_loss(
        torch.full((1, 1, 8, 8), -4.0), clean)  # heat on a clean film costs
    logits = torch.zeros(2, 1, 8, 8, requires_grad=True)
    map_loss(logits, target).backward()
    assert logits.grad[0, 0, 2, 2] < 0 < logits.grad[1, 0, 0, 0]  # up on the lesion, down off


def test_regions_are_the_connected_parts_above_the_threshold_largest_peak_first():
    heat = np.zeros((64, 96), np.float32)
    heat[10:20, 30:45] = 0.6  # 15 wide, 10 tall
    heat[40:50, 5:10] = 0.9
    heat[45, 7] = 0.95
    heat[60, 90] = 0.99  # one pixel: below the smallest area kept
    regions = find_regions(heat, 0.5)
    assert [(r.x, r.y, r.w, r.h) for r in regions] == [(5, 40, 5, 10), (30, 10, 15, 10)]
    assert regions[0].peak == pytest.approx(0.95) and regions[1].area == 150
    assert regions[1].mean == pytest.approx(0.6)
    assert find_regions(heat, 0.999) == []
    assert len(find_regions(heat, 0.5, min_area=1)) == 3
    with pytest.raises(ValueError, match="NaN"):
        find_regions(np.full((8, 8), np.nan), 0.5)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        find_regions(np.zeros((2, 8, 8)), 0.5)


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), 0.0, -1.0, True, "0.5"])
def test_a_missing_or_meaningless_region_threshold_is_refused(bad):
    with pytest.raises(ValueError, match="region threshold"):
        check_threshold(bad)


def test_the_region_threshold_is_a_quantile_of_the_normals_maxima():
    maxima = np.linspace(0, 1, 101)
    assert fit_region_threshold(maxima, 0.95) == pytest.approx(0.95)
    assert np.mean(maxima >= fit_region_threshold(maxima)) <= 0.06  # ~5% get a region
    with pytest.raises(ValueError, match="at least 2"):
        fit_region_threshold([0.3])
    with pytest.raises(ValueError, match="finite"):
        fit_region_threshold([0.3, float("nan")])


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
def test_a_region_lands_where_it_is_on_the_film_for_every_resize_mode(resize):
    from anomaly.preprocess import PreprocessConfig, preprocess

    film = np.zeros((120, 200), np.float32)
    film[40:60, 90:110] = 1.0  # a bright square in the middle of a wide film
    model_input = preprocess(film, PreprocessConfig(image_size=64, clahe=False, resize=resize))
    heat = (model_input > 0.5).astype(np.float32)  # a map that is the square, in model pixels
    [region] = film_regions(heat, film.shape, resize, threshold=0.5)
    assert abs(region.x - 90) <= 4 and abs(region.y - 40) <= 4
    assert abs(region.w - 20) <= 6 and abs(region.h - 20) <= 6
    assert map_to_original(heat, film.shape, resize).shape == film.shape


def test_the_default_run_stores_a_region_threshold_and_its_heat_is_the_map(default_run):
    state = load_checkpoint(default_run)
    threshold = state["score_stats"]["critic"]["region_thresholds"]["map"]
    assert 0 < threshold < 1  # a probability
    scorer = Scorer.from_checkpoint(default_run, device="cpu")
    assert scorer.heat_name == "map" and scorer.region_threshold == threshold
    scores = scored(scorer, EXAMPLES)
    assert scores.heatmaps.shape == (8, 32, 32)
    assert 0 <= scores.heatmaps.min() and scores.heatmaps.max() <= 1
    assert "map" in scores.components


def test_gradcam_stays_an_option_with_a_threshold_of_its_own(default_run):
    scorer = Scorer.from_checkpoint(default_run, device="cpu", heat="gradcam")
    assert scorer.heat_name == "gradcam"
    maps = scored(scorer, EXAMPLES[:2]).heatmaps
    default = Scorer.from_checkpoint(default_run, device="cpu")
    assert not np.allclose(maps, scored(default, EXAMPLES[:2]).heatmaps)
    stored = load_checkpoint(default_run)["score_stats"]["critic"]["region_thresholds"]
    assert scorer.region_threshold == stored["gradcam"] > 0
    assert scorer.region_threshold != default.region_threshold


def test_the_dcgan_refuses_a_heat_choice(default_run):
    with pytest.raises(ValueError, match="heat"):
        Scorer.from_checkpoint(default_run, mode="encoder", device="cpu", heat="map")


def test_map_scores_read_the_top_of_the_map_inside_the_lungs(default_run):
    from anomaly.lungs import lung_field, top_mean

    scorer = Scorer.from_checkpoint(default_run, device="cpu", score="map")
    scores = scored(scorer, EXAMPLES)
    field = lung_field(scorer.lung_prior.cpu())
    raw = Scorer.from_checkpoint(default_run, device="cpu", score="map")
    raw.family.normal_level = None  # the score reads the raw map, not the map shown
    raw_maps = torch.as_tensor(scored(raw, EXAMPLES).heatmaps)
    assert scorer.family.normal_level is not None
    assert not np.allclose(raw_maps.numpy(), scores.heatmaps)
    expected = top_mean(raw_maps, field, 0.01).numpy()
    np.testing.assert_allclose(scores.score, expected, rtol=1e-5)
    both = Scorer.from_checkpoint(default_run, device="cpu", score="density+map")
    combined = both.score_paths(EXAMPLES, progress=False).score
    normal = both.normal_components
    standard = sum((np.asarray(scores.components[name]) - np.mean(normal[name]))
                   / np.std(normal[name]) for name in ("density", "map"))
    np.testing.assert_allclose(combined, standard, rtol=1e-4, atol=1e-6)


def test_score_regions_writes_a_count_column_and_boxes_in_film_pixels(default_run, tmp_path):
    state = load_checkpoint(default_run)  # a region threshold half the films' peaks pass
    peaks = [float(heat.max()) for heat in scored(
        Scorer.from_checkpoint(default_run, device="cpu"), EXAMPLES).heatmaps]
    state["score_stats"]["critic"]["region_thresholds"]["map"] = float(np.median(peaks))
    model = tmp_path / "model.pt"
    save_checkpoint(state, model)
    out = tmp_path / "scores.csv"
    done = CliRunner().invoke(anomaly_main, [
        "score", "--model", str(model), "--dir", str(ROOT / "examples/data/test"),
        "--out", str(out), "--regions", "--heatmaps", str(tmp_path / "maps"),
        "--no-progress"])
    assert done.exit_code == 0, done.output
    import csv
    rows = list(csv.DictReader(open(out)))
    films = [json.loads(line) for line in open(str(out) + ".regions.jsonl")]
    assert len(rows) == len(films) == 8
    assert sum(len(film["regions"]) for film in films) > 0  # boxes to check below
    for row, film in zip(rows, films):
        assert row["path"] == film["path"] and int(row["regions"]) == len(film["regions"])
        height, width = film["shape"]
        assert math.isfinite(film["threshold"])
        for box in film["regions"]:
            assert 0 <= box["x"] and box["x"] + box["w"] <= width
            assert 0 <= box["y"] and box["y"] + box["h"] <= height
            assert box["peak"] >= film["threshold"] and box["area"] > 0
    assert len(list((tmp_path / "maps").glob("*.png"))) == 8


def test_score_regions_is_refused_up_front_without_a_threshold(default_run, tmp_path):
    state = load_checkpoint(default_run)
    del state["score_stats"]["critic"]["region_thresholds"]  # as a run of an older version
    old = tmp_path / "old.pt"
    torch.save(state, old)
    default_run = old
    done = CliRunner().invoke(anomaly_main, [
        "score", "--model", str(default_run), "--dir", str(ROOT / "examples/data/test"),
        "--out", str(tmp_path / "s.csv"), "--regions", "--no-progress"])
    assert done.exit_code != 0 and "region threshold" in done.output
    assert "Traceback" not in done.output and not (tmp_path / "s.csv").exists()


def test_detector_returns_the_regions_score_regions_writes(default_run, tmp_path):
    from anomaly.score_files import score_files

    detector = Detector.from_run(default_run, device="cpu")
    scorer = detector.scorer  # a threshold half of the films' peaks pass: boxes to compare
    peaks = [float(heat.max()) for heat in scored(scorer, EXAMPLES).heatmaps]
    scorer.region_threshold = float(np.median(peaks))
    predictions = detector.predict(EXAMPLES)
    out = tmp_path / "s.csv"
    score_files(scorer, EXAMPLES, out, progress=False, regions=True)
    films = [json.loads(line) for line in open(str(out) + ".regions.jsonl")]
    assert sum(len(film["regions"]) for film in films) > 0  # something to compare
    for prediction, film in zip(predictions, films):
        assert prediction.heatmap.shape == tuple(film["shape"])
        mine = [r.as_dict() for r in prediction.regions]
        assert [{k: v for k, v in r.items() if k not in ("peak", "mean")} for r in mine] == \
            [{k: v for k, v in r.items() if k not in ("peak", "mean")} for r in film["regions"]]
        assert [r["peak"] for r in mine] == pytest.approx([r["peak"] for r in film["regions"]])


def test_the_export_carries_the_map_and_reproduces_maps_and_regions(exported, default_run):
    from anomaly.exported import ExportedScorer

    info = json.loads((exported / "export.json").read_text())
    assert info["heat"] == "map" and info["region_threshold"] > 0
    assert np.asarray(info["map_field"]).shape == (32, 32)
    onnx = ExportedScorer(exported)
    ours = Scorer.from_checkpoint(default_run, device="cpu")
    got, want = scored(onnx, EXAMPLES), scored(ours, EXAMPLES)
    np.testing.assert_allclose(got.heatmaps, want.heatmaps, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.components["map"], want.components["map"], rtol=1e-4)
    assert onnx.region_threshold == pytest.approx(ours.region_threshold)
    for index in range(len(EXAMPLES)):
        mine = [r.as_dict() for r in onnx.film_regions(got, index)]
        theirs = [r.as_dict() for r in ours.film_regions(want, index)]
        assert [(r["x"], r["y"], r["w"], r["h"]) for r in mine] == \
            [(r["x"], r["y"], r["w"], r["h"]) for r in theirs]
        assert [r["peak"] for r in mine] == pytest.approx([r["peak"] for r in theirs],
                                                          rel=1e-4)


def test_an_exported_map_score_needs_no_torch(exported, default_run, tmp_path):
    code = ("import json, sys\n"
            "from anomaly.exported import ExportedScorer\n"
            f"s = ExportedScorer({str(exported)!r})\n"
            "b = []\n"
            f"s.score_paths({[str(p) for p in EXAMPLES]!r}, heatmaps=True,"
            " on_batch=lambda p, r: b.append(r))\n"
            "n = [len(s.film_regions(b[0], i)) for i in range(len(b[0].score))]\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'torch'], 'torch'\n"
            "print(json.dumps(n))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(json.loads(done.stdout)) == 8


def test_pixel_auroc_and_the_pointing_game_know_a_perfect_map_from_a_wrong_one():
    masks = np.zeros((3, 16, 16))
    masks[:, 4:8, 4:8] = 1
    perfect = masks + 0.01 * np.random.default_rng(0).random(masks.shape)
    inverted = 1 - perfect
    assert pixel_auroc(perfect, masks) == pytest.approx(1.0)
    assert pixel_auroc(inverted, masks) == pytest.approx(0.0)
    assert pointing_game(perfect, masks) == 1.0 and pointing_game(inverted, masks) == 0.0
    field = np.zeros((16, 16))
    field[:, :8] = 1
    assert pixel_auroc(perfect, masks, field) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="lesion and healthy"):
        pixel_auroc(perfect, np.zeros_like(masks))
    with pytest.raises(ValueError, match="NaN"):
        pointing_game(np.full_like(masks, np.nan), masks)


def test_heat_inside_a_field_is_measured_per_film():
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = 3
    maps[0, 3, 3] = 1
    maps[1, 3, 3] = 2
    field = np.zeros((4, 4))
    field[:2, :2] = 1
    np.testing.assert_allclose(mass_inside(maps, field), [0.75, 0.0])
    assert maximum_inside(maps, field).tolist() == [True, False]
    assert mass_inside(np.zeros((1, 4, 4)), field).tolist() == [0.0]


@pytest.mark.parametrize("recipe", ["blobs", "consolidation"])
def test_the_localisation_benchmark_prints_both_maps_and_the_baseline(default_run,
                                                                      labelled_dir, tmp_path,
                                                                      recipe):
    out = tmp_path / "loc.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "localisation_benchmark.py"),
         "--model", str(default_run), "--data", str(labelled_dir), "--json", str(out),
         "--recipe", recipe],
        capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["synthetic"]["recipe"] == recipe
    synthetic = report["synthetic"]["map"]
    assert 0 <= synthetic["pixel_auroc"] <= 1 and 0 <= synthetic["pointing_game"] <= 1
    assert "lung-brightness" in done.stdout
    assert report["synthetic"]["films"] == 10  # every normal film of the folder lesioned
    assert 0 < report["synthetic"]["lesion_pixel_share"] < 0.5
    assert {"density", "map"} <= set(report["synthetic"]["image_auroc"])
    real = report["real"]
    assert real["pneumonia"]["films"] == real["normal"]["films"] == 10
    for name in ("pneumonia", "normal"):
        assert 0 <= real[name]["mass_in_lung_field"] <= 1
        assert 0 <= real[name]["maximum_in_lung_field"] <= 1
    from anomaly.lungs import lung_field

    prior = Scorer.from_checkpoint(default_run, device="cpu").lung_prior.cpu()
    assert real["flat_map_mass_in_lung_field"] == pytest.approx(float(lung_field(prior).mean()))


def test_a_blob_drawn_in_a_map_becomes_one_region_with_its_box():
    heat = np.zeros((32, 32), np.float32)
    cv2.circle(heat, (20, 10), 4, 1.0, -1)
    [region] = find_regions(heat, 0.5)
    assert (region.x, region.y, region.w, region.h) == (16, 6, 9, 9)


def test_a_detached_map_head_leaves_the_critic_as_without_it(tmp_path, normal_dir):
    from anomaly.train import TrainConfig, train_run
    from tests.conftest import TINY_DEFAULT

    base = {**TINY_DEFAULT, "epochs": 0, "encoder_epochs": 0, "holdout_fraction": 0.0}
    runs = {}
    for name, extra in (("none", {"critic_map_width": 0}),
                        ("detached", {"critic_map_width": 4, "critic_map_detach": True}),
                        ("joint", {"critic_map_width": 4, "critic_map_detach": False})):
        train_run(TrainConfig(**base, **extra), normal_dir, tmp_path / name, progress=False,
                  log=lambda *a: None)
        runs[name] = load_checkpoint(tmp_path / name)["critic"]
    plain, detached, joint = runs["none"], runs["detached"], runs["joint"]
    for key, value in plain["network"].items():  # the same weights, bit for bit
        assert torch.equal(value, detached["network"][key]), key
    assert torch.equal(plain["density"]["precision"], detached["density"]["precision"])
    assert any(not torch.equal(v, joint["network"][k]) for k, v in plain["network"].items())
    assert any(k.startswith("map_head.") for k in detached["network"])


@pytest.mark.parametrize("heat", ["map", "gradcam"])
def test_a_batch_larger_than_a_network_piece_scores_as_film_by_film(default_run, heat):
    from anomaly.families.critic.scorer import CPU_PIECE

    scorer = Scorer.from_checkpoint(default_run, device="cpu", heat=heat)
    torch.manual_seed(0)
    images = torch.rand(CPU_PIECE + 3, 1, 32, 32) * 2 - 1
    whole = scorer.family.score_batch(images)
    assert whole.heatmaps.shape == (len(images), 32, 32)
    for index in (0, CPU_PIECE - 1, CPU_PIECE, len(images) - 1):
        alone = scorer.family.score_batch(images[index: index + 1])
        for name, values in whole.components.items():
            np.testing.assert_allclose(values[index], alone.components[name][0], rtol=1e-5,
                                       atol=1e-6, err_msg=name)
        peak = float(alone.heatmaps[0].abs().max())  # Grad-CAM's heat runs to hundreds
        np.testing.assert_allclose(whole.heatmaps[index], alone.heatmaps[0], rtol=1e-4,
                                   atol=1e-4 * peak + 1e-6)


def test_the_results_tables_average_the_runs_reports(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "examples"))
    import results_tables

    runs = [tmp_path / "s0", tmp_path / "s1"]
    for run, auroc in zip(runs, (0.8, 0.9)):
        reports = run / ("density" if run.name == "s0" else "eval_density")  # both read
        reports.mkdir(parents=True)
        (reports / "report.json").write_text(json.dumps({
            "auroc": auroc, "auroc_ci95": [auroc - 0.05, auroc + 0.05], "val_auroc": 0.95,
            "recall": 0.7, "specificity": 0.8, "f1": 0.75}))
        lesions = {"loc_map.json": auroc, "loc_map_consolidation.json": auroc - 0.2,
                   "loc_gradcam_blobs.json": 0.6, "loc_gradcam_consolidation.json": 0.4}
        for name, value in lesions.items():
            synthetic = {"pixel_auroc": value, "pixel_auroc_with_clean": value,
                         "pointing_game": 0.5}
            (run / name).write_text(json.dumps({
                "heat": "map",
                "synthetic": {"map": synthetic, "lung-brightness": synthetic,
                              "image_auroc": {"density": 0.9}},
                "real": {"pneumonia": {"mass_in_lung_field": 0.6,
                                       "maximum_in_lung_field": 1.0, "with_a_region": 0.5},
                         "normal": {"mass_in_lung_field": 0.5, "maximum_in_lung_field": 0.9,
                                    "with_a_region": 0.1},
                         "flat_map_mass_in_lung_field": 0.4}}))
    results_tables.main([str(r) for r in runs])
    out = capsys.readouterr().out
    assert "| `density` (the default) | 0.800 (0.750-0.850) | 0.850 ± 0.071 (0.800, 0.900) |" \
        in out
    assert "| **the opacity map** (map head, the default heat) | 0.850 (0.800, 0.900) |" in out
    assert "0.500 / 0.100" in out and "logit" not in out  # only the scores every run has
    # the recipes every run was benchmarked on with every heat: blobs and consolidation
    assert "| `blobs` | `consolidation` |\n" in out
    assert "| 0.850 (0.800, 0.900) / 0.500 (0.500, 0.500) | 0.650 (0.600, 0.700) / " in out
    assert "| the density's Grad-CAM (`--heat gradcam`) | 0.600 (0.600, 0.600) / " in out


def test_the_map_shown_keeps_the_order_of_the_raw_map_and_mutes_the_normal_level():
    from anomaly.families.critic.normal_level import BELOW_LEVEL_SLOPE, shown_map

    raw = np.array([0.0, 0.001, 0.004, 0.0041, 0.2, 1.0])
    shown = shown_map(raw, 0.004)
    assert (np.diff(shown) > 0).all()  # strictly increasing: regions and AUROC unchanged
    np.testing.assert_allclose(shown[:3], raw[:3] * BELOW_LEVEL_SLOPE)
    np.testing.assert_allclose(shown[4], 0.004 * BELOW_LEVEL_SLOPE + 0.196)
    assert shown_map(raw, None) is raw  # runs without a level: the raw map
    tensor = shown_map(torch.as_tensor(raw), 0.004)
    np.testing.assert_allclose(tensor.numpy(), shown)


def test_the_map_field_covers_the_lungs_and_leaves_out_the_films_corners():
    films, lungs = lung_films()
    field = map_field(films, lungs)
    assert field.shape == lungs.shape and field.min() >= 0 and field.max() <= 1
    assert field[lungs > 0].min() > 0.99  # every lung pixel kept whole
    assert field[0, 0] < 0.01 and field[31, 31] < 0.01  # the corners far from any lung
    assert (field[decoy_prior(films, lungs) > 0.5] < 0.5).all()  # decoys: where it is not
    big = torch.full((2, 1, 128, 128), 200, dtype=torch.uint8)
    big[:, :, 20:100, 16:60] = big[:, :, 20:100, 68:112] = 60
    wide = map_field(big, (big[0, 0] == 60).float())  # a blur's rounding stays below 1
    assert wide.min() >= 0 and wide.max() == 1


def test_the_map_shown_is_muted_outside_its_field_and_keeps_its_order_inside():
    from anomaly.families.critic.normal_level import shown_map

    raw = np.array([[0.3, 0.001, 0.5, 0.9]])
    field = np.array([1.0, 1.0, 1.0, 0.0])
    shown = shown_map(raw, 0.004, field)
    assert shown[0, 3] == 0  # outside the field: nothing, however sure the head is
    np.testing.assert_allclose(shown[0, :3], shown_map(raw, 0.004)[0, :3])
    tensor = shown_map(torch.as_tensor(raw), 0.004, torch.as_tensor(field))
    np.testing.assert_allclose(tensor.numpy(), shown)


@pytest.mark.parametrize("bad", [np.zeros((4, 4)), np.full((4, 4), np.nan),
                                 np.full((4, 4), 1.5), -np.ones((4, 4)), np.ones((4, 3))])
def test_a_meaningless_map_field_is_refused(bad):
    from anomaly.families.critic.normal_level import checked_map_field
    from anomaly.validate import BadValue

    assert checked_map_field(None, "map_field", 4) is None
    assert checked_map_field(torch.ones(4, 4), "map_field", 4).dtype == np.float32
    with pytest.raises(BadValue, match="map_field"):
        checked_map_field(bad, "map_field", 4)


def test_the_default_runs_map_is_shown_in_its_field_and_its_map_score_is_not(default_run):
    state = load_checkpoint(default_run)
    field = state["critic"]["map_field"]
    assert field.shape == (32, 32) and 0 < field.mean() < 1
    gated = Scorer.from_checkpoint(default_run, device="cpu")
    whole = Scorer.from_checkpoint(default_run, device="cpu")
    whole.family.map_field = None
    assert gated.family.report_settings("density")["map_field"] is True
    got, want = scored(gated, EXAMPLES), scored(whole, EXAMPLES)
    np.testing.assert_allclose(got.components["map"], want.components["map"])
    outside = torch.as_tensor(field) < 1e-6
    assert outside.any() and (got.heatmaps[:, outside] == 0).all()
    assert (want.heatmaps[:, outside] > 0).all()


def test_a_run_resumed_with_another_map_field_refits_its_level_and_keeps_its_weights(
        tmp_path, normal_dir):
    from anomaly.train import TrainConfig, train_run

    run = tmp_path / "run"
    train_run(TrainConfig(**_critic_only()), normal_dir, run, progress=False,
              log=lambda *a: None)
    before = load_checkpoint(run)
    train_run(TrainConfig(**_critic_only(critic_map_field="film")), normal_dir, run,
              resume=True, progress=False, log=lambda *a: None)
    film = load_checkpoint(run)
    assert "map_field" not in film["critic"] and "map_field" in before["critic"]
    assert film["critic"]["map_normal_level"] != before["critic"]["map_normal_level"]
    for key, value in before["critic"]["network"].items():
        assert torch.equal(value, film["critic"]["network"][key]), key
    train_run(TrainConfig(**_critic_only()), normal_dir, run, resume=True, progress=False,
              log=lambda *a: None)
    again = load_checkpoint(run)["critic"]
    torch.testing.assert_close(again["map_field"], before["critic"]["map_field"])
    assert again["map_normal_level"] == pytest.approx(before["critic"]["map_normal_level"])
    with pytest.raises(ValueError, match="map_field"):
        CriticConfig(map_field="neck")


def test_the_normal_level_is_a_quantile_of_normal_pixels_and_bad_ones_are_refused():
    from anomaly.families.critic.normal_level import checked_normal_level, fit_normal_level
    from anomaly.validate import BadValue

    maps = torch.linspace(0, 1, 101).repeat(2, 1).view(2, 101, 1)
    assert fit_normal_level(maps, 0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least one normal film"):
        fit_normal_level(np.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        fit_normal_level(np.full((1, 4, 4), np.nan))
    assert checked_normal_level(None, "level") is None
    for bad in (0, -0.1, 1.0, float("nan"), "x", True):
        with pytest.raises(BadValue, match="level"):
            checked_normal_level(bad, "level")


def test_the_default_run_fits_its_normal_level_on_the_held_out_normals(default_run):
    from anomaly.families.critic.normal_level import shown_map

    level = load_checkpoint(default_run)["critic"]["map_normal_level"]
    assert 0 < level < 1
    scorer = Scorer.from_checkpoint(default_run, device="cpu")
    raw = Scorer.from_checkpoint(default_run, device="cpu")
    raw.family.normal_level = None
    raw_maps = scored(raw, EXAMPLES).heatmaps
    np.testing.assert_allclose(scored(scorer, EXAMPLES).heatmaps,
                               shown_map(raw_maps, level), rtol=1e-5, atol=1e-7)
    assert scorer.family.report_settings("density")["map_normal_level"] == level


def test_refitting_the_normal_level_keeps_the_regions_and_fits_it_again(default_run,
                                                                       tmp_path):
    import shutil

    from anomaly.families.critic.train_map import refit_normal_level

    run = tmp_path / "run"
    shutil.copytree(default_run, run)
    state = load_checkpoint(run)
    level = state["critic"].pop("map_normal_level")
    torch.save(state, run / "checkpoints" / "last.pt")
    assert Scorer.from_checkpoint(run, device="cpu").family.normal_level is None
    refit_normal_level(run, log=lambda *a: None)
    assert load_checkpoint(run)["critic"]["map_normal_level"] == pytest.approx(level)
    before = Scorer.from_checkpoint(default_run, device="cpu")
    after = Scorer.from_checkpoint(run, device="cpu")
    maps = scored(after, EXAMPLES).heatmaps
    assert [after.regions(m) for m in maps] == [before.regions(m) for m in maps]


@pytest.mark.parametrize("recipe", ["consolidation", "patches"])
def test_evaluation_lesions_change_the_lungs_where_their_masks_say(recipe):
    from anomaly.eval_lesions import VISIBLE_CHANGE, paste_lesions

    size = 32
    prior = torch.zeros(size, size)
    prior[6:26, 4:14] = prior[6:26, 18:28] = 1
    films = torch.linspace(-0.8, 0.2, size).view(1, 1, 1, size).repeat(6, 1, size, 1)
    films = films + 0.3 * torch.rand(6, 1, size, size, generator=torch.Generator().manual_seed(1))
    lesioned, masks = paste_lesions(recipe, films, prior, seed=3)
    assert lesioned.shape == films.shape and masks.shape == (6, size, size)
    assert masks.sum() > 0 and masks[:, prior < 0.5].sum() == 0  # inside the lungs only
    change = ((lesioned - films).abs() / 2)[:, 0]
    assert (change[masks > 0] > VISIBLE_CHANGE).all()
    assert (change[masks == 0] <= VISIBLE_CHANGE + 1e-6).all()
    again, _ = paste_lesions(recipe, films, prior, seed=3)
    torch.testing.assert_close(again, lesioned)  # the seed fixes them
    with pytest.raises(ValueError, match="recipe"):
        paste_lesions("blobs", films, prior, seed=3)


def _critic_only(**extra):
    from tests.conftest import TINY_DEFAULT

    return {**TINY_DEFAULT, "epochs": 0, "encoder_epochs": 0, **extra}


def test_the_map_heads_own_stage_changes_the_head_alone(tmp_path, normal_dir):
    from anomaly.train import TrainConfig, train_run

    runs = {}
    for name, map_epochs in (("without", 0), ("with", 2)):
        train_run(TrainConfig(**_critic_only(critic_map_epochs=map_epochs)), normal_dir,
                  tmp_path / name, progress=False, log=lambda *a: None)
        runs[name] = load_checkpoint(tmp_path / name)["critic"]
    without, with_stage = runs["without"], runs["with"]
    assert with_stage["map_epoch"] == 2 and "map_epoch" not in without
    changed = [k for k, v in without["network"].items()
               if not torch.equal(v, with_stage["network"][k])]
    assert changed and all(k.startswith("map_head.") for k in changed)
    assert torch.equal(without["density"]["precision"], with_stage["density"]["precision"])
    assert with_stage["map_normal_level"] != without["map_normal_level"]


def test_the_map_stage_resumes_after_a_crash_exactly(tmp_path, normal_dir, monkeypatch):
    import anomaly.checkpoint
    from anomaly.train import TrainConfig, train_run

    config = TrainConfig(**_critic_only())
    train_run(config, normal_dir, tmp_path / "whole", progress=False, log=lambda *a: None)
    save = anomaly.checkpoint.save_checkpoint

    def save_then_crash(state, path):
        save(state, path)
        if state["critic"].get("map_epoch") == 1:
            raise KeyboardInterrupt  # killed right after the stage's first checkpoint

    monkeypatch.setattr(anomaly.checkpoint, "save_checkpoint", save_then_crash)
    run = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train_run(config, normal_dir, run, progress=False, log=lambda *a: None)
    monkeypatch.setattr(anomaly.checkpoint, "save_checkpoint", save)
    assert load_checkpoint(run)["critic"]["map_epoch"] == 1
    train_run(config, normal_dir, run, resume=True, progress=False, log=lambda *a: None)
    resumed = load_checkpoint(run)["critic"]
    whole = load_checkpoint(tmp_path / "whole")["critic"]
    assert resumed["map_epoch"] == whole["map_epoch"] == 2
    for key, value in whole["network"].items():
        torch.testing.assert_close(resumed["network"][key], value)
    assert resumed["map_normal_level"] == pytest.approx(whole["map_normal_level"])


def test_a_finished_run_resumed_with_more_map_epochs_trains_its_head_on(tmp_path,
                                                                         normal_dir):
    from anomaly.train import TrainConfig, train_run

    run = tmp_path / "run"
    train_run(TrainConfig(**_critic_only()), normal_dir, run, progress=False,
              log=lambda *a: None)
    before = load_checkpoint(run)["critic"]
    train_run(TrainConfig(**_critic_only(critic_map_epochs=3)), normal_dir, run,
              resume=True, progress=False, log=lambda *a: None)
    after = load_checkpoint(run)["critic"]
    assert after["map_epoch"] == 3 and after["config"]["map_epochs"] == 3
    for key, value in before["network"].items():
        assert torch.equal(value, after["network"][key]) != key.startswith("map_head."), key
    lines = []  # more epochs at another peak rate: a new cycle over those, at that rate
    train_run(TrainConfig(**_critic_only(critic_map_epochs=4, critic_map_lr=0.003)),
              normal_dir, run, resume=True, progress=False, log=lines.append)
    last = load_checkpoint(run)["critic"]
    assert last["map_epoch"] == 4 and last["config"]["map_lr"] == 0.003
    assert any("new schedule to epoch 4 (map_lr 0.003)" in line for line in lines)
    assert last["map_optimizer"]["param_groups"][0]["max_lr"] == 0.003


def test_a_two_level_map_head_reads_blocks_3_and_4_and_still_draws_every_pixel():
    full = OpacityCritic(CriticArchitecture(image_size=32, width=4, map_width=4)).eval()
    light = OpacityCritic(CriticArchitecture(image_size=32, width=4, map_width=4,
                                             map_levels=2)).eval()
    x = torch.randn(2, 1, 32, 32)
    _, logits = light(x, with_map=True)
    assert logits.shape == (2, 1, 32, 32) and torch.isfinite(logits).all()
    assert light.map_head.up_shallow is None
    count = sum(p.numel() for p in light.map_head.parameters())
    assert count < sum(p.numel() for p in full.map_head.parameters())
    folded = fold_batchnorm(light)
    torch.testing.assert_close(folded(x, with_map=True)[1], logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="map_levels"):
        CriticArchitecture(image_size=32, map_width=4, map_levels=5)


def test_a_four_level_map_head_reads_the_first_block_at_the_films_own_side():
    full = OpacityCritic(CriticArchitecture(image_size=32, width=4, map_width=4)).eval()
    fine = OpacityCritic(CriticArchitecture(image_size=32, width=4, map_width=4,
                                            map_levels=4)).eval()
    x = torch.randn(2, 1, 32, 32)
    features = fine.block_features(x)
    assert features[0].shape[-1] == 32  # the first block keeps the film's side
    logits = fine.map_head(features, 32)
    assert logits.shape == (2, 1, 32, 32) and torch.isfinite(logits).all()
    assert fine.map_head.up_full is not None and full.map_head.up_full is None
    assert fine.map_head.logit.in_channels == 2  # map_width // 2 at the finest level
    # the first block's features reach the map: change them and the logits change
    moved = [features[0] + 1, *features[1:]]
    assert not torch.allclose(fine.map_head(moved, 32), logits)
    assert torch.equal(full.map_head(moved, 32), full.map_head(features, 32))  # 3 levels
    folded = fold_batchnorm(fine)
    torch.testing.assert_close(folded(x, with_map=True)[1], logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="at least map_levels = 4 blocks"):
        CriticArchitecture(image_size=32, blocks=3, map_width=4, map_levels=4)


def test_a_head_with_blocks_of_its_own_starts_as_the_critics_and_learns_apart():
    arch = CriticArchitecture(image_size=32, width=4, map_width=4, map_own_blocks=2)
    critic = OpacityCritic(arch).eval()
    x = torch.randn(2, 1, 32, 32)
    before = critic(x, with_map=True)[1]
    critic.copy_blocks_into_map_head()
    shared = OpacityCritic(CriticArchitecture(image_size=32, width=4, map_width=4)).eval()
    shared.load_state_dict({name: value for name, value in critic.state_dict().items()
                            if ".own_blocks." not in name})
    copied = critic(x, with_map=True)[1]
    assert not torch.allclose(before, copied)  # fresh blocks gave another map
    torch.testing.assert_close(copied, shared(x, with_map=True)[1])  # copies: the same map
    critic.train()
    _, logits = critic(x, with_map=True, detach_map=True)
    logits.sum().backward()
    assert all(p.grad is None for p in critic.blocks.parameters())  # the critic's untouched
    assert all(p.grad is not None for p in critic.map_head.own_blocks.parameters())
    folded = fold_batchnorm(critic.eval())
    torch.testing.assert_close(folded(x, with_map=True)[1], critic(x, with_map=True)[1],
                               atol=1e-4, rtol=1e-4)
    for bad in ({"map_own_blocks": 4}, {"map_own_blocks": -1},
                {"map_own_blocks": 1, "map_width": 0}):
        with pytest.raises(ValueError, match="map_own_blocks"):
            CriticArchitecture(**{"image_size": 32, "width": 4, "map_width": 4, **bad})
    with pytest.raises(ValueError, match="map_own_blocks must be in"):
        CriticConfig(map_own_blocks=4)
    assert CriticConfig(map_width=0).map_own_blocks == 2  # no head: the setting is moot


def test_the_heads_stage_forks_its_own_blocks_and_leaves_the_critic_as_it_was(tmp_path,
                                                                             normal_dir):
    from anomaly.train import TrainConfig, train_run

    run = tmp_path / "run"  # the critic's stage alone, then the head's with two own blocks
    train_run(TrainConfig(**_critic_only(critic_map_epochs=0)), normal_dir, run,
              progress=False, log=lambda *a: None)
    before = load_checkpoint(run)["critic"]
    lines = []
    train_run(TrainConfig(**_critic_only(critic_map_epochs=2, critic_map_own_blocks=2)),
              normal_dir, run, resume=True, progress=False, log=lines.append)
    after = load_checkpoint(run)["critic"]
    assert after["architecture"]["map_own_blocks"] == 2 and after["map_epoch"] == 2
    assert any("last 2 block(s) through its own copies" in line for line in lines)
    for key, value in before["network"].items():  # the critic's own weights unchanged
        assert torch.equal(value, after["network"][key]) != key.startswith("map_head."), key
    own = [key for key in after["network"] if ".own_blocks." in key]
    assert own and all(key not in before["network"] for key in own)
    assert torch.equal(before["density"]["precision"], after["density"]["precision"])
    from anomaly.score import Scorer

    scores = Scorer.from_checkpoint(run, device="cpu").score_tensor(torch.zeros(2, 1, 32, 32))
    assert scores.heatmaps.shape[-2:] == (32, 32) and torch.isfinite(scores.heatmaps).all()
    with pytest.raises(ValueError, match="map_own_blocks is 2 in this run.*epoch 2") as err:
        train_run(TrainConfig(**_critic_only(critic_map_epochs=2, critic_map_own_blocks=1)),
                  normal_dir, run, resume=True, progress=False, log=lambda *a: None)
    assert str(err.value).startswith(str(run)) and "last.pt: " in str(err.value)


def test_new_map_head_copies_a_run_with_a_fresh_head_of_another_architecture(default_run,
                                                                             tmp_path):
    out = tmp_path / "four"
    done = subprocess.run([sys.executable, "examples/new_map_head.py", str(default_run),
                           str(out), "--map-levels", "4"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fresh layers: map_head.logit, map_head.up_full" in done.stdout
    before, after = load_checkpoint(default_run), load_checkpoint(out)
    part = after["critic"]
    assert part["architecture"]["map_levels"] == 4 and "map_epoch" not in part
    assert after["train_config"]["critic"]["map_levels"] == 4
    for key, value in before["critic"]["network"].items():  # all but the head's last layer
        if not key.startswith("map_head.logit"):
            assert torch.equal(part["network"][key], value), key
    again = subprocess.run([sys.executable, "examples/new_map_head.py", str(default_run),
                            str(out), "--map-levels", "4"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode != 0 and "already exists" in again.stderr


def test_a_run_saved_before_own_blocks_existed_resumes_as_it_was(tmp_path, normal_dir):
    from anomaly.checkpoint import resolve_checkpoint_path, save_checkpoint
    from anomaly.config import ConfigError
    from anomaly.train import TrainConfig, resume_config, train_run

    run = tmp_path / "run"
    train_run(TrainConfig(**_critic_only(critic_map_own_blocks=0)), normal_dir, run,
              progress=False, log=lambda *a: None)
    state = load_checkpoint(run)  # as saved by a version without the setting
    del state["train_config"]["critic"]["map_own_blocks"]
    del state["critic"]["architecture"]["map_own_blocks"]
    del state["train_config"]["critic"]["sharpness"]  # nor this one: it trained without
    save_checkpoint(state, resolve_checkpoint_path(run))
    config = resume_config(run)
    assert config.section("critic").map_own_blocks == 0  # not today's default
    assert config.section("critic").sharpness == 0.0
    with pytest.raises(ConfigError, match=r"critic.sharpness 0.0 there, 0.5 now"):
        train_run(config.replace(critic_sharpness=0.5), normal_dir, run, resume=True,
                  progress=False, log=lambda *a: None)
    train_run(config, normal_dir, run, resume=True, progress=False, log=lambda *a: None)
    assert load_checkpoint(run)["critic"].get("architecture", {}).get("map_own_blocks", 0) == 0
