"""The one-call inference API: the same numbers as anomaly score, maps at input size."""

from __future__ import annotations

import csv

import cv2
import numpy as np
from click.testing import CliRunner

from anomaly.detector import Detector
from anomaly.preprocess import map_to_original
from cli.anomaly_cli import main as anomaly_main
from tests.conftest import synthetic_xray


def test_predict_gives_the_numbers_of_anomaly_score(default_run, labelled_dir, tmp_path):
    paths = sorted(labelled_dir.rglob("*.png"))[:6]
    wide = tmp_path / "wide.png"  # a non-square film: the map comes back at its size
    cv2.imwrite(str(wide), cv2.resize(synthetic_xray(np.random.default_rng(4), 32), (48, 32)))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    detector = Detector.from_run(default_run)
    predictions = detector.predict([*paths, wide, broken])
    out = tmp_path / "scores.csv"
    done = CliRunner().invoke(anomaly_main, ["score", "--model", str(default_run), "--out",
                                             str(out), "--no-progress",
                                             *[a for p in [*paths, wide] for a in ("--image", str(p))]])
    assert done.exit_code == 0, done.output
    rows = {row["path"]: row for row in csv.DictReader(open(out))}
    for prediction in predictions[:-1]:
        row = rows[prediction.source]
        assert abs(prediction.score - float(row["score"])) <= 1e-5 * max(1, abs(prediction.score))
        assert prediction.label == row["label"]
        assert abs(prediction.p_value - float(row["p_value"])) < 1e-6
    assert predictions[-2].heatmap.shape == (32, 48)
    assert predictions[0].heatmap.shape == (32, 32) and predictions[0].reconstruction is None
    assert predictions[-1].label == "unreadable" and predictions[-1].error
    array = detector.predict([synthetic_xray(np.random.default_rng(5), 40) / 255.0])[0]
    assert array.source == "array 0" and array.heatmap.shape == (40, 40)


def test_a_reconstructing_mode_returns_its_reconstruction(default_run, labelled_dir):
    detector = Detector.from_run(default_run, mode="encoder")
    prediction = detector.predict(sorted(labelled_dir.rglob("*.png"))[:1])[0]
    assert prediction.reconstruction.shape == (32, 32)
    np.testing.assert_allclose(prediction.components["residual"], np.abs(
        prediction.reconstruction - detector.scorer.score_arrays(
            [cv2.imread(prediction.source, cv2.IMREAD_GRAYSCALE) / 255.0]).inputs[0, 0].numpy()
    ).mean(), rtol=0.05)


def test_maps_return_to_the_original_frame_for_every_resize_mode():
    square = np.arange(16, dtype=np.float32).reshape(4, 4)  # rises down and to the right
    squashed = map_to_original(square, (8, 12), "squash")
    assert squashed.shape == (8, 12)
    assert (np.diff(squashed, axis=1) >= 0).all() and (np.diff(squashed, axis=0) >= 0).all()
    assert squashed[0, 0] < squashed[-1, -1]  # corners stay corners: nothing flipped
    cropped = map_to_original(square, (8, 12), "crop")  # central 8 x 8 of the 8 x 12 film
    assert cropped.shape == (8, 12) and (cropped[:, :2] == 0).all() and cropped[:, 2:10].any()
    assert (cropped[:, 10:] == 0).all()
    np.testing.assert_allclose(cropped[:, 2:10], map_to_original(square, (8, 8), "squash"))
    padded = map_to_original(square, (8, 12), "pad")  # 12 x 12 padded, rows 2..9 kept
    assert padded.shape == (8, 12)
    np.testing.assert_allclose(padded, map_to_original(square, (12, 12), "squash")[2:10])


def test_a_film_whose_preprocessing_fails_is_unreadable_and_the_others_are_scored(
        default_run, labelled_dir, monkeypatch):
    import anomaly.detector

    films = sorted((labelled_dir / "NORMAL").glob("*.png"))[:3]
    real = anomaly.detector.preprocess

    def fails_on_the_second(image, config):
        if fails_on_the_second.calls == 1:
            fails_on_the_second.calls += 1
            raise cv2.error("a decoder surprise")
        fails_on_the_second.calls += 1
        return real(image, config)

    fails_on_the_second.calls = 0
    monkeypatch.setattr(anomaly.detector, "preprocess", fails_on_the_second)
    predictions = Detector.from_run(default_run, device="cpu").predict(films)
    assert [p.label for p in predictions][1] == "unreadable"
    assert "a decoder surprise" in predictions[1].error
    assert all(np.isfinite(p.score) for p in (predictions[0], predictions[2]))
