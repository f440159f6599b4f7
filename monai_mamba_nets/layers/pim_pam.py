"""LKM-UNet's pixel-level (PiM) and patch-level (PaM) bidirectional Mamba layers.

Both layers normalise the tokens with one ``LayerNorm``, mix them with a :class:`BidirectionalMamba` (a forward
and a reversed scan that share one output projection) in fp32 with autocast disabled, and add the result to
their input. They differ in which tokens form a sequence:

- PiM splits every spatial axis by a factor p and runs one sequence per group of pixels, so that a map of
  n1 x n2 (x n3) pixels becomes p1*p2(*p3) sequences of (n1/p1)*(n2/p2)(*(n3/p3)) pixels each.
- PaM average-pools the map by a factor p, runs one global sequence over the pooled tokens and upsamples the
  result back (nearest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mamba import BidirectionalMamba, upcast_half

__all__ = ["PixelMambaLayer", "PatchMambaLayer", "PIXEL_GROUPINGS", "fit_window_factors"]

PIXEL_GROUPINGS = ("dilated", "contiguous")
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def fit_window_factors(spatial_shape: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    """The factors to use on a map of ``spatial_shape``: each requested factor where it divides its axis, else
    the divisor of that axis nearest to it (the smaller one on a tie, which keeps the sequences longer).

    Args:
        spatial_shape: sizes of the spatial axes.
        factors: requested factor per axis (positive).

    Returns:
        one factor per axis, each dividing its axis.
    """
    if len(spatial_shape) != len(factors):
        raise ValueError(
            f"fit_window_factors: `factors` {tuple(factors)} must have one entry per axis of {tuple(spatial_shape)}."
        )
    if any(int(f) < 1 for f in factors) or any(int(n) < 1 for n in spatial_shape):
        raise ValueError(
            f"fit_window_factors: sizes {tuple(spatial_shape)} and factors {tuple(factors)} must be positive."
        )
    return tuple(min(_divisors(int(n)), key=lambda d: (abs(d - int(f)), d)) for n, f in zip(spatial_shape, factors))


def _check_factors(layer: str, x: torch.Tensor, spatial_dims: int, factors: Sequence[int] | int) -> tuple[int, ...]:
    """Per-axis factors from an int or a sequence, each dividing its axis of x, else a ValueError."""
    if x.dim() != spatial_dims + 2:
        raise ValueError(
            f"{layer}: input must be (batch, channels, {spatial_dims} spatial axes), got {tuple(x.shape)}."
        )
    factors = (factors,) * spatial_dims if isinstance(factors, int) else tuple(int(f) for f in factors)
    sizes = x.shape[2:]
    if len(factors) != spatial_dims or any(f < 1 or n % f for n, f in zip(sizes, factors)):
        raise ValueError(
            f"{layer}: `factors` {factors} must give one positive factor per spatial axis, each dividing the "
            f"feature map {tuple(sizes)}; fit_window_factors() derives valid ones."
        )
    return factors


class _BidirectionalMambaMixer(nn.Module):
    """LayerNorm + bidirectional Mamba over the tokens of (sequences, channels, L) maps, in fp32."""

    def __init__(self, spatial_dims: int, channels: int, **mamba_kwargs) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"{type(self).__name__}: `spatial_dims` must be 1, 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.norm = nn.LayerNorm(channels)
        self.mamba = BidirectionalMamba(channels, **mamba_kwargs)

    def mix(self, sequences: torch.Tensor) -> torch.Tensor:
        """(n, channels, L) -> (n, channels, L)."""
        tokens = sequences.transpose(1, 2)
        return self.mamba(self.norm(tokens)).transpose(1, 2)

    def _fp32(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"{type(self).__name__}: expected {self.channels} input channels, got {tuple(x.shape)}.")
        return upcast_half(x)


class PixelMambaLayer(_BidirectionalMambaMixer):
    """PiM: a bidirectional Mamba over groups of pixels, with a residual connection.

    Each spatial axis of size n is split by its factor p into p groups of n/p pixels. ``pixel_grouping``
    chooses which pixels share a group:

    - ``"dilated"`` (the LKM-UNet reference code): pixels p apart, i.e. one sequence per offset inside a p x p
      grid, covering the whole map sparsely.
    - ``"contiguous"`` (the LKM-UNet paper): adjacent pixels, i.e. one sequence per window of n/p pixels
      per axis.

    Both have the same parameters; tokens run row-major (last axis fastest) inside each sequence.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: feature channels C.
        pixel_grouping: ``"dilated"`` or ``"contiguous"``.
        mamba_kwargs: further :class:`monai_mamba_nets.layers.Mamba` arguments (d_state, d_conv, expand,
            scan_backend, ...).
    """

    def __init__(self, spatial_dims: int, channels: int, pixel_grouping: str = "dilated", **mamba_kwargs) -> None:
        super().__init__(spatial_dims, channels, **mamba_kwargs)
        if pixel_grouping not in PIXEL_GROUPINGS:
            raise ValueError(
                f"PixelMambaLayer: `pixel_grouping` must be one of {PIXEL_GROUPINGS}, got {pixel_grouping!r}."
            )
        self.pixel_grouping = pixel_grouping

    def forward(self, x: torch.Tensor, factors: Sequence[int] | int) -> torch.Tensor:
        """
        Args:
            x: (batch, channels, *spatial).
            factors: number of groups per spatial axis (an int for all axes); each must divide its axis.

        Returns:
            x + PiM(x), fp32 where x was fp16/bf16.
        """
        factors = _check_factors("PixelMambaLayer", x, self.spatial_dims, factors)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self._fp32(x)
            batch, channels, *sizes = x.shape
            contiguous = self.pixel_grouping == "contiguous"
            # split each axis n into (groups p, run n/p) or (run n/p, groups p): in (p, n/p) a run is adjacent
            # pixels, in (n/p, p) the pixels of a run are p apart
            split: list[int] = []
            for n, p in zip(sizes, factors):
                split += [p, n // p] if contiguous else [n // p, p]
            group_axes = [2 + 2 * i + (0 if contiguous else 1) for i in range(len(sizes))]
            run_axes = [2 + 2 * i + (1 if contiguous else 0) for i in range(len(sizes))]
            order = [0, *group_axes, 1, *run_axes]
            grouped = x.reshape(batch, channels, *split).permute(order)
            grouped_shape = grouped.shape
            mixed = self.mix(grouped.reshape(batch * math.prod(factors), channels, -1))
            mixed = mixed.reshape(grouped_shape).permute([order.index(axis) for axis in range(len(order))])
            return mixed.reshape(x.shape) + x


class PatchMambaLayer(_BidirectionalMambaMixer):
    """PaM: average-pool by a factor, one global bidirectional Mamba over the pooled tokens, nearest upsampling
    back, and a residual connection.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: feature channels C.
        mamba_kwargs: further :class:`monai_mamba_nets.layers.Mamba` arguments.
    """

    def forward(self, x: torch.Tensor, factors: Sequence[int] | int) -> torch.Tensor:
        """
        Args:
            x: (batch, channels, *spatial).
            factors: pooling factor per spatial axis (an int for all axes; 1 = no pooling); each must divide
                its axis.

        Returns:
            x + PaM(x), fp32 where x was fp16/bf16.
        """
        factors = _check_factors("PatchMambaLayer", x, self.spatial_dims, factors)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self._fp32(x)
            pooled = x if all(f == 1 for f in factors) else _AVG_POOL[self.spatial_dims](x, factors)
            mixed = self.mix(pooled.flatten(2)).reshape(pooled.shape)
            if mixed.shape != x.shape:
                mixed = F.interpolate(mixed, size=x.shape[2:], mode="nearest")
            return mixed + x
