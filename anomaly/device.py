"""Pick the compute device and the matching mixed-precision settings."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a device.

    Raises:
        ValueError: not a device name, or CUDA (or that GPU) was asked for but is not
            available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device (auto, cpu, cuda or "
                         "cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name} was asked for, but this machine has "
                         f"{torch.cuda.device_count()} CUDA GPU(s)")
    return device


def cpu_bf16_supported() -> bool:
    """True when this CPU runs bfloat16 convolutions natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, enabled: bool = True):
    """Mixed-precision context when enabled: float16 on CUDA, bfloat16 on CPU, else a no-op.

    Callers enable it on CPU only where :func:`cpu_bf16_supported` (elsewhere bfloat16
    is emulated and slower than float32).
    """
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if enabled and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, enabled: bool = True) -> torch.amp.GradScaler:
    """The gradient scaler that goes with :func:`autocast`: active where it computes in
    float16 (CUDA), whose small gradients would otherwise underflow; a pass-through
    elsewhere (bfloat16 keeps float32's range)."""
    return torch.amp.GradScaler("cuda", enabled=enabled and device.type == "cuda")
