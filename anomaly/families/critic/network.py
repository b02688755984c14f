"""The opacity critic: a small VGG-style CNN that says whether a film holds an opacity,
and (with its map head) where.

Pure ``nn.Module``s: explicit constructor arguments, one output type in train and eval
mode, no losses or optimisers. The map head is a U-Net-style decoder on the critic's
blocks (as DRAEM's discriminative network is on its encoder): it reads the last block's
features, upsamples them twice with the skips of the blocks before, and draws one opacity
logit per pixel (with four levels, a third time with the first block's, at the film's
own side). It may read the deepest blocks through its own copies of them
(``map_own_blocks``), fine-tuned for the map while the critic's stay as they were.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from anomaly.families.critic.config import MAP_LEVELS


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
            side), 2 (blocks 3-4, logits at a quarter of the side: about half the
            head's work) or 4 (blocks 1-4, logits at the input's own side).
        map_own_blocks: how many of the deepest blocks the map head reads through its own
            copies of them (fed by the critic's block before them) instead of the
            critic's: 0 (none) to ``blocks - 1``. Each costs that block's work again.
        instance_norm_blocks: how many of the first blocks normalise each film's
            features by their own statistics (InstanceNorm, as IBN-Net's shallow layers,
            for contrast that differs between hospitals) instead of BatchNorm: 0 (none,
            the default) to ``blocks - map_own_blocks``.
    """

    image_size: int = 128
    channels: int = 1
    width: int = 32
    blocks: int = 4
    map_width: int = 0
    map_levels: int = 3
    map_own_blocks: int = 0
    instance_norm_blocks: int = 0

    def __post_init__(self) -> None:
        if self.map_levels not in MAP_LEVELS:
            raise ValueError(f"map_levels must be one of {MAP_LEVELS}, not {self.map_levels!r}")
        if self.blocks < 1 or self.image_size % (2 ** self.blocks):
            raise ValueError(f"image_size {self.image_size} must be a multiple of "
                             f"2 ** blocks = {2 ** self.blocks}")
        if self.map_width < 0 or (self.map_width and self.blocks < self.map_levels):
            raise ValueError(f"map_width {self.map_width} needs >= 0 and, when set, "
                             f"at least map_levels = {self.map_levels} blocks")
        if not 0 <= self.map_own_blocks < self.blocks or (self.map_own_blocks
                                                          and not self.map_width):
            raise ValueError(f"map_own_blocks must be in [0, {self.blocks - 1}] and needs "
                             f"a map head, not {self.map_own_blocks!r} with map_width "
                             f"{self.map_width}")
        if not 0 <= self.instance_norm_blocks <= self.blocks - self.map_own_blocks:
            raise ValueError(f"instance_norm_blocks must be in [0, {self.blocks} blocks - "
                             f"{self.map_own_blocks} map_own_blocks], not "
                             f"{self.instance_norm_blocks!r}")

    @property
    def feature_dim(self) -> int:
        """Channels of the last block, the size of the embedding."""
        return self.width * 2 ** (self.blocks - 1)

    @property
    def map_size(self) -> int:
        """Side of :meth:`OpacityCritic.feature_map` (16 at 128 px with 4 blocks)."""
        return self.image_size // 2 ** (self.blocks - 1)


def conv_block(in_channels: int, out_channels: int, instance_norm: bool = False
               ) -> nn.Sequential:
    """Two 3x3 convolutions, each with BatchNorm (or, with ``instance_norm``, an affine
    InstanceNorm) and ReLU; the side is kept."""
    def norm() -> nn.Module:
        return (nn.InstanceNorm2d(out_channels, affine=True) if instance_norm
                else nn.BatchNorm2d(out_channels))
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), norm(), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1), norm(), nn.ReLU(inplace=True),
    )


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """One 3x3 convolution with BatchNorm and ReLU; the side is kept."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class OpacityMapHead(nn.Module):
    """Per-pixel opacity logits from the critic's block features.

    Reads the last ``levels`` blocks' features (before their pools; at 4 blocks, sides
    S/8, S/4, S/2 and S): the deepest is reduced to ``2 * map_width`` channels, upsampled,
    joined to the block before it and convolved (``2 * map_width`` channels out), then
    once more with the block before that (``map_width``) and, at four levels, with the
    first block's (``map_width // 2``, at the input's side); a 1x1 convolution gives one
    logit per pixel, bilinearly enlarged to the input's side where it is coarser
    (2 levels: S/4, 3 levels: S/2). Output (B, 1, S, S).

    With ``own_blocks`` k, the last k blocks' features are first computed again by the
    head's own blocks (the same architecture as the critic's, each after a 2x2 max-pool)
    from the critic's block before them, so they can learn what the map needs.
    """

    def __init__(self, block_widths: list[int], map_width: int, levels: int = 3,
                 own_blocks: int = 0):
        super().__init__()
        count = len(block_widths)
        self.own_blocks = nn.ModuleList(
            conv_block(cin, cout) for cin, cout in
            zip(block_widths[count - own_blocks - 1: count - 1],
                block_widths[count - own_blocks:])) if own_blocks else None
        deep, middle = block_widths[-1], block_widths[-2]
        full_width = max(1, map_width // 2)
        self.reduce = conv_bn_relu(deep, 2 * map_width)
        self.up_middle = conv_bn_relu(2 * map_width + middle, 2 * map_width)
        self.up_shallow = conv_bn_relu(2 * map_width + block_widths[-3], map_width) \
            if levels >= 3 else None
        self.up_full = conv_bn_relu(map_width + block_widths[-4], full_width) \
            if levels == 4 else None
        last = {2: 2 * map_width, 3: map_width, 4: full_width}[levels]
        self.logit = nn.Conv2d(last, 1, 1)

    def forward(self, features: list[torch.Tensor], size: int) -> torch.Tensor:
        """Logits (B, 1, size, size) from the blocks' features (shallow to deep)."""
        features = self.own_features(features)
        x = self.reduce(features[-1])
        stages = [(features[-2], self.up_middle)]
        if self.up_shallow is not None:
            stages.append((features[-3], self.up_shallow))
        if self.up_full is not None:
            stages.append((features[-4], self.up_full))
        for skip, conv in stages:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = conv(torch.cat([x, skip], dim=1))
        x = self.logit(x)
        if x.shape[-1] == size:
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def own_features(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The blocks' features the head reads: the critic's, the last ones replaced by
        its own blocks' where it has them."""
        if self.own_blocks is None:
            return features
        shared = len(features) - len(self.own_blocks)
        own, x = list(features[:shared]), features[shared - 1]
        for block in self.own_blocks:
            x = block(F.max_pool2d(x, 2))
            own.append(x)
        return own


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
            conv_block(cin, cout, instance_norm=index < arch.instance_norm_blocks)
            for index, (cin, cout) in enumerate(zip([arch.channels, *widths], widths)))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(arch.feature_dim, 1)
        self.map_head = None
        if arch.map_width:  # drawn from its own random state: the rest start as without it
            with torch.random.fork_rng(devices=[]):
                self.map_head = OpacityMapHead(widths, arch.map_width, arch.map_levels,
                                               arch.map_own_blocks)

    def copy_blocks_into_map_head(self) -> None:
        """Set the map head's own blocks (``map_own_blocks``) to the critic's last
        blocks' weights and statistics: where the head's stage starts fine-tuning them."""
        if self.map_head is None or self.map_head.own_blocks is None:
            raise ValueError("this critic's map head has no blocks of its own")
        critic_blocks = self.blocks[len(self.blocks) - len(self.map_head.own_blocks):]
        for own, block in zip(self.map_head.own_blocks, critic_blocks):
            own.load_state_dict(block.state_dict())

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
