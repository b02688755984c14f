"""Smoke test on real chest X-rays from ../shared/data (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anomaly.checkpoint import load_checkpoint
from anomaly.data import find_images
from anomaly.evaluate_model import evaluate_model
from anomaly.score import Scorer
from anomaly.train import TrainConfig, train_run
from tests.conftest import REAL_DATA
from tests.report_page import check_page_against_report

pytestmark = pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data not present")


def test_train_score_evaluate_on_real_xrays(tmp_path):
    config = TrainConfig(image_size=32, epochs=1, batch_size=16, max_images=48,
                         generator_width=16, discriminator_width=16, encoder_epochs=1,
                         critic_epochs=2, critic_width=8, critic_batch_size=16)
    train_run(config, REAL_DATA / "train" / "NORMAL", tmp_path / "run", progress=False,
              log=lambda *a: None)
    default = Scorer.from_checkpoint(tmp_path / "run")
    expected = "density"
    assert (default.mode, default.score) == ("critic", expected)
    assert load_checkpoint(tmp_path / "run")["critic"]["embedding"] == "sqrt"
    scorer = Scorer.from_checkpoint(tmp_path / "run", mode="search", iterations=5,
                                    score="lung-opacity")
    images = find_images(REAL_DATA / "test_dev" / "PNEUMONIA")[:2]
    result = scorer.score_paths(images, progress=False)
    assert len(result.paths) == 2 and np.isfinite(result.score).all()
    np.testing.assert_allclose(result.score, result.opacity)
    batch = scorer.score_tensor(scorer.score_arrays([np.zeros((8, 8))]).inputs)  # a blank film
    residual = (batch.inputs - batch.reconstructions).abs().flatten(1).mean(1).numpy()
    np.testing.assert_allclose(batch.residual, residual, rtol=1e-5)  # what "residual" means
    report = evaluate_model(tmp_path / "run", REAL_DATA / "test_dev", tmp_path / "report",
                          val_dir=REAL_DATA / "val", max_images=4, resamples=50, progress=False,
                          log=lambda *a: None)
    assert report["n"] == 8 and report["threshold_source"] == "val"
    assert report["mode"] == "critic" and report["score"] == expected
    assert json.loads((tmp_path / "report" / "report.json").read_text())["n_anomalous"] == 4
    page = check_page_against_report(tmp_path / "report")
    assert [Path(f["path"]).parent.name for f in page.figures] == ["NORMAL"] * 4 + [
        "PNEUMONIA"] * 4  # the gallery: every normal film, then every pneumonia
