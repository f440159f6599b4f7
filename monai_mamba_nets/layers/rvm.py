"""Residual Vision Mamba (RVM) layer and the residual block LightM-UNet's encoder builds from it."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.layers.factories import Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer

from .mamba import Mamba, upcast_half

__all__ = ["ResidualVisionMamba", "ResMambaBlock", "get_rvm_layer"]


class ResidualVisionMamba(nn.Module):
    """Residual Vision Mamba layer of LightM-UNet: a Mamba over all voxels, a learnable skip, one shared LayerNorm.

    A feature map (batch, C_in, *spatial) is flattened row-major into tokens x of shape (batch, L, C_in), then::

        y = Mamba(LN(x)) + skip_scale * x
        out = Linear(LN(y))                  # the same LayerNorm instance both times

    and reshaped to (batch, C_out, *spatial). The layer runs in float32 whatever the input precision or autocast,
    as the reference does. Submodule names (``norm``, ``mamba``, ``proj``, ``skip_scale``) follow the reference,
    so its state dicts load.

    Args:
        in_channels: channels C_in of the input and width of the Mamba.
        out_channels: channels C_out after the closing linear projection.
        d_state: Mamba state size.
        d_conv: Mamba causal convolution width.
        expand: Mamba inner expansion factor.
        scan_backend: selective-scan backend of the Mamba (``"auto"``, ``"torch"``, ``"cuda"`` or ``"triton"``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm = nn.LayerNorm(in_channels)
        self.mamba = Mamba(in_channels, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)
        self.proj = nn.Linear(in_channels, out_channels)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: feature map (batch, in_channels, *spatial) with at least one spatial dimension.

        Returns:
            (batch, out_channels, *spatial); float32 for a float16/bfloat16 input.
        """
        if x.dim() < 3 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResidualVisionMamba: input must be (batch, in_channels={self.in_channels}, *spatial), "
                f"got shape {tuple(x.shape)}."
            )
        x = upcast_half(x)
        batch, spatial = x.shape[0], x.shape[2:]
        with torch.autocast(device_type=x.device.type, enabled=False):
            tokens = x.flatten(2).transpose(1, 2)
            mixed = self.mamba(self.norm(tokens)) + self.skip_scale * tokens
            out = self.proj(self.norm(mixed))
        return out.transpose(1, 2).reshape(batch, self.out_channels, *spatial)


def get_rvm_layer(
    spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1, **mamba_kwargs
) -> nn.Module:
    """A :class:`ResidualVisionMamba`, followed by a max-pool of kernel and stride ``stride`` when ``stride > 1``.

    This is how LightM-UNet downsamples: the Mamba runs at the finer resolution, before the pool.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        in_channels: input channels.
        out_channels: output channels.
        stride: pooling factor; 1 for none.
        mamba_kwargs: ``d_state``, ``d_conv``, ``expand``, ``scan_backend`` of :class:`ResidualVisionMamba`.
    """
    if stride < 1:
        raise ValueError(f"get_rvm_layer: `stride` must be >= 1, got {stride}.")
    layer = ResidualVisionMamba(in_channels, out_channels, **mamba_kwargs)
    if stride == 1:
        return layer
    return nn.Sequential(layer, Pool[Pool.MAX, spatial_dims](kernel_size=stride, stride=stride))


class ResMambaBlock(nn.Module):
    """LightM-UNet's encoder block: MONAI's SegResNet ``ResBlock`` with both 3x3 convolutions replaced by RVM layers.

    ``y = RVM(act(norm2(RVM(act(norm1(x)))))) + x``. The RVM layers keep the reference's names ``conv1``/``conv2``.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        in_channels: channels of input and output.
        norm: feature normalisation type and arguments.
        act: activation type and arguments.
        mamba_kwargs: ``d_state``, ``d_conv``, ``expand``, ``scan_backend`` of :class:`ResidualVisionMamba`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        norm: tuple | str = ("GROUP", {"num_groups": 8}),
        act: tuple | str = ("RELU", {"inplace": True}),
        **mamba_kwargs,
    ) -> None:
        super().__init__()
        self.norm1 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=in_channels)
        self.norm2 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=in_channels)
        self.act = get_act_layer(act)
        self.conv1 = get_rvm_layer(spatial_dims, in_channels, in_channels, **mamba_kwargs)
        self.conv2 = get_rvm_layer(spatial_dims, in_channels, in_channels, **mamba_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_channels, *spatial) -> same shape."""
        identity = x
        x = self.conv1(self.act(self.norm1(x)))
        x = self.conv2(self.act(self.norm2(x)))
        return x + identity
