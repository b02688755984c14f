"""train-gan and classify fit under torchrun: 2 CPU processes with Gloo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch

from anomaly.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(__file__))


def torchrun(port: int, *args: str) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` in 2 CPU processes (Gloo), one thread each."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(port), "-m", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                          cwd=ROOT)


def free_port() -> int:
    """A TCP port nobody listens on now, for torchrun's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_training_writes_one_checkpoint_with_identical_replicas(
        tmp_path, normal_dir):
    run = tmp_path / "ddp"
    done = torchrun(free_port(), "cli.anomaly_cli", "train-gan",
                    "--data", str(normal_dir), "--out", str(run), "--image-size", "32",
                    "--critic-epochs", "0", "--epochs", "2", "--encoder-epochs", "0",
                    "--batch-size", "4", "--no-progress", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "weights identical on all 2 ranks" in done.stdout
    assert done.stdout.count("DCGAN epoch 2/2") == 1  # only rank 0 logs
    assert done.stdout.count("checkpoint:") == 1
    checkpoints = list(run.rglob("*.pt"))
    assert checkpoints == [run / "checkpoints" / "last.pt"]
    assert load_checkpoint(run)["epoch"] == 2


def test_two_process_classifier_fit_with_fine_tuning(tmp_path, labelled_dir, val_dir):
    import torchvision

    torch.manual_seed(0)
    base = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), base)
    run = tmp_path / "classify_ddp"
    done = torchrun(free_port(), "cli.classify_cli", "fit", "--data", str(labelled_dir),
                    "--val", str(val_dir), "--out", str(run), "--backbone", "resnet18",
                    "--weights", str(base), "--epochs", "1", "--fine-tune-epochs", "1",
                    "--image-size", "32", "--batch-size", "4", "--no-progress",
                    "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "weights identical on all 2 ranks" in done.stdout  # after both stages
    assert done.stdout.count("epoch 2 (stage 2)") == 1  # only rank 0 logs
    assert done.stdout.count("checkpoint:") == 1
    assert sorted(p.name for p in run.rglob("*.pt")) == ["best.pt", "last.pt"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # TensorBoard from rank 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["stage"] == 2
    original = torch.load(base, weights_only=True)
    assert not torch.equal(state["state_dict"]["net.layer4.1.conv2.weight"],
                           original["layer4.1.conv2.weight"])  # stage 2 trained layer4
    assert torch.equal(state["state_dict"]["net.layer3.1.conv2.weight"],
                       original["layer3.1.conv2.weight"])  # still frozen
