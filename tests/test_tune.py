"""classify tune: search spaces, a tiny study, resume, two processes on one SQLite study."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from anomaly.config import load_config
from classify.train import FitConfig
from classify.tune import StudyError, parse_space
from cli.classify_cli import main
from tests.test_classify import make_folder

ROOT = Path(__file__).resolve().parents[1]
FIXED = ["--weights", "none", "--backbone", "resnet18", "--image-size", "32", "--epochs", "2",
         "--no-progress", "--seed", "1"]
SPACE = {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "dropout": {"low": 0.1, "high": 0.5},
         "fine_tune_epochs": {"low": 0, "high": 1}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    counts = {"NORMAL": 8, "PNEUMONIA": 8}
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    return {"train": make_folder(root / "train", counts, seed=6),
            "val": make_folder(root / "val", counts, seed=7), "space": space}


def tune_args(folders, study, *extra):
    return ["tune", "--data", str(folders["train"]), "--val", str(folders["val"]),
            "--out", str(study), "--space", str(folders["space"]), *FIXED, *map(str, extra)]


@pytest.mark.parametrize("space, message", [
    ({"learning_rate": {"low": 0.1, "high": 1.0}}, "unknown setting 'learning_rate'"),
    ({"lr": {"low": 0.1, "high": 0.01}}, "low 0.1 is greater than high 0.01"),
    ({"backbone": {"choices": ["resnet18", "resnet9000"]}}, "unknown backbone(s) resnet9000"),
    ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs low > 0"),
    ({"dropout": [0.1, 0.2]}, "must be {low, high[, log]} or {choices}"),
])
def test_bad_search_spaces_are_refused_in_one_line(space, message):
    with pytest.raises(StudyError, match=re.escape(message)):
        parse_space(space)


def test_bad_space_stops_the_cli_before_training(folders, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: {low: 0.1, high: 0.01}\n")
    study = tmp_path / "study"
    result = CliRunner().invoke(main, [*tune_args(folders, study, "--trials", 1),
                                       "--space", str(bad)])  # the later --space wins
    assert result.exit_code == 1 and "low 0.1 is greater than high 0.01" in result.output
    assert not study.exists()  # nothing trained, no study created


def test_study_writes_best_config_trials_and_plots_then_resumes(folders, tmp_path):
    study = tmp_path / "study"
    first = CliRunner().invoke(main, tune_args(folders, study, "--trials", 2))
    assert first.exit_code == 0, first.output
    assert first.output.count("trial ") >= 2 and "best: trial" in first.output
    best = load_config(FitConfig, study / "best.yaml")  # what classify fit --config takes
    assert best.backbone == "resnet18" and best.image_size == 32 and best.weights == "none"
    assert 1e-4 <= best.lr <= 1e-2 and 0.1 <= best.dropout <= 0.5
    rows = list(csv.DictReader(open(study / "trials.csv")))
    assert [r["trial"] for r in rows] == ["0", "1"] and {"lr", "dropout", "val-loss"} <= set(rows[0])
    defaults = FitConfig()  # trial 0 is the hand-written config (here: the defaults)
    assert float(rows[0]["lr"]) == defaults.lr and float(rows[0]["dropout"]) == defaults.dropout
    done = [r for r in rows if r["val-loss"] not in ("", "nan")]
    best_row = min(done, key=lambda r: float(r["val-loss"]))  # best.yaml is that trial's
    assert best.lr == pytest.approx(float(best_row["lr"]))
    assert best.dropout == pytest.approx(float(best_row["dropout"]))
    assert (study / "history.png").stat().st_size > 0
    assert (study / "importances.png").stat().st_size > 0

    again = CliRunner().invoke(main, tune_args(folders, study, "--trials", 1))
    assert again.exit_code == 1 and "--resume" in again.output  # no silent restart
    resumed = CliRunner().invoke(main, tune_args(folders, study, "--trials", 1, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    rows = list(csv.DictReader(open(study / "trials.csv")))
    assert [r["trial"] for r in rows] == ["0", "1", "2"]  # the finished trials are kept
    fit = CliRunner().invoke(main, ["fit", "--data", str(folders["train"]), "--val",
                                    str(folders["val"]), "--out", str(tmp_path / "fit"),
                                    "--config", str(study / "best.yaml"), "--no-progress"])
    assert fit.exit_code == 0, fit.output


def test_two_processes_share_one_sqlite_study(folders, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    command = [sys.executable, "-m", "cli.classify_cli",
               *tune_args(folders, tmp_path / "a", "--trials", 1, "--storage", storage,
                          "--resume")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    second_command = [c if c != str(tmp_path / "a") else str(tmp_path / "b") for c in command]
    second = subprocess.Popen(second_command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    for process in (first, second):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
    import optuna

    trials = optuna.load_study(study_name="classify", storage=storage).trials
    assert len(trials) == 2 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert len({t.number for t in trials}) == 2


def test_storage_creation_race_is_retried(tmp_path, monkeypatch):
    import optuna
    from sqlalchemy.exc import OperationalError

    from classify.tune import connect_storage

    real = optuna.storages.RDBStorage
    calls = []

    def lose_the_race_once(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:  # what the slower of two new processes sees
            raise OperationalError("CREATE TABLE studies", {}, Exception("table exists"))
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", lose_the_race_once)
    storage = connect_storage(f"sqlite:///{tmp_path / 'race.db'}")
    assert len(calls) == 2 and isinstance(storage, real)
    def always_locked(url, **kwargs):
        raise OperationalError("CREATE TABLE studies", {}, Exception("database is locked"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", always_locked)
    with pytest.raises(OperationalError):  # a real failure still surfaces
        connect_storage(f"sqlite:///{tmp_path / 'never.db'}", attempts=2)


@pytest.mark.parametrize("objective, pruned", [("val-loss", True), ("val-auroc", False)])
def test_the_pruner_is_fed_only_for_the_validation_loss_objective(tmp_path, monkeypatch,
                                                                  objective, pruned):
    """The pruner reads the validation loss: with the AUROC objective it must not cut
    trials on a metric the study does not optimise."""
    import classify.tune as tune_module
    from classify.train import FitConfig

    fed = []

    def fake_fit(config, data_dir, val_dir, run_dir, progress, log, on_epoch):
        fed.append(on_epoch is not None)
        if on_epoch is not None:
            on_epoch(1, {"val_loss": 9.0})
        return Path(run_dir) / "best.pt"

    monkeypatch.setattr(tune_module, "fit", fake_fit)
    monkeypatch.setattr(tune_module, "validation_objective", lambda *a: 0.5)
    space = tune_module.parse_space(SPACE, "test space")
    study = tune_module.tune("train", "val", tmp_path / "study", FitConfig(), space,
                             trials=2, objective=objective, progress=False,
                             log=lambda *a: None)
    assert fed == [pruned, pruned]
    reported = {1: 9.0} if pruned else {}  # what the pruner compares, stored per trial
    assert [t.intermediate_values for t in study.trials] == [reported, reported]
