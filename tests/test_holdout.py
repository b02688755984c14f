"""Held-out normals are split by patient, so no held-out film has a sibling in training."""

from __future__ import annotations

from pathlib import Path

from anomaly.checkpoint import load_checkpoint
from anomaly.train import TrainConfig, patient_id, split_holdout, train_run
from tests.conftest import TINY_CONFIG, write_images

PATTERN = TrainConfig().holdout_patient_pattern


def kermany_like_names() -> list[Path]:
    """40 patients with 1-3 films each, named as in the Kermany collection."""
    names = []
    for patient in range(40):
        for film in range(1 + patient % 3):
            prefix = "NORMAL2-" if patient % 2 else ""
            names.append(Path(f"{prefix}IM-{patient:04d}-{film + 1:04d}.jpeg"))
    names += [Path(f"person{p}_bacteria_{p * 3 + k}.jpeg") for p in range(10) for k in range(2)]
    return sorted(names)


def test_patient_ids_of_kermany_names():
    assert patient_id(Path("IM-0123-0001.jpeg"), PATTERN) == "IM-0123"
    assert patient_id(Path("NORMAL2-IM-0123-0002.jpeg"), PATTERN) == "NORMAL2-IM-0123"
    assert patient_id(Path("person12_virus_40.jpeg"), PATTERN) == "person12"
    assert patient_id(Path("scan.png"), PATTERN) is None
    assert patient_id(Path("IM-0123-0001.jpeg"), "") is None


def test_no_patient_on_both_sides():
    paths = kermany_like_names()
    for seed in range(5):
        train, holdout, by_patient = split_holdout(paths, 0.2, seed, PATTERN)
        assert sorted(train + holdout) == paths and by_patient == len(holdout)
        assert len(holdout) >= round(0.2 * len(paths))
        train_ids = {patient_id(p, PATTERN) for p in train}
        assert not {patient_id(p, PATTERN) for p in holdout} & train_ids


def test_image_split_without_ids_and_leak_it_prevents():
    paths = kermany_like_names()
    train, holdout, by_patient = split_holdout(paths, 0.2, 0, "")  # the old image split
    assert by_patient == 0 and len(holdout) == round(0.2 * len(paths))
    train_ids = {patient_id(p, PATTERN) for p in train}
    assert {patient_id(p, PATTERN) for p in holdout} & train_ids  # siblings leak


def test_checkpoint_says_how_the_holdout_was_split(tmp_path, monkeypatch):
    """What training actually loaded (recorded at the loader) is every film but the
    held-out ones, and no patient is on both sides."""
    import anomaly.train

    folder = tmp_path / "normal"
    for path in write_images(folder, 24, seed=5):
        path.rename(folder / f"IM-{int(path.stem[-3:]) // 2:04d}-0001{path.stem[-1]}.png")
    loaded = []
    load_images = anomaly.train.load_images

    def recording(paths, *args, **kwargs):
        loaded.extend(paths)
        return load_images(paths, *args, **kwargs)

    monkeypatch.setattr(anomaly.train, "load_images", recording)
    run = tmp_path / "run"
    train_run(TrainConfig(**{**TINY_CONFIG, "epochs": 1, "holdout_fraction": 0.25}), folder,
              run, progress=False, log=lambda *a: None)
    state = load_checkpoint(run)
    held = [Path(p) for p in state["holdout_paths"]]
    assert state["holdout_by_patient"] == len(held) >= 6
    trained = set(loaded)
    assert len(loaded) == len(trained) == 24 - len(held) and not trained & set(held)
    assert not {patient_id(p, PATTERN) for p in trained} & {patient_id(p, PATTERN) for p in held}


def test_held_out_paths_are_stored_absolute(tmp_path, monkeypatch):
    """A run trained from a relative data folder still finds its held-out films when it
    is resumed or scored from another working directory."""
    write_images(tmp_path / "normal", 20, seed=2)  # a holdout needs 20 films or more
    monkeypatch.chdir(tmp_path)
    train_run(TrainConfig(**{**TINY_CONFIG, "epochs": 1, "holdout_fraction": 0.25}), "normal",
              tmp_path / "run", progress=False, log=lambda *a: None)
    monkeypatch.chdir(tmp_path / "run")
    held = [Path(p) for p in load_checkpoint(tmp_path / "run")["holdout_paths"]]
    assert held and all(p.is_absolute() and p.exists() for p in held)
