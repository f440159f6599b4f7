"""Residual convolution blocks of nnU-Net's residual-encoder U-Net (ResNet-D basic blocks).

MONAI's ``UnetResBlock`` differs: its shortcut is a strided 1x1 convolution even when only the stride changes,
where ResNet-D average-pools first and adds a 1x1 convolution (without bias) only when the channels change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer

__all__ = ["ResidualBlockD", "StackedResidualBlocks", "ResidualUpBlock", "DEFAULT_NORM", "DEFAULT_ACT"]

DEFAULT_NORM: tuple = ("instance", {"eps": 1e-5, "affine": True})
DEFAULT_ACT: tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


def _as_tuple(value: Sequence[int] | int, spatial_dims: int) -> tuple[int, ...]:
    return (value,) * spatial_dims if isinstance(value, int) else tuple(value)


class ResidualBlockD(nn.Module):
    """ResNet-D basic block (He et al. 2019): conv(k, stride)-norm-act, conv(k)-norm, plus a shortcut, then act.

    The shortcut is the identity, or average pooling (kernel = stride) where the stride is not 1, followed by
    a 1x1 convolution without bias and a norm where the channels change.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: convolution kernel, odd, per axis or one int.
        stride: stride of the first convolution, per axis or one int.
        norm: MONAI norm name or (name, args).
        act: MONAI activation name or (name, args).
        bias: bias of the two main convolutions.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] | int = 3,
        stride: Sequence[int] | int = 1,
        norm: tuple | str = DEFAULT_NORM,
        act: tuple | str = DEFAULT_ACT,
        bias: bool = True,
    ) -> None:
        super().__init__()
        kernel_size, stride = _as_tuple(kernel_size, spatial_dims), _as_tuple(stride, spatial_dims)
        if len(kernel_size) != spatial_dims or any(k < 1 or k % 2 == 0 for k in kernel_size):
            raise ValueError(f"ResidualBlockD: `kernel_size` must be {spatial_dims} odd sizes, got {kernel_size}.")
        if len(stride) != spatial_dims or any(s < 1 for s in stride):
            raise ValueError(f"ResidualBlockD: `stride` must be {spatial_dims} positive ints, got {stride}.")
        self.conv1 = Convolution(
            spatial_dims,
            in_channels,
            out_channels,
            strides=stride,
            kernel_size=kernel_size,
            act=act,
            norm=norm,
            bias=bias,
        )
        self.conv2 = Convolution(
            spatial_dims, out_channels, out_channels, kernel_size=kernel_size, act=None, norm=norm, bias=bias
        )
        shortcut: list[nn.Module] = []
        if any(s != 1 for s in stride):
            shortcut.append(Pool[Pool.AVG, spatial_dims](kernel_size=stride, stride=stride))
        if in_channels != out_channels:
            shortcut.append(
                Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, act=None, norm=norm, bias=False)
            )
        self.shortcut = nn.Sequential(*shortcut)  # empty: identity
        self.act = get_act_layer(act)

    @property
    def last_norm(self) -> nn.Module:
        """The norm before the addition; zeroing its affine parameters makes the block start as its shortcut."""
        return self.conv2.adn.N

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class StackedResidualBlocks(nn.Sequential):
    """``n_blocks`` :class:`ResidualBlockD`: the first maps in_channels to out_channels with the stride, the others
    keep out_channels at stride 1.

    Args:
        spatial_dims: number of spatial dimensions.
        n_blocks: number of blocks (>= 1).
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: kernel of every convolution.
        stride: stride of the first block.
        norm: MONAI norm name or (name, args).
        act: MONAI activation name or (name, args).
        bias: bias of the main convolutions.
    """

    def __init__(
        self,
        spatial_dims: int,
        n_blocks: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] | int = 3,
        stride: Sequence[int] | int = 1,
        norm: tuple | str = DEFAULT_NORM,
        act: tuple | str = DEFAULT_ACT,
        bias: bool = True,
    ) -> None:
        if n_blocks < 1:
            raise ValueError(f"StackedResidualBlocks: `n_blocks` must be >= 1, got {n_blocks}.")
        blocks = [
            ResidualBlockD(
                spatial_dims,
                in_channels if i == 0 else out_channels,
                out_channels,
                kernel_size,
                stride if i == 0 else 1,
                norm=norm,
                act=act,
                bias=bias,
            )
            for i in range(n_blocks)
        ]
        super().__init__(*blocks)


class ResidualUpBlock(nn.Module):
    """Decoder level of nnU-Net's residual U-Net: transposed convolution (kernel = stride) from in_channels
    to the skip's channels, concatenation [upsampled, skip], then :class:`StackedResidualBlocks` back to the
    skip's channels.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels of the coarser input.
        skip_channels: channels of the skip (and of the output).
        upsample_stride: upsampling factor per axis or one int.
        kernel_size: kernel of the residual blocks.
        n_blocks: number of residual blocks.
        norm: MONAI norm name or (name, args).
        act: MONAI activation name or (name, args).
        bias: bias of the transposed and the main convolutions.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        upsample_stride: Sequence[int] | int,
        kernel_size: Sequence[int] | int = 3,
        n_blocks: int = 2,
        norm: tuple | str = DEFAULT_NORM,
        act: tuple | str = DEFAULT_ACT,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.upsample = Conv[Conv.CONVTRANS, spatial_dims](
            in_channels, skip_channels, kernel_size=upsample_stride, stride=upsample_stride, bias=bias
        )
        self.blocks = StackedResidualBlocks(
            spatial_dims, n_blocks, 2 * skip_channels, skip_channels, kernel_size, norm=norm, act=act, bias=bias
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: coarser features (batch, in_channels, *spatial).
            skip: encoder features (batch, skip_channels, *(spatial * upsample_stride)).
        """
        return self.blocks(torch.cat([self.upsample(x), skip], dim=1))
