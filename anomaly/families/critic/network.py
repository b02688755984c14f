"""The opacity critic: a small VGG-style CNN that says whether a film holds an opacity,
and (with its map head) where.

Pure ``nn.Module``s: explicit constructor arguments, one output type in train and eval
mode, no losses or optimisers. The map head is a U-Net-style decoder on the critic's
blocks (as DRAEM's discriminative network is on its encoder): it reads the last block's
features, upsamples them twice with the skips of the blocks before, and draws one opacity
logit per pixel.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
        map_width: channels of the map head's finest level (0: no map head, as in runs
            made before it existed).
        map_levels: the blocks the map head reads: 3 (blocks 2-4, logits at half the
            side) or 2 (blocks 3-4, logits at a quarter of the side: about half the
            head's work).
    """

    image_size: int = 128
    channels: int = 1
    width: int = 32
    blocks: int = 4
    map_width: int = 0
    map_levels: int = 3

    def __post_init__(self) -> None:
        if self.map_levels not in (2, 3):
            raise ValueError(f"map_levels must be 2 or 3, not {self.map_levels!r}")
        if self.blocks < 1 or self.image_size % (2 ** self.blocks):
            raise ValueError(f"image_size {self.image_size} must be a multiple of "
                             f"2 ** blocks = {2 ** self.blocks}")
        if self.map_width < 0 or (self.map_width and self.blocks < 3):
            raise ValueError(f"map_width {self.map_width} needs >= 0 and, when set, "
                             "at least 3 blocks")

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


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """One 3x3 convolution with BatchNorm and ReLU; the side is kept."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class OpacityMapHead(nn.Module):
    """Per-pixel opacity logits from the critic's block features.

    Reads the last three blocks' features (before their pools; sides S/8, S/4, S/2 at 4
    blocks): the deepest is reduced to ``2 * map_width`` channels, upsampled, joined to
    the block before it and convolved, then once more with the block before that; a 1x1
    convolution gives one logit per pixel at half the input side, bilinearly enlarged to
    the input's side. With ``levels`` 2 it stops after the first join (logits at a
    quarter of the side). Output (B, 1, S, S).
    """

    def __init__(self, block_widths: list[int], map_width: int, levels: int = 3):
        super().__init__()
        deep, middle, shallow = block_widths[-1], block_widths[-2], block_widths[-3]
        self.reduce = conv_bn_relu(deep, 2 * map_width)
        self.up_middle = conv_bn_relu(2 * map_width + middle, 2 * map_width)
        self.up_shallow = conv_bn_relu(2 * map_width + shallow, map_width) \
            if levels == 3 else None
        self.logit = nn.Conv2d(map_width if levels == 3 else 2 * map_width, 1, 1)

    def forward(self, features: list[torch.Tensor], size: int) -> torch.Tensor:
        """Logits (B, 1, size, size) from the blocks' features (shallow to deep)."""
        x = self.reduce(features[-1])
        stages = [(features[-2], self.up_middle)]
        if self.up_shallow is not None:
            stages.append((features[-3], self.up_shallow))
        for skip, conv in stages:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = conv(torch.cat([x, skip], dim=1))
        x = self.logit(x)
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


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
        self.map_head = None
        if arch.map_width:  # drawn from its own random state: the rest start as without it
            with torch.random.fork_rng(devices=[]):
                self.map_head = OpacityMapHead(widths, arch.map_width, arch.map_levels)

    def block_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's features before its pool, shallow to deep; the last is
        :meth:`feature_map`."""
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x if index == 0 else self.pool(x))  # side halves each block
            features.append(x)
        return features

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's features before its pool, (B, feature_dim, S', S') with
        S' = S / 2 ** (blocks - 1)."""
        for block in self.blocks[:-1]:
            x = self.pool(block(x))  # side halves each block
        return self.blocks[-1](x)

    def opacity_logits(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Per-pixel opacity logits (B, 1, S, S) from :meth:`block_features`."""
        if self.map_head is None:
            raise ValueError("this critic has no map head (map_width 0)")
        return self.map_head(features, self.arch.image_size)

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

    def forward(self, x: torch.Tensor, with_map: bool = False, detach_map: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Opacity logits (B,); with ``with_map``, also the per-pixel logits (B, 1, S, S)
        of the map head (None without one), computed from the blocks' features cut from
        the graph with ``detach_map`` (its gradients then reach the head alone)."""
        if not with_map:
            return self.logits(self.pooled(self.feature_map(x)))
        features = self.block_features(x)
        logits = self.logits(self.pooled(features[-1]))
        if self.map_head is None:
            return logits, None
        return logits, self.opacity_logits([f.detach() for f in features] if detach_map
                                            else features)


def fold_batchnorm(critic: OpacityCritic) -> OpacityCritic:
    """A copy of a critic for inference, each BatchNorm folded into the convolution
    before it (the same function in eval mode up to float rounding, about a quarter
    faster on CPU); the copy has no BatchNorm left to train."""
    folded = copy.deepcopy(critic).eval()
    for sequence in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        for index in range(len(sequence) - 1):  # each conv followed by its BatchNorm
            conv, norm = sequence[index], sequence[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                sequence[index] = fuse_conv_bn_eval(conv, norm)
                sequence[index + 1] = nn.Identity()
    return folded
