"""LightM-UNet (Liao et al. 2024, arXiv 2403.05246): MONAI's SegResNet with a Residual-Vision-Mamba encoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.blocks.segresnet_block import ResBlock, get_conv_layer, get_upsample_layer
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.utils import UpsampleMode

from ..layers.mamba import Mamba
from ..layers.rvm import ResMambaBlock, get_rvm_layer
from .inputs import crop_spatial, pad_to_multiple, plain_tensor

__all__ = ["LightMUNet", "ResUpBlock", "get_dwconv_layer"]

VARIANTS = ("v1", "v0")


def get_dwconv_layer(
    spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, bias: bool = False
) -> nn.Sequential:
    """Depthwise-separable convolution: depthwise (kernel, stride) then pointwise 1x1 (same stride and bias flag).

    No norm or activation in between, as in the reference.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel size.
        stride: stride of both convolutions.
        bias: bias in both convolutions.
    """
    depthwise = Convolution(
        spatial_dims, in_channels, in_channels, strides=stride, kernel_size=kernel_size, bias=bias,
        groups=in_channels, conv_only=True,
    )  # fmt: skip
    pointwise = Convolution(
        spatial_dims, in_channels, out_channels, strides=stride, kernel_size=1, bias=bias, conv_only=True
    )
    return nn.Sequential(depthwise, pointwise)


class ResUpBlock(nn.Module):
    """LightM-UNet's decoder block: ``act(norm2(DWConv(act(norm1(x))) + skip_scale * x))``.

    ``skip_scale`` is one learnable scalar (init 1). There is no outer residual around the final norm/activation.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels of input and output.
        norm: feature normalisation type and arguments.
        kernel_size: depthwise kernel size.
        act: activation type and arguments.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        norm: tuple | str = ("GROUP", {"num_groups": 8}),
        kernel_size: int = 3,
        act: tuple | str = ("RELU", {"inplace": True}),
    ) -> None:
        super().__init__()
        self.norm1 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=in_channels)
        self.norm2 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=in_channels)
        self.act = get_act_layer(act)
        self.conv = get_dwconv_layer(spatial_dims, in_channels, in_channels, kernel_size=kernel_size)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_channels, *spatial) -> same shape."""
        y = self.conv(self.act(self.norm1(x))) + self.skip_scale * x
        return self.act(self.norm2(y))


class LightMUNet(nn.Module):
    """LightM-UNet, block for block as the reference code (MrBlankness/LightM-UNet), in 2D or 3D.

    The topology is MONAI's :class:`~monai.networks.nets.SegResNet`: an encoder of ``len(blocks_down)`` stages
    doubling the channels from ``init_filters``, a decoder with additive skips and non-trainable linear
    upsampling. Every encoder convolution is a Residual Vision Mamba layer: stage ``i > 0`` starts with an
    RVM layer (C/2 -> C) at the finer resolution followed by a 2x max-pool, then ``blocks_down[i]``
    :class:`~monai_mamba_nets.layers.ResMambaBlock`.

    Variants:

    - ``"v1"`` (reference HEAD, what the paper describes): depthwise-separable 3x3 stem,
      :class:`ResUpBlock` decoder, depthwise-separable 1x1 head. 5,011,765 parameters in 2D (3 in, 2 out).
    - ``"v0"`` (the first public upload, whose counts the paper printed): plain 3x3 stem, MONAI ``ResBlock``
      decoder, plain 1x1 head. 5,375,991 parameters in 2D; thop saw 1,091,810 of them.

    Any spatial size is accepted: the input is zero-padded at the far end of each axis up to a multiple of
    ``2 ** (len(blocks_down) - 1)`` and the logits are cropped back to the input size. Submodule names
    (``convInit``, ``down_layers``, ``up_samples``, ``up_layers``, ``conv_final``) are SegResNet's and the
    reference's, so the reference's state dicts load.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: input channels.
        out_channels: output channels (classes).
        init_filters: channels of the first stage.
        blocks_down: ResMambaBlocks per encoder stage.
        blocks_up: decoder blocks per decoder stage; ``len(blocks_down) - 1`` entries.
        norm: feature normalisation type and arguments.
        act: activation type and arguments.
        upsample_mode: MONAI upsample mode of the decoder; the reference uses ``"nontrainable"`` (linear).
        variant: ``"v1"`` or ``"v0"``.
        d_state: Mamba state size.
        d_conv: Mamba causal convolution width.
        expand: Mamba inner expansion factor.
        scan_backend: selective-scan backend (``"auto"``, ``"torch"``, ``"cuda"`` or ``"triton"``).
    """

    #: How the LightM-UNet authors' thop saw this network (read by :mod:`monai_mamba_nets.complexity`):
    #: mamba-ssm's fused path calls no Mamba submodule, so thop counted no Mamba parameter or MAC.
    thop_multiplicity: ClassVar[dict] = {Mamba: 0}

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        init_filters: int = 32,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        norm: tuple | str = ("GROUP", {"num_groups": 8}),
        act: tuple | str = ("RELU", {"inplace": True}),
        upsample_mode: UpsampleMode | str = UpsampleMode.NONTRAINABLE,
        variant: str = "v1",
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"LightMUNet: `spatial_dims` must be 2 or 3, got {spatial_dims}.")
        if variant not in VARIANTS:
            raise ValueError(f"LightMUNet: `variant` must be one of {VARIANTS}, got {variant!r}.")
        if len(blocks_down) < 1 or any(n < 1 for n in blocks_down):
            raise ValueError(f"LightMUNet: `blocks_down` must be positive block counts, got {tuple(blocks_down)}.")
        if len(blocks_up) != len(blocks_down) - 1 or any(n < 1 for n in blocks_up):
            raise ValueError(
                f"LightMUNet: `blocks_up` must hold len(blocks_down) - 1 = {len(blocks_down) - 1} positive counts, "
                f"got {tuple(blocks_up)}."
            )
        sizes = {"in_channels": in_channels, "out_channels": out_channels, "init_filters": init_filters}
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"LightMUNet: `{name}` must be >= 1, got {value}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.init_filters = init_filters
        self.blocks_down = tuple(blocks_down)
        self.blocks_up = tuple(blocks_up)
        self.norm = norm
        self.act = act
        self.upsample_mode = UpsampleMode(upsample_mode)
        self.variant = variant
        self.mamba_kwargs = {"d_state": d_state, "d_conv": d_conv, "expand": expand, "scan_backend": scan_backend}
        # the encoder halves the resolution len(blocks_down) - 1 times
        self.size_divisor = 2 ** (len(blocks_down) - 1)

        if variant == "v1":
            self.convInit = get_dwconv_layer(spatial_dims, in_channels, init_filters)
        else:
            self.convInit = get_conv_layer(spatial_dims, in_channels, init_filters)
        self.down_layers = self._make_down_layers()
        self.up_layers, self.up_samples = self._make_up_layers()
        self.conv_final = self._make_final_conv()

    def _make_down_layers(self) -> nn.ModuleList:
        down_layers = nn.ModuleList()
        for i, num_blocks in enumerate(self.blocks_down):
            channels = self.init_filters * 2**i
            downsample = (
                get_rvm_layer(self.spatial_dims, channels // 2, channels, stride=2, **self.mamba_kwargs)
                if i > 0
                else nn.Identity()
            )
            blocks = [
                ResMambaBlock(self.spatial_dims, channels, norm=self.norm, act=self.act, **self.mamba_kwargs)
                for _ in range(num_blocks)
            ]
            down_layers.append(nn.Sequential(downsample, *blocks))
        return down_layers

    def _make_up_block(self, channels: int) -> nn.Module:
        if self.variant == "v1":
            return ResUpBlock(self.spatial_dims, channels, norm=self.norm, act=self.act)
        return ResBlock(self.spatial_dims, channels, norm=self.norm, act=self.act)

    def _make_up_layers(self) -> tuple[nn.ModuleList, nn.ModuleList]:
        up_layers, up_samples = nn.ModuleList(), nn.ModuleList()
        num_up = len(self.blocks_up)
        for i, num_blocks in enumerate(self.blocks_up):
            channels = self.init_filters * 2 ** (num_up - i - 1)
            up_layers.append(nn.Sequential(*[self._make_up_block(channels) for _ in range(num_blocks)]))
            up_samples.append(
                nn.Sequential(
                    get_conv_layer(self.spatial_dims, channels * 2, channels, kernel_size=1),
                    get_upsample_layer(self.spatial_dims, channels, upsample_mode=self.upsample_mode),
                )
            )
        return up_layers, up_samples

    def _make_final_conv(self) -> nn.Sequential:
        if self.variant == "v1":
            head = get_dwconv_layer(self.spatial_dims, self.init_filters, self.out_channels, kernel_size=1, bias=True)
        else:
            head = get_conv_layer(self.spatial_dims, self.init_filters, self.out_channels, kernel_size=1, bias=True)
        return nn.Sequential(
            get_norm_layer(name=self.norm, spatial_dims=self.spatial_dims, channels=self.init_filters),
            get_act_layer(self.act),
            head,
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Stem and encoder. Returns the bottleneck features and every stage's output, finest first."""
        x = self.convInit(x)
        down_x = []
        for down in self.down_layers:
            x = down(x)
            down_x.append(x)
        return x, down_x

    def decode(self, x: torch.Tensor, down_x: list[torch.Tensor]) -> torch.Tensor:
        """Decoder and head; ``down_x`` as :meth:`encode` returns it."""
        for up, upl, skip in zip(self.up_samples, self.up_layers, reversed(down_x[:-1])):
            x = upl(up(x) + skip)
        return self.conv_final(x)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"LightMUNet: input must be (batch, channels, {self.spatial_dims} spatial dims), "
                f"got {x.dim()}-D shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"LightMUNet: input must have in_channels={self.in_channels} channels, "
                f"got {x.shape[1]} (shape {tuple(x.shape)})."
            )
        if any(s < 1 for s in x.shape[2:]):
            raise ValueError(f"LightMUNet: input has an empty spatial dimension, shape {tuple(x.shape)}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: image (batch, in_channels, *spatial), any spatial size.

        Returns:
            logits (batch, out_channels, *spatial), the input's spatial size.
        """
        x = plain_tensor(x)
        self._check_input(x)
        spatial = x.shape[2:]
        x, down_x = self.encode(pad_to_multiple(x, [self.size_divisor] * self.spatial_dims))
        return crop_spatial(self.decode(x, down_x), spatial)
