"""Input handling the networks share: plain tensors inside, any spatial size (pad at the far end, crop back)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor

__all__ = ["plain_tensor", "pad_to_multiple", "crop_spatial"]


def plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """``x`` without MONAI metadata: a MetaTensor dispatches every op through Python, which made the many small
    ops of a Mamba layer about 5x slower on CPU. MONAI's inferers and ``Invertd`` restore the metadata."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def pad_to_multiple(x: torch.Tensor, multiples: Sequence[int]) -> torch.Tensor:
    """Zero-pad the spatial axes of ``x`` (batch, channels, *spatial) at their far end up to multiples.

    Args:
        x: the input.
        multiples: one positive multiple per spatial axis.

    Returns:
        ``x`` itself when every axis already divides, else the padded tensor.
    """
    spatial = x.shape[2:]
    # F.pad lists the last axis first
    pad = [p for size, multiple in zip(reversed(spatial), reversed(multiples)) for p in (0, -size % multiple)]
    return F.pad(x, pad) if any(pad) else x


def crop_spatial(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The first ``size[i]`` elements of every spatial axis of ``x`` (batch, channels, *spatial)."""
    return x[(..., *(slice(0, n) for n in size))]
