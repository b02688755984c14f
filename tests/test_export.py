"""anomaly export: ONNX and TorchScript, scored without torch, the same numbers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from anomaly.checkpoint import CheckpointError
from anomaly.export import export_run
from anomaly.score import Scorer
from cli.anomaly_cli import main as anomaly_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "data" / "test").rglob("*.jpeg"))


def test_export_writes_the_network_and_a_versioned_json(exported, default_run):
    info = json.loads((exported / "export.json").read_text())
    assert (exported / "model.onnx").is_file()
    assert info["format"] == "cxr-anomaly-export" and info["format_version"] == 2
    assert (info["mode"], info["score"]) == ("critic", "density")
    assert len(info["density"]["mean"]) == len(info["density"]["precision"])
    assert info["threshold"]["source"] == "heldout-normal-quantile"
    assert info["threshold"]["value"] == Scorer.from_checkpoint(default_run).decision().threshold


def test_exported_scores_match_the_run_without_importing_torch(exported, default_run):
    code = ("import json, sys\n"
            "from anomaly.exported import ExportedScorer\n"
            f"result = ExportedScorer({str(exported)!r}).score_paths({[str(p) for p in EXAMPLES]!r})\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'torch'], 'torch imported'\n"
            "print(json.dumps(result.score))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    onnx_scores = np.array(json.loads(done.stdout))
    torch_scores = np.array(Scorer.from_checkpoint(default_run, device="cpu")
                            .score_paths(EXAMPLES, progress=False).score)
    assert len(onnx_scores) == len(EXAMPLES) == 8
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-4)


def test_anomaly_score_runs_an_exported_model(exported, default_run, tmp_path):
    out = tmp_path / "scores.csv"
    done = CliRunner().invoke(anomaly_main, ["score", "--model", str(exported / "model.onnx"),
                                             "--dir", str(ROOT / "examples" / "data" / "test"),
                                             "--out", str(out)])
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 8 and list(rows[0])[:4] == ["path", "score", "label", "p_value"]
    refused = CliRunner().invoke(anomaly_main, ["score", "--model", str(exported),
                                                "--dir", str(tmp_path), "--mode", "search"])
    assert refused.exit_code != 0 and "exported mode" in refused.output


def test_search_cannot_be_exported_and_torchscript_matches(default_run, tmp_path):
    from anomaly.families.critic.normal_level import shown_map

    with pytest.raises(CheckpointError, match="optimisation loop"):
        export_run(default_run, tmp_path / "search", mode="search")
    path = export_run(default_run, tmp_path / "ts", fmt="torchscript")
    network = torch.jit.load(str(path))
    scorer = Scorer.from_checkpoint(default_run, device="cpu")
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    embedding, logit, quiet, opacity = network(images)
    np.testing.assert_allclose(logit.detach().numpy(), scorer.score_tensor(images).logit,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(quiet.detach().numpy(), scorer.score_tensor(images).quiet,
                               rtol=1e-4, atol=1e-5)
    assert embedding.shape[0] == 3
    shown = shown_map(opacity.detach().numpy(), scorer.family.normal_level,
                      scorer.family.map_field.numpy())
    np.testing.assert_allclose(shown, scorer.score_tensor(images).heatmaps, rtol=1e-4, atol=1e-5)


def test_an_export_from_a_newer_version_or_not_ours_is_refused(exported, tmp_path):
    import shutil

    from anomaly.exported import ExportedScorer

    newer = tmp_path / "newer"
    shutil.copytree(exported, newer)
    info = json.loads((newer / "export.json").read_text())
    (newer / "export.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(CheckpointError, match="newer version"):
        ExportedScorer(newer)
    (newer / "export.json").write_text(json.dumps({**info, "format": "other"}))
    with pytest.raises(CheckpointError, match="not an exported cxr-anomaly model"):
        ExportedScorer(newer / "model.onnx")
