"""The benchmark scripts run end to end on a tiny GAN and print their tables (no timings checked)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: object) -> str:
    """Run bench/<name> in a fresh interpreter; return its stdout, failing on a non-zero exit."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(REPO / "bench" / name), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 1-epoch 32x32 GAN (widths 8, latent 16) with a 1-epoch encoder, on 16 images."""
    from anomaly.train import TrainConfig, train_run
    from tests.conftest import TINY_CONFIG, write_images

    root = tmp_path_factory.mktemp("bench")
    write_images(root / "images", 16, seed=5)
    config = TrainConfig(**{**TINY_CONFIG, "epochs": 1, "encoder_epochs": 1})
    train_run(config, root / "images", root / "run", progress=False, log=lambda *a: None)
    return root / "run", root / "images"


def test_bench_score(tiny_run, tmp_path):
    run, images = tiny_run
    out = run_script("bench_score.py", "--model", run, "--data", images, "--images", 4,
                     "--iterations", 3, "--reference-images", 1, "--repeats", 1,
                     "--batch-size", 4, "--threads", 1, "--matmul-size", 256, "--profile",
                     "--profile-iterations", 1, "--json", tmp_path / "score.json")
    assert "## Machine" in out and "torch_threads: 1" in out
    assert "| forward pass | MFLOP/image |" in out
    assert "GFLOP/s" in out
    assert ("| method | iterations | images | seconds/image | images/second | "
            "speed-up vs reference |") in out
    for method in ("reference", "discriminator", "search", "encoder", "encoder-search"):
        assert f"\n| {method} |" in out
    assert "Profile: mode encoder" in out and "Profile: mode search" in out
    figures = json.loads((tmp_path / "score.json").read_text())
    assert [r["method"] for r in figures["results"]] == [
        "reference", "discriminator", "search", "encoder", "encoder-search"]
    assert figures["reference_vs_search_max_abs_diff"] < 1e-4  # same computation, batched


def test_bench_train(tiny_run, tmp_path):
    _, images = tiny_run
    out = run_script("bench_train.py", "--data", images, "--image-size", 32, "--batch-size", 8,
                     "--width", 8, "--latent-dim", 16, "--steps", 2, "--warmup", 1,
                     "--repeats", 1, "--threads", 1, "--json", tmp_path / "train.json")
    assert "| data path | images/second | seconds/step | ratio vs reference |" in out
    assert "reference: PIL decode" in out and "toolkit: load_images once" in out
    figures = json.loads((tmp_path / "train.json").read_text())
    assert figures["batch_size"] == 8 and figures["loaded_images"] == 16


def test_bench_memory(tiny_run, tmp_path):
    run, images = tiny_run
    out = run_script("bench_memory.py", "--model", run, "--data", images, "--counts", "5,20",
                     "--mode", "encoder", "--threads", 1, "--json", tmp_path / "memory.json")
    assert "| images | CSV rows | seconds | images/second |" in out
    assert "peak RSS VmHWM (MiB)" in out
    figures = json.loads((tmp_path / "memory.json").read_text())
    assert [(r["count"], r["csv_rows"], r["images"]) for r in figures["results"]] == [
        (5, 5, 5), (20, 20, 20)]


def test_score_variants_example_prints_a_row_per_variant(trained_run, labelled_dir, capsys):
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import score_variants
    finally:
        sys.path.pop(0)
    score_variants.main(["--model", str(trained_run), "--data", str(labelled_dir)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"| variant | {labelled_dir.name} |"
    rows = {line.split(" | ")[0].lstrip("| "): float(line.split(" | ")[1].rstrip(" |"))
            for line in lines[2:]}
    assert len(rows) == 15 and all(0 <= v <= 1 for v in rows.values())
    # the bright blobs of the synthetic "pneumonia" images are what the opacity score sees
    assert rows["max(blur2(x - G(z)), 0), geometric lungs"] > 0.5


def test_bench_critic(tmp_path, normal_dir, default_run, exported):
    out = run_script("bench_critic.py", "--model", default_run, "--data", normal_dir,
                     "--images", 10, "--batch-size", 4, "--repeats", 1, "--threads", 1,
                     "--exported", exported, "--json", tmp_path / "critic.json")
    assert "mode critic, score density" in out and "files to scores" in out
    figures = json.loads((tmp_path / "critic.json").read_text())
    assert [r["images"] for r in figures["results"]] == [10] * 5
    assert "files to scores and heat maps" in figures["results"][1]["what"]
    assert "onnxruntime (its one graph computes the heat maps" in figures["results"][-1]["what"]
    assert all(r["images_per_second"] > 0 for r in figures["results"])
    assert len(figures["run_seconds"]["exported"]) == 1


def test_bench_map_stage(tmp_path, normal_dir, default_run):
    out = run_script("bench_map_stage.py", "--model", default_run, "--data", normal_dir,
                     "--images", 8, "--repeats", 1, "--threads", 1,
                     "--json", tmp_path / "map_stage.json")
    assert "critic map stage" in out and "channels-last" in out
    figures = json.loads((tmp_path / "map_stage.json").read_text())
    for layout in ("NCHW (default)", "channels-last"):  # each part of a step measured
        parts = figures[layout]
        assert {"step_s", "batch_s", "critic_forward_s", "head_update_s"} <= set(parts)
        assert all(math.isfinite(v) and v > 0 for v in parts.values())


def test_bench_map_stage_refuses_a_critic_without_map_head(tiny_run):
    run, images = tiny_run  # a DCGAN-only run: no critic part at all
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_map_stage.py"),
                           "--model", str(run), "--data", str(images)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode != 0 and "no critic map head" in done.stderr


def test_bench_start(tiny_run, tmp_path):
    run, images = tiny_run
    out = run_script("bench_start.py", "--model", run, "--image", next(images.glob("*.png")),
                     "--repeats", 1, "--json", tmp_path / "start.json")
    figures = json.loads((tmp_path / "start.json").read_text())
    assert figures["anomaly --help"]["exit_code"] == 0
    assert figures["score one image (default mode)"]["exit_code"] == 0
    assert figures["a usage error (score without --image/--dir)"]["exit_code"] == 2
    assert "score one image" in out


def test_bench_serve(tmp_path, normal_dir):
    from anomaly.train import TrainConfig, train_run
    from tests.conftest import TINY_DEFAULT

    run = tmp_path / "run"
    config = TrainConfig(**{**TINY_DEFAULT, "epochs": 0, "encoder_epochs": 0})
    train_run(config, normal_dir, run, progress=False, log=lambda *a: None)
    out = run_script("bench_serve.py", "--model", run, "--repeats", 2, "--clients", 2)
    assert "one film, request to answer" in out and out.count(" ms |") == 2
