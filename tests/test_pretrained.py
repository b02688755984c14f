"""The bundled pretrained critic: it loads safely, scores the bundled example films to
the values recorded beside it, and is what score, serve and Detector use by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from anomaly import pretrained
from anomaly.checkpoint import load_checkpoint
from anomaly.detector import Detector
from anomaly.score import Scorer
from cli.anomaly_cli import main as anomaly_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "data" / "test"


def test_it_is_in_the_package_and_loads_with_weights_only():
    path = pretrained.checkpoint()
    assert path.parent == Path(pretrained.__file__).parent and path.stat().st_size < 20e6
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["families"] == ["critic"]
    assert not set(pretrained.TRAINING_ONLY) & set(state["critic"])  # stripped for scoring
    assert state["holdout_paths"] == []
    load_checkpoint("pretrained")  # the name resolves to it


def test_it_scores_the_example_films_as_recorded():
    expected = pretrained.expected_scores()
    scorer = Scorer.from_checkpoint(pretrained.checkpoint(), device="cpu")
    assert (scorer.mode, scorer.score) == (expected["mode"], expected["score"])
    paths = [EXAMPLES / name for name in expected["films"]]
    result = scorer.score_paths(paths, progress=False)
    assert len(result.score) == len(paths) == 8
    for i, name in enumerate(expected["films"]):
        recorded = expected["films"][name]
        np.testing.assert_allclose(result.score[i], recorded["score"], rtol=1e-5,
                                   err_msg=name)
        for component, value in recorded.items():
            if component != "score":
                np.testing.assert_allclose(result.values[component][i], value, rtol=1e-5,
                                           atol=1e-6, err_msg=f"{name} {component}")


def test_score_without_a_model_uses_it_and_says_so_first(tmp_path):
    film = sorted((EXAMPLES / "PNEUMONIA").glob("*.jpeg"))[0]
    done = CliRunner().invoke(anomaly_main, ["score", "--image", str(film), "--no-progress"])
    assert done.exit_code == 0, done.output
    assert done.output.splitlines()[0].startswith("model: the bundled pretrained critic")
    recorded = pretrained.expected_scores()["films"][f"PNEUMONIA/{film.name}"]["score"]
    [row] = [line for line in done.output.splitlines() if "\t" in line]
    assert float(row.split("\t")[1]) == pytest.approx(recorded, rel=1e-5)


def test_detector_pretrained_gives_the_same_scores_with_regions(tmp_path):
    import json

    from anomaly.score_files import regions_path

    expected = pretrained.expected_scores()["films"]
    names = sorted(expected)[:2]
    predictions = Detector.pretrained(device="cpu").predict([EXAMPLES / n for n in names])
    out = tmp_path / "scores.csv"  # what anomaly score --regions writes for the same films
    done = CliRunner().invoke(anomaly_main, [
        "score", *[a for n in names for a in ("--image", str(EXAMPLES / n))], "--out",
        str(out), "--regions", "--no-progress"])
    assert done.exit_code == 0, done.output
    written = [json.loads(line)["regions"] for line in open(regions_path(out))]
    for name, prediction, boxes in zip(names, predictions, written):
        assert prediction.score == pytest.approx(expected[name]["score"], rel=1e-5)
        assert prediction.heatmap.shape == (224, 224)
        assert [(r.x, r.y, r.w, r.h) for r in prediction.regions] == \
            [(b["x"], b["y"], b["w"], b["h"]) for b in boxes]


def test_calibrating_the_bundled_model_is_refused(tmp_path):
    before = pretrained.checkpoint().read_bytes()
    done = CliRunner().invoke(anomaly_main, ["calibrate", "--model", "pretrained", "--val",
                                             str(EXAMPLES)])
    assert done.exit_code == 1 and "not changed" in done.output
    assert pretrained.checkpoint().read_bytes() == before
