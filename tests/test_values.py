"""Values as well as formats: thresholds, counts, resumed CSVs, existing runs (each of
these once went silently wrong)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from anomaly.decision import NOT_FINITE, make_decision
from anomaly.io import from_spreadsheet_safe, spreadsheet_safe
from anomaly.score import Scorer
from anomaly.score_files import read_scored_paths, score_files
from cli.anomaly_cli import main as anomaly_main

ROOT = Path(__file__).resolve().parents[1]


def rows_of(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_threshold_that_is_not_finite_is_refused(default_run, normal_dir, tmp_path, value):
    for command in (["score", "--model", str(default_run), "--dir", str(normal_dir),
                     "--threshold", value],
                    ["export", "--model", str(default_run), "--out", str(tmp_path / "x"),
                     "--threshold", value]):
        done = CliRunner().invoke(anomaly_main, command)
        assert done.exit_code != 0 and "not a finite number" in done.output, done.output
    assert not (tmp_path / "x" / "export.json").exists()


def test_a_score_that_is_not_finite_is_never_labelled_normal():
    decision = make_decision([1.0, 2.0, 3.0], threshold=10.0)
    scores = [np.nan, np.inf, 1.0]
    assert decision.labels(scores) == [NOT_FINITE, NOT_FINITE, "normal"]
    assert np.isnan(decision.p_values(scores)[:2]).all()
    conformal = make_decision([1.0, 2.0, 3.0], alpha=0.5)
    assert conformal.labels([np.nan])[0] == NOT_FINITE
    with pytest.raises(ValueError, match="NaN or infinite"):
        make_decision([1.0, np.nan], threshold=1.0)
    with pytest.raises(ValueError, match="finite"):
        make_decision([1.0, 2.0], stored={"value": float("nan"), "source": "val"})


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_images_below_one_is_refused(trained_run, normal_dir, value):
    done = CliRunner().invoke(anomaly_main, ["score", "--model", str(trained_run), "--dir",
                                             str(normal_dir), "--max-images", value])
    assert done.exit_code == 2 and "--max-images" in done.output


def test_training_onto_a_trained_run_needs_resume_or_overwrite(trained_run, normal_dir,
                                                               tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = (run / "checkpoints" / "last.pt").read_bytes()
    args = ["train-gan", "--data", str(normal_dir), "--out", str(run), "--image-size", "32",
            "--critic-epochs", "0", "--epochs", "1", "--batch-size", "8", "--no-progress",
            "--encoder-epochs", "0"]
    done = CliRunner().invoke(anomaly_main, args)
    assert done.exit_code == 1 and "--overwrite" in done.output
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    both = CliRunner().invoke(anomaly_main, [*args, "--resume", "--overwrite"])
    assert both.exit_code == 2
    replaced = CliRunner().invoke(anomaly_main, [*args, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert (run / "checkpoints" / "last.pt").read_bytes() != before


@pytest.mark.parametrize("name", ["'=cmd.png", "'plain.png", "=sum.png", "''x.png", "-a.png"])
def test_the_formula_guard_round_trips_every_name(name):
    assert from_spreadsheet_safe(spreadsheet_safe(name)) == name
    assert not spreadsheet_safe(name).startswith(("=", "+", "-", "@"))


def scored_csv(run, folder, tmp_path, count: int):
    """The first ``count`` films of ``folder`` scored into a CSV: (scorer, paths, CSV path,
    its rows, its bytes)."""
    paths = sorted(folder.glob("*.png"))[:count]
    scorer = Scorer.from_checkpoint(run, device="cpu")
    out = tmp_path / "scores.csv"
    score_files(scorer, paths, out, progress=False)
    return scorer, paths, out, rows_of(out), out.read_bytes()


def test_resume_after_a_cut_last_row_rescores_that_film_on_a_fresh_line(trained_run,
                                                                        normal_dir, tmp_path):
    scorer, paths, out, whole, data = scored_csv(trained_run, normal_dir, tmp_path, 6)
    out.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 12])  # the last row cut
    assert len(read_scored_paths(out)) == 5
    score_files(scorer, paths, out, progress=False, resume=True)
    resumed = rows_of(out)
    assert len(resumed) == len(whole) == 7 and all(len(r) == len(whole[0]) for r in resumed)
    assert [r[0] for r in resumed] == [r[0] for r in whole]
    assert out.read_bytes().endswith(b"\r\n")


def test_the_same_folder_spelled_two_ways_is_not_scored_twice(trained_run, normal_dir,
                                                              tmp_path, monkeypatch):
    images = tmp_path / "img"
    shutil.copytree(normal_dir, images)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "s.csv"
    first = CliRunner().invoke(anomaly_main, ["score", "--model", str(trained_run), "--dir",
                                              "img", "--out", str(out), "--no-progress"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(anomaly_main, ["score", "--model", str(trained_run), "--dir",
                                              str(images.resolve()), "--out", str(out),
                                              "--resume", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert len(rows_of(out)) == 1 + len(list(images.glob("*.png")))


def test_a_name_starting_with_an_apostrophe_is_resumed_once(trained_run, normal_dir, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    source = sorted(normal_dir.glob("*.png"))[0]
    shutil.copy(source, folder / "'=odd.png")
    shutil.copy(source, folder / "plain.png")
    scorer = Scorer.from_checkpoint(trained_run, device="cpu")
    out = tmp_path / "s.csv"
    paths = sorted(folder.glob("*.png"))
    for _ in range(3):
        score_files(scorer, paths, out, progress=False, resume=True)
    assert len(rows_of(out)) == 3
    assert {os.path.basename(p) for p in read_scored_paths(out)} == {"'=odd.png", "plain.png"}


def test_arrays_follow_the_rules_files_follow(default_run, tmp_path):
    import cv2

    from anomaly.detector import Detector

    film = cv2.imread(str(sorted((ROOT / "examples/data/test/NORMAL").glob("*.jpeg"))[0]),
                      cv2.IMREAD_GRAYSCALE)
    path = tmp_path / "film.png"
    cv2.imwrite(str(path), film)
    detector = Detector.from_run(default_run, device="cpu")
    as_file, as_uint8, as_float, as_rgb, as_channel = detector.predict(
        [path, film, film / 255.0, np.repeat(film[..., None], 3, axis=2), film[None]])
    for other in (as_uint8, as_float, as_rgb, as_channel):
        assert other.score == pytest.approx(as_file.score, rel=1e-4), other.source
    refused = detector.predict([np.full((64, 64), np.nan), np.zeros((1, 1)), film * 1.0,
                                np.zeros((0, 0)), np.zeros((4, 64, 64)),
                                film.astype(np.int64)])
    reasons = [p.error for p in refused]
    assert all(p.label == "unreadable" for p in refused), reasons
    assert "NaN" in reasons[0] and "pixels" in reasons[1] and "[0, 1]" in reasons[2]
    assert "empty" in reasons[3] and "shape" in reasons[4] and "dtype" in reasons[5]
    with pytest.raises(ValueError, match="array 0"):
        detector.scorer.score_arrays([np.full((64, 64), np.inf)])


def test_a_fifo_or_a_device_named_png_is_refused_without_blocking(tmp_path):
    from anomaly.io import ImageReadError, read_image

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(fifo)
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(zero)


def test_a_file_larger_than_the_limit_is_refused_even_when_its_size_lies(tmp_path,
                                                                         monkeypatch):
    from anomaly import io
    from anomaly.io import ImageReadError, read_image

    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"0" * 4000)
    monkeypatch.setattr(io, "MAX_FILE_MB", 0.001)
    real_fstat = os.fstat

    def lying_fstat(descriptor):  # a file system that says the file holds 10 bytes
        info = real_fstat(descriptor)
        return os.stat_result((info.st_mode, info.st_ino, info.st_dev, info.st_nlink,
                               info.st_uid, info.st_gid, 10, info.st_atime, info.st_mtime,
                               info.st_ctime))

    monkeypatch.setattr(io.os, "fstat", lying_fstat)
    with pytest.raises(ImageReadError, match="holds more than the limit"):
        read_image(big)


def test_two_jobs_never_write_one_output(trained_run, normal_dir, tmp_path):
    from anomaly.atomic import FileLocked, open_for_streaming

    out = tmp_path / "s.csv"
    out.write_bytes(b"path,score\r\n")
    holder = open_for_streaming(out, append=True, lock=True)  # another job writing it
    try:
        scorer = Scorer.from_checkpoint(trained_run, device="cpu")
        with pytest.raises(FileLocked, match="another process"):
            score_files(scorer, sorted(normal_dir.glob("*.png"))[:2], out, progress=False)
        assert out.read_bytes() == b"path,score\r\n"  # not truncated by the refused job
    finally:
        holder.close()


def test_no_file_is_written_through_a_planted_link(trained_run, normal_dir, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    maps = tmp_path / "maps"
    maps.mkdir()
    paths = sorted(normal_dir.glob("*.png"))[:1]
    (maps / (paths[0].stem + ".png")).symlink_to(victim)
    scorer = Scorer.from_checkpoint(trained_run, device="cpu")
    score_files(scorer, paths, tmp_path / "s.csv", heatmap_dir=maps, progress=False)
    assert victim.read_text() == "keep me"
    assert not (maps / (paths[0].stem + ".png")).is_symlink()  # the link was replaced
    link = tmp_path / "out.csv"
    link.symlink_to(victim)
    with pytest.raises(PermissionError, match="symbolic link"):
        score_files(scorer, paths, link, progress=False)
    assert victim.read_text() == "keep me"


HOSTILE = [float("nan"), 0, -1.0, None, "x", [], True]


def tampered_checkpoint(run, tmp_path, setter) -> Path:
    import torch

    from anomaly.checkpoint import load_checkpoint

    state = load_checkpoint(run)
    setter(state)
    path = tmp_path / "tampered.pt"
    torch.save(state, path)
    return path


def either_finite_or_refused(output: str, exit_code: int) -> None:
    """What every tampered model file must give: finite scores and real labels, or one
    line of error and nothing scored."""
    assert "Traceback" not in output, output
    if exit_code == 0:
        rows = [line.split("\t") for line in output.splitlines() if "\t" in line]
        assert rows and all(np.isfinite(float(r[1])) for r in rows), output
        # a real label (none only where the model has no threshold) and a real p-value
        assert all(r[2] in ("normal", "anomalous", "") for r in rows), output
        p_values = [float(r[3].removeprefix("p=")) for r in rows]
        assert all(np.isnan(p) or 0 < p <= 1 for p in p_values), output
    else:
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert exit_code == 1 and len(errors) == 1, output


CHECKPOINT_FIELDS = {
    "format_version": lambda s, v: s.__setitem__("format_version", v),
    "preprocess.clahe_tile_grid": lambda s, v: s["preprocess"].__setitem__("clahe_tile_grid", v),
    "preprocess.clahe_clip_limit": lambda s, v: s["preprocess"].__setitem__("clahe_clip_limit",
                                                                            v),
    "preprocess.image_size": lambda s, v: s["preprocess"].__setitem__("image_size", v),
    "critic.density.mean": lambda s, v: s["critic"]["density"].__setitem__(
        "mean", s["critic"]["density"]["mean"] * (v if isinstance(v, float) else 1)
        if isinstance(v, float) else v),
    "critic.density.precision": lambda s, v: s["critic"]["density"].__setitem__(
        "precision", s["critic"]["density"]["precision"] * v
        if isinstance(v, (int, float)) and not isinstance(v, bool) else v),
    "critic.heat_scale": lambda s, v: s["critic"].__setitem__("heat_scale", v),
    "critic.map_normal_level": lambda s, v: s["critic"].__setitem__("map_normal_level", v),
    "lung_prior": lambda s, v: s.__setitem__("lung_prior", s["lung_prior"] * v
                                             if isinstance(v, float) else v),
    "score_stats.components": lambda s, v: [
        stats.__setitem__("components", {name: [v] * len(values) for name, values
                                         in stats["components"].items()})
        for stats in s["score_stats"].values()],
    "score_stats": lambda s, v: s.__setitem__("score_stats", v),
    "holdout_paths": lambda s, v: s.__setitem__("holdout_paths", v),
    "critic.network": lambda s, v: s["critic"].__setitem__("network", v),
}


@pytest.mark.parametrize("field", sorted(CHECKPOINT_FIELDS))
@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_a_tampered_checkpoint_scores_finitely_or_is_refused_in_one_line(
        default_run, tmp_path, field, value):
    path = tampered_checkpoint(default_run, tmp_path,
                               lambda state: CHECKPOINT_FIELDS[field](state, value))
    film = sorted((ROOT / "examples/data/test/NORMAL").glob("*.jpeg"))[0]
    done = CliRunner().invoke(anomaly_main, ["score", "--model", str(path), "--image",
                                             str(film), "--no-progress"])
    either_finite_or_refused(done.output, done.exit_code)


def test_a_nan_density_or_a_zero_tile_grid_is_named_in_the_refusal(default_run, tmp_path):
    import torch

    path = tampered_checkpoint(default_run, tmp_path, lambda s: s["critic"]["density"]
                               .__setitem__("mean", torch.full_like(
                                   s["critic"]["density"]["mean"], float("nan"))))
    done = CliRunner().invoke(anomaly_main, ["score", "--model", str(path), "--dir",
                                             str(ROOT / "examples/data/test")])
    assert done.exit_code == 1 and "critic.density.mean holds NaN" in done.output
    path = tampered_checkpoint(default_run, tmp_path,
                               lambda s: s["preprocess"].__setitem__("clahe_tile_grid", 0))
    done = CliRunner().invoke(anomaly_main, ["score", "--model", str(path), "--dir",
                                             str(ROOT / "examples/data/test")])
    assert done.exit_code == 1 and "clahe_tile_grid" in done.output


EXPORT_FIELDS = ["threshold.value", "density.precision", "density.mean", "network",
                 "region_threshold", "lung_prior", "heldout_normal_scores", "preprocess",
                 "mode", "components", "threshold", "map_normal_level", "format_version",
                 "checkpoint"]


def set_field(info: dict, field: str, value):
    keys = field.split(".")
    target = info
    for key in keys[:-1]:
        target = target[key]
    old = target.get(keys[-1])
    if isinstance(value, float) and isinstance(old, list) and all(
            isinstance(v, (int, float, list)) for v in old):  # scale every number
        value = (np.asarray(old, dtype=float) * value).tolist()
    target[keys[-1]] = value


@pytest.mark.parametrize("field", EXPORT_FIELDS)
@pytest.mark.parametrize("value", [*HOSTILE, "../../../../etc/passwd", "delete"], ids=repr)
def test_a_tampered_export_scores_finitely_or_is_refused_in_one_line(
        exported, tmp_path, field, value):
    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    info = json.loads((folder / "export.json").read_text())
    if value == "delete":
        keys = field.split(".")
        target = info
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    else:
        set_field(info, field, value)
    (folder / "export.json").write_text(json.dumps(info))
    film = sorted((ROOT / "examples/data/test/NORMAL").glob("*.jpeg"))[0]
    done = CliRunner().invoke(anomaly_main, ["score", "--model", str(folder), "--image",
                                             str(film)])
    either_finite_or_refused(done.output, done.exit_code)


def test_an_export_whose_network_changed_is_refused(exported, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    with open(folder / "model.onnx", "ab") as handle:
        handle.write(b"\0")  # a re-export that wrote the network but not its JSON
    done = CliRunner().invoke(anomaly_main, ["score", "--model", str(folder), "--dir",
                                             str(ROOT / "examples/data/test")])
    assert done.exit_code == 1 and "SHA-256" in done.output


def test_unreadable_files_in_val_and_data_are_skipped(default_run, labelled_dir, val_dir,
                                                      tmp_path):
    data, val = tmp_path / "data", tmp_path / "val"
    shutil.copytree(labelled_dir, data)
    shutil.copytree(val_dir, val)
    (val / "NORMAL" / "loop.png").symlink_to("loop.png")
    (data / "NORMAL" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    done = CliRunner().invoke(anomaly_main, ["evaluate", "--model", str(default_run),
                                             "--data", str(data), "--val", str(val), "--out",
                                             str(tmp_path / "report"), "--no-progress"])
    assert done.exit_code == 0, done.output
    assert "skipped" in done.output and "loop.png" in done.output and "gone.png" in done.output
    assert (tmp_path / "report" / "report.json").is_file()


def test_a_full_disk_is_one_line(default_run, tmp_path, monkeypatch):
    import errno

    from anomaly import atomic

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", full)
    monkeypatch.setattr("anomaly.export.tempfile.mkstemp", full)
    commands = [["export", "--model", str(default_run), "--out", str(tmp_path / "x")],
                ["score", "--model", str(default_run), "--dir", str(ROOT / "examples/data/test"),
                 "--out", str(tmp_path / "s.csv"), "--no-progress"],
                ["train-gan", "--data", str(ROOT / "examples/data/train"), "--out",
                 str(tmp_path / "run"), "--image-size", "32", "--critic-epochs", "1",
                 "--epochs", "0", "--no-progress"],
                ["evaluate", "--model", str(default_run), "--data",
                 str(ROOT / "examples/data/test"), "--out", str(tmp_path / "r"),
                 "--no-progress"]]
    for command in commands:
        done = CliRunner().invoke(anomaly_main, command)
        assert done.exit_code == 1, done.output
        assert "No space left on device" in done.output and "Traceback" not in done.output


@pytest.mark.parametrize("alpha", [None, "0.2"])
def test_nan_in_the_held_out_normals_scores_is_refused_with_or_without_alpha(
        default_run, tmp_path, alpha):
    """A NaN among the stored normal scores would inflate every p-value (all NaN: every
    film p = 1, labelled normal)."""
    path = tampered_checkpoint(default_run, tmp_path, lambda state: CHECKPOINT_FIELDS[
        "score_stats.components"](state, float("nan")))
    film = sorted((ROOT / "examples/data/test/NORMAL").glob("*.jpeg"))[0]
    done = CliRunner().invoke(anomaly_main, ["score", "--model", str(path), "--image",
                                             str(film), "--no-progress",
                                             *(["--alpha", alpha] if alpha else [])])
    assert done.exit_code == 1 and "held-out normals' scores" in done.output
    assert "NaN" in done.output
    assert "\tnormal" not in done.output


def test_a_row_cut_inside_its_last_field_is_rescored(trained_run, normal_dir, tmp_path):
    scorer, paths, out, whole, data = scored_csv(trained_run, normal_dir, tmp_path, 4)
    for cut in (3, 1):  # inside the last field; between "\r" and "\n"
        out.write_bytes(data[:-cut])
        score_files(scorer, paths, out, progress=False, resume=True)
        again = rows_of(out)  # the last film scored again, alone: its digits may differ
        assert [r[0] for r in again] == [r[0] for r in whole]
        np.testing.assert_allclose(np.array([r[1:] for r in again[1:]], dtype=float),
                                   np.array([r[1:] for r in whole[1:]], dtype=float),
                                   rtol=1e-4, atol=1e-5)
        assert out.read_bytes().endswith(b"\r\n")


def test_resumed_regions_keep_one_whole_record_per_scored_film(default_run, tmp_path):
    films = sorted((ROOT / "examples/data/test").rglob("*.jpeg"))[:4]
    scorer = Scorer.from_checkpoint(default_run, device="cpu")
    out = tmp_path / "scores.csv"
    score_files(scorer, films, out, progress=False, regions=True)
    regions = Path(str(out) + ".regions.jsonl")
    whole_csv, lines = out.read_bytes(), regions.read_text().splitlines(keepends=True)
    # killed after the last film's boxes, before its row; then a cut record after it
    out.write_bytes(whole_csv[: whole_csv.rindex(b"\n", 0, len(whole_csv) - 1) + 1])
    regions.write_text("".join(lines) + lines[-1][:10])
    score_files(scorer, films, out, progress=False, regions=True, resume=True)
    rows = rows_of(out)[1:]  # the last film scored again, alone (its digits may differ)
    records = [json.loads(line) for line in regions.read_text().splitlines()]
    assert [r[0] for r in rows] == [r["path"] for r in records] == [str(f) for f in films]
    assert regions.read_text().startswith("".join(lines[:-1]))


def test_an_export_json_that_is_not_an_object_or_whose_density_misfits_is_refused(
        exported, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    info = json.loads((folder / "export.json").read_text())
    film = sorted((ROOT / "examples/data/test/NORMAL").glob("*.jpeg"))[0]
    narrow = {**info, "density": {"mean": info["density"]["mean"][:3],
                                  "precision": np.eye(3).tolist()}}
    for content, needle in ((json.dumps([info]), "not an exported"),
                            (json.dumps(narrow), "density.mean has 3 values")):
        (folder / "export.json").write_text(content)
        done = CliRunner().invoke(anomaly_main, ["score", "--model", str(folder), "--image",
                                                 str(film)])
        assert done.exit_code == 1 and needle in done.output, done.output
        assert "Traceback" not in done.output
