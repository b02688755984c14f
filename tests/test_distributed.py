"""train-gan under torchrun: 2 CPU processes with Gloo."""

from __future__ import annotations

import os
import subprocess
import sys

from anomaly.checkpoint import load_checkpoint


def test_two_process_training_writes_one_checkpoint_with_identical_replicas(tmp_path, normal_dir):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", "29533", "-m", "cli.anomaly_cli", "train-gan",
               "--data", str(normal_dir), "--out", str(run), "--image-size", "32",
               "--epochs", "2", "--batch-size", "4", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "weights identical on all 2 ranks" in done.stdout
    assert done.stdout.count("epoch 2/2") == 1  # only rank 0 logs
    checkpoints = list(run.rglob("*.pt"))
    assert checkpoints == [run / "checkpoints" / "last.pt"]
    assert load_checkpoint(run)["epoch"] == 2
