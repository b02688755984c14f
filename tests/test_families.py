"""The seam between the shared code and the model families: a third family adds files
only; shared code names no family; configs in sections, and the flat configs and
checkpoints of the version before sections still load, score and resume."""

from __future__ import annotations

import ast
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from anomaly import families
from anomaly.checkpoint import load_checkpoint, save_checkpoint
from anomaly.config import load_config
from anomaly.score import Scorer
from anomaly.train import TrainConfig
from cli.anomaly_cli import main as anomaly_main

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED = sorted((ROOT / "anomaly").glob("*.py")) + sorted((ROOT / "cli").glob("*.py"))


def invoke(*args: str):
    result = CliRunner().invoke(anomaly_main, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture
def toy_family():
    """The toy family of tests/toy_family registered for one test."""
    sys.path.insert(0, str(Path(__file__).parent))
    import toy_family

    families.register(toy_family)
    yield toy_family
    families.unregister(toy_family.NAME)
    sys.path.remove(str(Path(__file__).parent))


def test_a_third_family_adds_files_only(toy_family, tmp_path, normal_dir, labelled_dir):
    config = tmp_path / "toy.yaml"
    config.write_text("image_size: 32\nholdout_fraction: 0.25\nfamilies: [toy]\n"
                      "toy: {scale: 2.0}\n")
    run = tmp_path / "run"
    trained = invoke("train-gan", "--config", config, "--data", normal_dir, "--out", run,
                     "--no-progress")
    assert trained.exit_code == 0, trained.output
    state = load_checkpoint(run)
    assert state["families"] == ["toy"] and state["toy"]["scale"] == 2.0
    assert state["train_config"]["toy"] == {"epochs": 1, "scale": 2.0}
    assert "toy" in state["score_stats"]  # its held-out normals' statistics, fitted

    out = tmp_path / "scores.csv"
    scored = invoke("score", "--model", run, "--dir", labelled_dir, "--out", out,
                    "--no-progress")
    assert scored.exit_code == 0, scored.output
    header, *rows = out.read_text().splitlines()
    assert header.split(",")[:2] == ["path", "score"] and "toy" in header.split(",")
    images = [r.split(",")[0] for r in rows]
    scorer = Scorer.from_checkpoint(run)
    assert scorer.mode == "toy" and scorer.score == "toy-distance"
    expected = scorer.score_paths(images, progress=False).score
    np.testing.assert_allclose([float(r.split(",")[1]) for r in rows], expected, atol=1e-6)

    report = tmp_path / "report"
    evaluated = invoke("evaluate", "--model", run, "--data", labelled_dir, "--out", report,
                       "--no-progress")
    assert evaluated.exit_code == 0, evaluated.output
    saved = json.loads((report / "report.json").read_text())
    assert saved["family"] == "toy" and saved["toy_scale"] == 2.0
    assert "Toy brightness family (toy, toy-distance)" in (report / "report.html").read_text()

    calibrated = invoke("calibrate", "--model", run, "--val", labelled_dir, "--no-progress")
    assert calibrated.exit_code == 0, calibrated.output
    assert list(load_checkpoint(run)["thresholds"].values())[0]["mode"] == "toy"

    refused = invoke("export", "--model", run, "--out", tmp_path / "export")
    assert refused.exit_code == 1
    assert "cannot be exported: the toy family has no network to export" in refused.output
    assert not (tmp_path / "export" / "model.onnx").exists()


def test_a_family_missing_a_declaration_is_refused():
    import types

    module = types.ModuleType("half_family")
    module.NAME = "half"
    with pytest.raises(ValueError, match="does not declare TITLE"):
        families.register(module)
    assert "half" not in families.FAMILIES


def _names_in_shared_code(path: Path, names: set[str]) -> list[str]:
    """String literals, imports and attributes of ``path`` naming a family or its modes
    and scores (docstrings aside: prose may mention them)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings and node.value in names:
            found.append(f"{path.name}:{node.lineno} {node.value!r}")
        elif isinstance(node, ast.ImportFrom) and node.module and any(
                node.module.startswith(f"anomaly.families.{name}") for name in names):
            found.append(f"{path.name}:{node.lineno} import {node.module}")
        elif isinstance(node, ast.Import) and any(
                alias.name.startswith(f"anomaly.families.{name}") for alias in node.names
                for name in names):
            found.append(f"{path.name}:{node.lineno} import")
    return found


def test_shared_code_and_the_cli_name_no_family():
    names = set()
    for module in families.FAMILIES.values():
        names |= {module.NAME, *module.MODES, *module.SCORES, *getattr(module, "HEATS", ())}
    names -= set(families.SHARED_SCORES) | {"density"}  # the density maths is shared
    found = [hit for path in SHARED for hit in _names_in_shared_code(path, names)]
    assert found == []


def test_the_name_check_sees_a_family_named_in_code(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""Docs may say critic."""\nfrom anomaly.families.critic.network import X\n'
                   'if mode == "critic":\n    pass\n')
    assert len(_names_in_shared_code(bad, {"critic"})) == 2


def test_a_config_in_sections_equals_the_flat_one_before_it(tmp_path):
    flat = load_config(TrainConfig, FIXTURES / "flat_config.yaml")
    sectioned = tmp_path / "sections.yaml"
    sectioned.write_text(
        "image_size: 32\nholdout_fraction: 0.25\nseed: 5\n"
        "critic: {epochs: 1, width: 4, map_width: 4, batch_size: 8}\n"
        "dcgan: {epochs: 1, batch_size: 8, latent_dim: 8, generator_width: 4,\n"
        "        discriminator_width: 4, max_channels: 16, encoder: {epochs: 1}}\n")
    assert load_config(TrainConfig, sectioned) == flat
    assert flat.section("dcgan").encoder.epochs == flat.encoder_epochs == 1
    assert flat.section("critic").width == flat.critic_width == 4
    # a flag (a flat key) wins over the file's section; unknown keys are refused by name
    assert load_config(TrainConfig, sectioned, {"epochs": 3}).section("dcgan").epochs == 3
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig(critc={"epochs": 1})
    with pytest.raises(ValueError, match="dcgan: encoder: unknown key"):
        TrainConfig(dcgan={"encoder": {"epoch": 1}})
    with pytest.raises(ValueError, match="families"):
        TrainConfig(families=["gan"])


def test_the_recommended_config_lists_every_default_once():
    text = (ROOT / "configs" / "chest_xray.yaml").read_text()
    assert load_config(TrainConfig, ROOT / "configs" / "chest_xray.yaml") == TrainConfig()
    assert "critic:" in text and "dcgan:" in text and "encoder:" in text
    assert not any(line.startswith("critic_") for line in text.splitlines())


def test_a_saved_config_reads_back_in_sections(tmp_path):
    from anomaly.config import save_config

    config = TrainConfig(image_size=64, critic={"epochs": 2}, epochs=0)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(TrainConfig, tmp_path / "config.yaml") == config
    assert config.trained_families() == ["critic"]


def relocated_fixture(tmp_path: Path) -> Path:
    """The flat version's checkpoint, its data paths pointed at this checkout's
    examples/data/train (where it was trained, elsewhere)."""
    run = tmp_path / "old_run"
    (run / "checkpoints").mkdir(parents=True)
    state = torch.load(FIXTURES / "flat_version_run.pt", weights_only=True)
    state["data_dir"] = str(ROOT / "examples" / "data" / "train")
    state["holdout_paths"] = [str(ROOT / p) for p in state["holdout_paths"]]
    save_checkpoint(state, run / "checkpoints" / "last.pt")
    return run


def test_a_checkpoint_of_the_flat_version_scores_as_it_did(tmp_path):
    run = relocated_fixture(tmp_path)
    assert "critic_epochs" in load_checkpoint(run)["train_config"]  # written flat
    # as recorded by that version, but for its discriminator mode's density: that one is
    # now scored on the embedding it was fitted on (each view normalised before the two
    # are summed), as it had not been
    recorded = json.loads((FIXTURES / "flat_version_scores.json").read_text())
    films = sorted((ROOT / "examples" / "data" / "test").rglob("*.jpeg"))
    for mode, expected in recorded.items():
        result = Scorer.from_checkpoint(run, mode=mode, device="cpu").score_paths(
            films, progress=False)
        got = {Path(p).name: s for p, s in zip(result.paths, result.score)}
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-6), (mode, name)


def test_a_checkpoint_of_the_flat_version_resumes(tmp_path):
    run = relocated_fixture(tmp_path)
    before = load_checkpoint(run)
    data = ROOT / "examples" / "data" / "train"
    refused = invoke("train-gan", "--data", data, "--out", run, "--resume",
                     "--critic-epochs", "3", "--no-progress")
    assert refused.exit_code == 1 and "critic.epochs 1 there, 3 now" in refused.output
    resumed = invoke("train-gan", "--data", data, "--out", run, "--resume", "--epochs", "2",
                     "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    after = load_checkpoint(run)
    assert after["epoch"] == 2 and after["critic"]["epoch"] == 1
    assert after["critic"]["map_epoch"] == 20  # the map head's stage it had not had
    for key, value in before["critic"]["network"].items():
        if not key.startswith("map_head."):  # the critic itself is as it was
            torch.testing.assert_close(after["critic"]["network"][key], value)
    assert after["train_config"]["dcgan"]["epochs"] == 2  # now written in sections
    assert after["train_config"]["critic"]["width"] == 4
    shutil.rmtree(run)
