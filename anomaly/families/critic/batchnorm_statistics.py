"""Which films set the critic's BatchNorm statistics while it trains.

By default (``batch``) every BatchNorm layer normalises a training batch with the
statistics of the whole batch, half of whose films hold synthetic opacities, and keeps
their running average for scoring. With ``clean`` the statistics come from the batch's
films without opacities alone and normalise every film, so the network trains as it
scores: a film is measured against normal films' statistics. With ``split`` the clean
films are normalised by their own statistics and the films with opacities by theirs (as
AdvProp treats its adversarial examples, with shared weights); the running statistics
come from the clean films alone. Training logic only: the network and its checkpoint
are the same whichever is used.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from anomaly.families.critic.config import BATCHNORM_STATISTICS


def _scale_and_shift(norm: nn.BatchNorm2d, x: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel scale and shift (1, C, 1, 1) that normalise (B, C, H, W) features by
    their own statistics and apply ``norm``'s affine weights; and the batch mean and
    biased variance (C,)."""
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    scale = norm.weight * torch.rsqrt(var + norm.eps)
    shift = norm.bias - mean * scale
    return scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1), mean, var


def reference_batchnorm(norm: nn.BatchNorm2d, x: torch.Tensor, reference: torch.Tensor,
                        split: bool) -> torch.Tensor:
    """``norm`` applied in training mode to (B, C, H, W) features ``x`` with the batch
    statistics of the films where ``reference`` (B,) is True, its running statistics
    updated with them; with ``split`` the other films are normalised by their own."""
    values = x.float()
    clean = values[reference]
    scale, shift, mean, var = _scale_and_shift(norm, clean)
    with torch.no_grad():
        count = clean.numel() // clean.shape[1]
        norm.num_batches_tracked += 1
        weight = norm.momentum if norm.momentum is not None \
            else 1 / int(norm.num_batches_tracked)  # None: a cumulative mean, as BatchNorm's
        norm.running_mean.lerp_(mean, weight)
        norm.running_var.lerp_(var * count / max(count - 1, 1), weight)
    if split and not bool(reference.all()):
        other_scale, other_shift, _, _ = _scale_and_shift(norm, values[~reference])
        chosen = reference.view(-1, 1, 1, 1)
        scale = torch.where(chosen, scale, other_scale)  # (B, C, 1, 1)
        shift = torch.where(chosen, shift, other_shift)
    return torch.addcmul(shift, values, scale).to(x.dtype)


@contextmanager
def statistics_from(module: nn.Module, reference: torch.Tensor, mode: str
                    ) -> Iterator[None]:
    """While active, the BatchNorm layers inside ``module`` take their training-mode
    statistics as ``mode`` (one of :data:`BATCHNORM_STATISTICS`) says, ``reference``
    (B,) marking the batch's clean films. ``batch``, or a batch with fewer than two
    clean films, changes nothing. Evaluation mode is never changed."""
    if mode not in BATCHNORM_STATISTICS:
        raise ValueError(f"batchnorm statistics must be one of "
                         f"{', '.join(BATCHNORM_STATISTICS)}, not {mode!r}")
    if mode == "batch" or int(reference.sum()) < 2:  # the default: no work per step
        yield
        return

    def forward_of(norm: nn.BatchNorm2d):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if not norm.training:
                return type(norm).forward(norm, x)  # the layer's own
            return reference_batchnorm(norm, x, reference, split=mode == "split")
        return forward

    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.forward = forward_of(norm)
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward
