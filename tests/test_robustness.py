"""Crash safety and hostile input: killed jobs, sharded scoring, fuzzed files."""

from __future__ import annotations

import csv
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomaly.checkpoint import load_checkpoint
from anomaly.data import find_images, load_images
from anomaly.io import ImageReadError, read_image
from anomaly.preprocess import PreprocessConfig
from anomaly.score import Scorer
from anomaly.score_files import score_files
from tests.test_distributed import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def hostile_folder(folder, good_images) -> list[str]:
    """A folder of good images plus every kind of bad file; returns the bad names."""
    folder.mkdir()
    for p in good_images:
        (folder / p.name).write_bytes(p.read_bytes())
    good = good_images[0].read_bytes()
    jpeg = cv2.imencode(".jpg", cv2.imread(str(good_images[0])))[1].tobytes()
    bad = {
        "random.png": np.random.default_rng(0).bytes(2000),
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "truncated.png": good[: len(good) // 2],
        "truncated.dcm": b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI",
        "zero.png": b"",
        "bomb.png": png_header_only(20000, 20000),
    }
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    cv2.imwrite(str(folder / "one_pixel.png"), np.zeros((1, 1), np.uint8))
    (folder / "dir_like_image.png").mkdir()
    undecodable = os.fsencode(str(folder)) + b"/caf\xe9_bad.png"
    with open(undecodable, "wb") as handle:
        handle.write(b"not an image")
    return sorted([*bad, "one_pixel.png", "dir_like_image.png", "caf\udce9_bad.png"])


def test_hostile_files_are_reported_and_skipped(trained_run, normal_dir, tmp_path):
    good = find_images(normal_dir)[:3]
    bad_names = hostile_folder(tmp_path / "hostile", good)
    scorer = Scorer.from_checkpoint(trained_run, mode="encoder")
    paths = find_images(tmp_path / "hostile") + [tmp_path / "hostile" / "dir_like_image.png"]
    result = score_files(scorer, paths, tmp_path / "out.csv", progress=False)
    assert sorted(p.name for p in result.paths) == sorted(p.name for p in good)
    assert sorted(p.name for p, _ in result.failures) == bad_names
    reasons = dict((p.name, r) for p, r in result.failures)
    assert "limit" in reasons["bomb.png"] and "directory" in reasons["dir_like_image.png"]


def test_non_utf8_name_in_error_message(tmp_path):
    path = os.fsencode(str(tmp_path)) + b"/\xff\xfe.png"
    with open(path, "wb") as handle:
        handle.write(b"junk")
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    str(info.value).encode("utf-8")  # printable


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=4096), st.sampled_from([".png", ".jpg", ".tif", ".bmp", ".dcm"]))
def test_fuzz_loader_never_crashes(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        image = read_image(path)
    except ImageReadError as err:
        assert "\n" not in str(err)
    else:
        assert image.ndim == 2 and np.isfinite(image).all()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 3000), st.binary(min_size=1, max_size=64))
def test_fuzz_mutated_png(tmp_path, normal_dir, offset, patch):
    original = find_images(normal_dir)[0].read_bytes()
    offset = offset % len(original)
    mutated = original[:offset] + patch + original[offset + len(patch):]
    path = tmp_path / "mutated.png"
    path.write_bytes(mutated)
    try:  # either a clean image or our one-line error naming the file, nothing else
        image = read_image(path)
    except ImageReadError as err:
        assert str(err).startswith(str(path)) and "\n" not in str(err)
        expected_paths, expected_failures = 0, 1
    else:
        assert image.ndim == 2 and image.dtype == np.float32 and np.isfinite(image).all()
        assert 0.0 <= image.min() and image.max() <= 1.0
        expected_paths, expected_failures = 1, 0
    loaded = load_images([path], PreprocessConfig(image_size=32))
    assert (len(loaded.paths), len(loaded.failures)) == (expected_paths, expected_failures)


def run_cli(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "cli.anomaly_cli", *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_sigkill_mid_training_then_resume_finishes(tmp_path, normal_dir):
    run = tmp_path / "run"
    args = ["train-gan", "--data", normal_dir, "--out", run, "--image-size", 32, "--epochs", 100000,
            "--critic-epochs", 0, "--encoder-epochs", 0, "--batch-size", 4, "--no-progress",
            "--seed", 3]
    process = run_cli(args)
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 600  # a loaded machine is slow; 100000 epochs never finish
    while time.time() < deadline and not (last.exists() and load_checkpoint(last)["epoch"] >= 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    epoch = load_checkpoint(last)["epoch"]  # loadable after the kill
    assert 2 <= epoch < 100000
    args[args.index(100000)] = epoch + 1
    finish = run_cli([*args, "--resume"])
    out, err = finish.communicate(timeout=120)
    assert finish.returncode == 0, err.decode()[-2000:]
    assert "resuming from" in out.decode() and load_checkpoint(last)["epoch"] == epoch + 1


def test_killed_scoring_keeps_rows_and_resume_completes(trained_run, normal_dir, tmp_path):
    out = tmp_path / "scores.csv"
    # one image a batch, 1000 steps each: seconds of work, so a fast machine does not
    # finish before the kill
    args = ["score", "--model", trained_run, "--dir", normal_dir, "--out", out, "--mode", "search",
            "--iterations", 1000, "--batch-size", 1, "--no-progress"]
    process = run_cli(args)
    deadline = time.time() + 600
    while time.time() < deadline:
        if out.exists() and len(out.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = list(csv.DictReader(open(out)))
    assert 2 <= len(kept) < 24
    other = run_cli([*args, "--resume", "--iterations", 1])  # other settings: refused
    _, stderr = other.communicate(timeout=120)
    assert other.returncode != 0
    errors = [line for line in stderr.decode().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "iterations 1000 there, 1 now" in errors[0]
    assert len(list(csv.DictReader(open(out)))) == len(kept)  # nothing appended
    finish = run_cli([*args, "--resume"])
    finish.communicate(timeout=900)
    rows = [r["path"] for r in csv.DictReader(open(out))]
    assert len(rows) == len(set(rows)) == 24
    assert [r["path"] for r in kept] == rows[: len(kept)]  # the rows first written are kept


def test_sharded_scoring_under_torchrun(trained_run, normal_dir, tmp_path):
    out = tmp_path / "scores.csv"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(free_port()), "-m", "cli.anomaly_cli", "score", "--model",
               str(trained_run), "--dir", str(normal_dir), "--out", str(out), "--mode", "encoder",
               "--no-progress", "--device", "cpu"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r["path"] for r in csv.DictReader(open(out))]
    assert len(rows) == len(set(rows)) == 24
    assert not list(tmp_path.glob("scores.csv.rank*"))


def test_sharded_resume_with_fewer_processes_and_same_names(trained_run, normal_dir, tmp_path):
    """A 3-process job was killed, leaving shards; 2 processes resume it. Two folders
    hold files of the same names, so heatmap names must be unique across ranks."""
    images = tmp_path / "images"
    for sub in ("a", "b"):
        (images / sub).mkdir(parents=True)
        for path in find_images(normal_dir)[:5]:
            (images / sub / path.name).write_bytes(path.read_bytes())
    paths = find_images(images)
    out = tmp_path / "scores.csv"
    scorer = Scorer.from_checkpoint(trained_run, mode="encoder", device="cpu")
    decision = scorer.decision()  # as anomaly score decides: label and p-value columns
    score_files(scorer, paths[:2], out, progress=False, decision=decision)  # merged rows
    for rank, part in enumerate([paths[2:4], paths[4:5], paths[1:2]]):  # a duplicate too
        score_files(scorer, part, out.with_name(f"scores.csv.rank{rank}"), progress=False,
                    record_settings=False, decision=decision)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(free_port()), "-m", "cli.anomaly_cli", "score", "--model",
               str(trained_run), "--dir", str(images), "--out", str(out), "--mode", "encoder",
               "--heatmaps", str(tmp_path / "heat"), "--resume", "--no-progress",
               "--device", "cpu"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r["path"] for r in csv.DictReader(open(out))]
    assert sorted(rows) == sorted(map(str, paths))  # each once: nothing lost or repeated
    assert not list(tmp_path.glob("scores.csv.rank*"))
    assert len(list((tmp_path / "heat").iterdir())) == len(paths) - 5  # 5 scored before


def test_atomic_writes_leave_the_old_file_on_failure_and_ignore_planted_symlinks(tmp_path):
    """A write that fails midway keeps the old file whole and leaves no temporary behind;
    a symlink planted under the old predictable temporary name is not followed."""
    from anomaly.atomic import atomic_file, write_text_atomically

    target = tmp_path / "report.json"
    write_text_atomically(target, "old")
    with pytest.raises(RuntimeError), atomic_file(target, "w") as handle:
        handle.write("half of a new")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / ".report.json.tmp").symlink_to(victim)
    write_text_atomically(target, "new")
    assert target.read_text() == "new" and victim.read_text() == "keep me"
    assert not target.is_symlink()
