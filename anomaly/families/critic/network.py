"""The opacity critic: a small VGG-style CNN that says whether a film holds an opacity.

A pure ``nn.Module``: explicit constructor arguments, one output type in train and eval
mode, no losses or optimisers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


@dataclass
class CriticArchitecture:
    """Constructor arguments of :class:`OpacityCritic`.

    Attributes:
        image_size: side of the square input images (a multiple of ``2 ** blocks``).
        channels: image channels (1 for X-rays).
        width: channels of the first block; each further block doubles them.
        blocks: conv blocks, each halving the side (4: 128 px -> 8 px).
    """

    image_size: int = 128
    channels: int = 1
    width: int = 32
    blocks: int = 4

    def __post_init__(self) -> None:
        if self.blocks < 1 or self.image_size % (2 ** self.blocks):
            raise ValueError(f"image_size {self.image_size} must be a multiple of "
                             f"2 ** blocks = {2 ** self.blocks}")

    @property
    def feature_dim(self) -> int:
        """Channels of the last block, the size of the embedding."""
        return self.width * 2 ** (self.blocks - 1)

    @property
    def map_size(self) -> int:
        """Side of :meth:`OpacityCritic.feature_map` (16 at 128 px with 4 blocks)."""
        return self.image_size // 2 ** (self.blocks - 1)


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions, each with BatchNorm and ReLU; the side is kept."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class OpacityCritic(nn.Module):
    """Maps images (B, C, S, S) in [-1, 1] to one opacity logit each, shape (B,).

    Every block is followed by a 2x2 max-pool; :meth:`feature_map` is the last block's
    output before its pool (the finest map the embedding is made of), :meth:`embedding`
    the pooled, globally averaged features the density is fitted on.

    Example:
        >>> critic = OpacityCritic(CriticArchitecture(image_size=64))
        >>> critic(torch.zeros(2, 1, 64, 64)).shape
        torch.Size([2])
    """

    def __init__(self, arch: CriticArchitecture):
        super().__init__()
        self.arch = arch
        widths = [arch.width * 2 ** i for i in range(arch.blocks)]
        self.blocks = nn.ModuleList(
            conv_block(cin, cout) for cin, cout in zip([arch.channels, *widths], widths))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(arch.feature_dim, 1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's features before its pool, (B, feature_dim, S', S') with
        S' = S / 2 ** (blocks - 1)."""
        for block in self.blocks[:-1]:
            x = self.pool(block(x))  # side halves each block
        return self.blocks[-1](x)

    def pooled(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Max-pool then global average of :meth:`feature_map`, (B, feature_dim)."""
        return self.pool(feature_map).mean(dim=(2, 3))

    def cell_logits(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The logit's share of each pooled cell, (B, S'/2, S'/2): the head applied cell by
        cell, whose mean over the cells is the logit itself."""
        cells = self.pool(feature_map)  # (B, C, S'/2, S'/2)
        return torch.einsum("bchw,c->bhw", cells, self.head.weight[0]) + self.head.bias

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Opacity logits (B,) from :meth:`pooled` features."""
        return self.head(pooled).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Opacity logits, shape (B,)."""
        return self.logits(self.pooled(self.feature_map(x)))


def fold_batchnorm(critic: OpacityCritic) -> OpacityCritic:
    """A copy of a critic for inference, each BatchNorm folded into the convolution
    before it (the same function in eval mode up to float rounding, about a quarter
    faster on CPU); the copy has no BatchNorm left to train."""
    folded = copy.deepcopy(critic).eval()
    for block in folded.blocks:
        for conv_index in (0, 3):  # conv, BatchNorm, ReLU, conv, BatchNorm, ReLU
            block[conv_index] = fuse_conv_bn_eval(block[conv_index], block[conv_index + 1])
            block[conv_index + 1] = nn.Identity()
    return folded
