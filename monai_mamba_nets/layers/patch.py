"""Channels-last 2D patch embedding, merging and expanding blocks of VMamba / Swin-UNet style networks.

Every block here takes and returns feature maps in channels-last layout (batch, H, W, C).
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["PatchEmbed2D", "PatchMerging2D", "PatchExpand2D", "merge_phases", "depth_to_space"]


def merge_phases(x: torch.Tensor) -> torch.Tensor:
    """Stack the four 2x2 phases of a channels-last map on the channel axis.

    The phases are concatenated in the order (row offset, column offset) = (0, 0), (1, 0), (0, 1), (1, 1),
    the layout VMamba's ``PatchMerging2D`` (and therefore its ImageNet weights) uses.

    Args:
        x: (batch, H, W, C) with even H and W.

    Returns:
        (batch, H / 2, W / 2, 4 C).
    """
    height, width = x.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"merge_phases: H and W must be even, got a map of shape {tuple(x.shape)} (batch, H, W, C).")
    return torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)


def depth_to_space(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Channels-last depth-to-space: channel index (p1, p2, c) goes to pixel (h * scale + p1, w * scale + p2).

    Args:
        x: (batch, H, W, scale^2 * C).
        scale: the upsampling factor.

    Returns:
        (batch, H * scale, W * scale, C).
    """
    batch, height, width, channels = x.shape
    if channels % (scale * scale):
        raise ValueError(f"depth_to_space: {channels} channels are not divisible by scale^2 = {scale * scale}.")
    x = x.reshape(batch, height, width, scale, scale, channels // (scale * scale))
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height * scale, width * scale, -1)


class PatchEmbed2D(nn.Module):
    """Non-overlapping patch embedding: Conv2d(kernel = stride = patch_size) then LayerNorm, channels-last output.

    Args:
        patch_size: side of the square patches.
        in_channels: channels of the image.
        embed_dim: channels of the embedding.
    """

    def __init__(self, patch_size: int = 4, in_channels: int = 3, embed_dim: int = 96) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_channels, H, W) -> (batch, H / patch_size, W / patch_size, embed_dim)."""
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """Halve the resolution and double the channels: 2x2 phases stacked, LayerNorm(4 dim), Linear(4 dim -> 2 dim).

    Args:
        dim: input channels.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, dim) -> (batch, H / 2, W / 2, 2 dim)."""
        return self.reduction(self.norm(merge_phases(x)))


class PatchExpand2D(nn.Module):
    """Raise the resolution by ``scale``: Linear(dim -> scale^2 out_dim, no bias), depth-to-space, LayerNorm(out_dim).

    Mamba-UNet uses ``PatchExpand2D(dim, dim // 2, 2)`` between decoder stages and ``PatchExpand2D(C, C, 4)``
    as its final x4 expansion.

    Args:
        dim: input channels.
        out_dim: output channels.
        scale: upsampling factor of each spatial axis.
    """

    def __init__(self, dim: int, out_dim: int, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, dim) -> (batch, H * scale, W * scale, out_dim)."""
        return self.norm(depth_to_space(self.expand(x), self.scale))
