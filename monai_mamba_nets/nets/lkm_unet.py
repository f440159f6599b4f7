"""LKM-UNet (Wang et al., MICCAI 2024, arXiv 2403.07332): nnU-Net's residual-encoder U-Net with a pixel-level
(PiM) and a patch-level (PaM) bidirectional Mamba after every encoder stage."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv

from ..layers.mamba import Mamba
from ..layers.pim_pam import PIXEL_GROUPINGS, PatchMambaLayer, PixelMambaLayer, fit_window_factors
from ..layers.residual_blocks import (
    DEFAULT_ACT,
    DEFAULT_NORM,
    ResidualBlockD,
    ResidualUpBlock,
    StackedResidualBlocks,
)
from .inputs import crop_spatial, pad_to_multiple, plain_tensor

__all__ = ["LKMUNet", "LKMUNetPlan", "LKM_UNET_REFERENCE_PLANS", "reference_window_factors"]

# PiM factors of the reference at the coarsest stages: a 5 x 5 (2D) or 5 x 7 x 6 (3D) bottleneck
_PIM_BASE_FACTORS = {2: (5, 5), 3: (5, 7, 6)}


@dataclass(frozen=True)
class LKMUNetPlan:
    """Architecture of one nnU-Net plan, and the training patch it was made for."""

    features: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]


LKM_UNET_REFERENCE_PLANS: dict[int, LKMUNetPlan] = {
    # AbdomenCT (FLARE22) 3d_fullres, reconstructed from the reference's hard-coded window factors
    3: LKMUNetPlan(
        features=(32, 64, 128, 256, 320, 320),
        kernel_sizes=((1, 3, 3),) + ((3, 3, 3),) * 5,
        strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
        patch_size=(40, 224, 192),
    ),
    # AbdomenMR (AMOS22 MR) 2d
    2: LKMUNetPlan(
        features=(32, 64, 128, 256, 512, 512, 512),
        kernel_sizes=((3, 3),) * 7,
        strides=((1, 1),) + ((2, 2),) * 6,
        patch_size=(320, 320),
    ),
}


def reference_window_factors(spatial_dims: int, n_stages: int) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """The reference's PiM factors and PaM pooling factors of every stage, before fitting them to a feature map.

    With p_base(s) = 2^(floor((n_stages - s + 1) / 2) - 1), stage s uses PiM factors 5 * p_base(s) (2D) or
    (5, 7, 6) * p_base(s) (3D, for the axes Z, H, W) and PaM pooling p_base(s) on every axis.

    Args:
        spatial_dims: 2 or 3.
        n_stages: number of encoder stages.

    Returns:
        (PiM factors per stage, PaM factors per stage), each a tuple per spatial axis.
    """
    if spatial_dims not in _PIM_BASE_FACTORS:
        raise ValueError(f"reference_window_factors: `spatial_dims` must be 2 or 3, got {spatial_dims}.")
    bases = [2 ** ((n_stages - s + 1) // 2 - 1) for s in range(n_stages)]
    pim = [tuple(f * base for f in _PIM_BASE_FACTORS[spatial_dims]) for base in bases]
    pam = [(base,) * spatial_dims for base in bases]
    return pim, pam


def _per_axis(name: str, value: Sequence[int] | int, spatial_dims: int) -> tuple[int, ...]:
    per_axis = (value,) * spatial_dims if isinstance(value, int) else tuple(value)
    if len(per_axis) != spatial_dims or any(not isinstance(v, int) or v < 1 for v in per_axis):
        raise ValueError(f"LKMUNet: `{name}` must be a positive int or {spatial_dims} positive ints, got {value!r}.")
    return per_axis


def _per_stage(name: str, value: Sequence | int, n: int, spatial_dims: int | None = None) -> list:
    """n entries from one value or a sequence of n values; each entry a tuple per axis if spatial_dims is given."""
    entries = [value] * n if isinstance(value, int) else list(value)
    if len(entries) != n:
        raise ValueError(f"LKMUNet: `{name}` must have one entry per stage ({n}), got {len(entries)}: {value!r}.")
    if spatial_dims is not None:
        return [_per_axis(f"{name}[{i}]", v, spatial_dims) for i, v in enumerate(entries)]
    if any(not isinstance(v, int) or v < 1 for v in entries):
        raise ValueError(f"LKMUNet: `{name}` must be positive ints, got {value!r}.")
    return entries


class LKMUNet(nn.Module):
    """LKM-UNet: a residual-encoder U-Net with pixel- and patch-level bidirectional Mamba after every encoder stage.

    Encoder: a stem (conv-norm-act at stride 1), then per stage ``n_blocks_encoder`` ResNet-D blocks (the first
    one strided), a :class:`~monai_mamba_nets.layers.PixelMambaLayer` (PiM) and a
    :class:`~monai_mamba_nets.layers.PatchMambaLayer` (PaM). Decoder: per level a transposed convolution, the
    concatenated skip and ``n_blocks_decoder`` ResNet-D blocks, then a 1x1 segmentation head. Convolutions get
    He initialisation (a = 0.01) and the last norm of every residual block starts at zero, as in nnU-Net.

    Window factors: stage s asks for the reference's PiM factors and PaM pooling (see
    :func:`reference_window_factors`, or pass ``pim_factors`` / ``pam_factors``). On a feature map that an asked
    factor does not divide, the nearest divisor of that axis is used instead (:func:`fit_window_factors`), and
    one warning per input shape names the stages, their feature maps and the factors used. The reference
    instead falls back to one global sequence without a word.

    Inputs of any spatial size are accepted: they are zero-padded at the end of each axis to a multiple of the
    total stride and every output is cropped back (the full-resolution one to the input size). Padding changes
    the instance-norm statistics a little; inputs that already divide are not padded.

    Outputs: in training mode with ``deep_supervision`` a list of ``n_stages - 1`` logit maps, full resolution
    first, each coarser one at its own resolution, as :class:`monai.losses.DeepSupervisionLoss` takes them
    (:meth:`deep_supervision_weights` gives nnU-Net's weights). Otherwise, and always in eval mode, one
    full-resolution map (batch, out_channels, *input_size), as MONAI's inferers take it.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (classes, background included).
        features: channels of each encoder stage (n_stages >= 2).
        kernel_sizes: odd convolution kernel of each stage, an int or one per axis.
        strides: downsampling stride of each stage (usually 1 at stage 0), an int or one per axis.
        n_blocks_encoder: ResNet-D blocks per encoder stage, one int or one per stage.
        n_blocks_decoder: ResNet-D blocks per decoder level, one int or one per level from the coarsest.
        deep_supervision: return the coarser logit maps as well in training mode. The reference builds the
            coarser heads in any case; here they exist only with deep supervision, so the parameter count
            without it is smaller by their weights.
        pixel_grouping: PiM grouping, ``"dilated"`` (reference code: pixels p apart) or ``"contiguous"``
            (paper: windows of adjacent pixels).
        pim_factors: PiM groups per axis for each stage (an int or one per axis); None: the reference's.
        pam_factors: PaM pooling per axis for each stage; None: the reference's.
        norm: MONAI norm of the convolution blocks.
        act: MONAI activation of the convolution blocks.
        conv_bias: bias of the convolutions (not of the 1x1 shortcut convolutions, which have none).
        d_state, d_conv, expand: Mamba state size, causal convolution width and expansion.
        scan_backend: selective-scan backend (see :func:`monai_mamba_nets.selective_scan`).

    Example::

        net = LKMUNet.from_reference_plan(3, in_channels=1, out_channels=14)  # 63,782,246 parameters
    """

    #: How thop saw the reference (read by :mod:`monai_mamba_nets.complexity`); declared below the class because
    #: its keys name LKMUNet itself.
    thop_multiplicity: ClassVar[dict]

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int],
        kernel_sizes: Sequence[Sequence[int] | int],
        strides: Sequence[Sequence[int] | int],
        n_blocks_encoder: Sequence[int] | int = 2,
        n_blocks_decoder: Sequence[int] | int = 2,
        deep_supervision: bool = True,
        pixel_grouping: str = "dilated",
        pim_factors: Sequence[Sequence[int] | int] | None = None,
        pam_factors: Sequence[Sequence[int] | int] | None = None,
        norm: tuple | str = DEFAULT_NORM,
        act: tuple | str = DEFAULT_ACT,
        conv_bias: bool = True,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"LKMUNet: `spatial_dims` must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"LKMUNet: `in_channels` and `out_channels` must be >= 1, got {in_channels}, {out_channels}."
            )
        if pixel_grouping not in PIXEL_GROUPINGS:
            raise ValueError(f"LKMUNet: `pixel_grouping` must be one of {PIXEL_GROUPINGS}, got {pixel_grouping!r}.")
        if isinstance(features, int) or len(features) < 2:
            raise ValueError(f"LKMUNet: `features` must list the channels of at least 2 stages, got {features!r}.")
        n_stages = len(features)
        features = _per_stage("features", features, n_stages)
        kernel_sizes = _per_stage("kernel_sizes", kernel_sizes, n_stages, spatial_dims)
        strides = _per_stage("strides", strides, n_stages, spatial_dims)
        for s, kernel in enumerate(kernel_sizes):
            if any(k % 2 == 0 for k in kernel):
                raise ValueError(f"LKMUNet: `kernel_sizes[{s}]` must be odd, got {kernel}.")
        blocks_encoder = _per_stage("n_blocks_encoder", n_blocks_encoder, n_stages)
        blocks_decoder = _per_stage("n_blocks_decoder", n_blocks_decoder, n_stages - 1)
        reference_pim, reference_pam = reference_window_factors(spatial_dims, n_stages)
        if pim_factors is not None:
            reference_pim = _per_stage("pim_factors", pim_factors, n_stages, spatial_dims)
        if pam_factors is not None:
            reference_pam = _per_stage("pam_factors", pam_factors, n_stages, spatial_dims)
        self.pim_factors, self.pam_factors = reference_pim, reference_pam

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.deep_supervision = deep_supervision
        # cumulative stride of each stage's feature map relative to the input
        self.stage_strides = [
            tuple(math.prod(stride[axis] for stride in strides[: s + 1]) for axis in range(spatial_dims))
            for s in range(n_stages)
        ]
        self._windows: dict[tuple[int, ...], list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}

        conv_kwargs = {"norm": norm, "act": act, "bias": conv_bias}
        mamba_kwargs = {"d_state": d_state, "d_conv": d_conv, "expand": expand, "scan_backend": scan_backend}
        self.stem = Convolution(spatial_dims, in_channels, features[0], kernel_size=kernel_sizes[0], **conv_kwargs)
        self.stages = nn.ModuleList(
            StackedResidualBlocks(
                spatial_dims,
                blocks_encoder[s],
                features[max(s - 1, 0)],
                features[s],
                kernel_sizes[s],
                strides[s],
                **conv_kwargs,
            )
            for s in range(n_stages)
        )
        self.pixel_mambas = nn.ModuleList(
            PixelMambaLayer(spatial_dims, f, pixel_grouping=pixel_grouping, **mamba_kwargs) for f in features
        )
        self.patch_mambas = nn.ModuleList(PatchMambaLayer(spatial_dims, f, **mamba_kwargs) for f in features)
        # decoder levels from the coarsest: level l upsamples to the resolution of stage s = n_stages - 2 - l
        self.up_blocks = nn.ModuleList(
            ResidualUpBlock(
                spatial_dims,
                features[s + 1],
                features[s],
                strides[s + 1],
                kernel_sizes[s],
                blocks_decoder[level],
                **conv_kwargs,
            )
            for level, s in enumerate(reversed(range(n_stages - 1)))
        )
        head = Conv[Conv.CONV, spatial_dims]
        self.head = head(features[0], out_channels, kernel_size=1, bias=True)
        # aux_heads[i] segments at the resolution of stage i + 1
        self.aux_heads = (
            nn.ModuleList(head(features[s], out_channels, kernel_size=1, bias=True) for s in range(1, n_stages - 1))
            if deep_supervision
            else None
        )
        self._init_weights()

    @classmethod
    def from_reference_plan(cls, spatial_dims: int, in_channels: int = 1, out_channels: int = 14, **kwargs) -> LKMUNet:
        """The reference's network for the plan in :data:`LKM_UNET_REFERENCE_PLANS` (3: AbdomenCT 3D, 6 stages;
        2: AbdomenMR 2D, 7 stages); ``kwargs`` go to the constructor."""
        if spatial_dims not in LKM_UNET_REFERENCE_PLANS:
            raise ValueError(f"LKMUNet.from_reference_plan: `spatial_dims` must be 2 or 3, got {spatial_dims}.")
        plan = LKM_UNET_REFERENCE_PLANS[spatial_dims]
        return cls(spatial_dims, in_channels, out_channels, plan.features, plan.kernel_sizes, plan.strides, **kwargs)

    def deep_supervision_weights(self) -> list[float]:
        """nnU-Net's weights of the deep-supervision outputs, full resolution first: 1/2^i, the coarsest 0,
        normalised to sum 1; pass them as ``weights`` to :class:`monai.losses.DeepSupervisionLoss`."""
        if not self.deep_supervision:
            raise ValueError("LKMUNet.deep_supervision_weights: the network was built with deep_supervision=False.")
        n_outputs = len(self.stage_strides) - 1
        weights = [0.5**i for i in range(n_outputs - 1)] + [0.0] if n_outputs > 1 else [1.0]
        return [w / sum(weights) for w in weights]

    def _init_weights(self) -> None:
        for module in self.modules():
            # the Mamba's own Conv1d keeps its init, as in the reference
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(module.weight, a=1e-2)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, ResidualBlockD):
                for param in module.last_norm.parameters():
                    nn.init.zeros_(param)

    def window_factors(self, spatial_shape: Sequence[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(PiM factors, PaM factors) of every stage for a padded input of ``spatial_shape``; warns once per shape
        where an asked factor does not divide its feature map."""
        spatial_shape = tuple(spatial_shape)
        if spatial_shape not in self._windows:
            windows, changes = [], []
            for s, stride in enumerate(self.stage_strides):
                feature_map = tuple(n // t for n, t in zip(spatial_shape, stride))
                pim = fit_window_factors(feature_map, self.pim_factors[s])
                pam = fit_window_factors(feature_map, self.pam_factors[s])
                windows.append((pim, pam))
                for layer, asked, used in (("PiM", self.pim_factors[s], pim), ("PaM", self.pam_factors[s], pam)):
                    if used != asked:
                        changes.append(f"stage {s} (feature map {feature_map}): {layer} {asked} -> {used}")
            if changes:
                warnings.warn(
                    f"LKMUNet: the asked window factors do not divide the feature maps of an input of spatial shape "
                    f"{spatial_shape}; using the nearest divisors instead: {'; '.join(changes)}.",
                    stacklevel=2,
                )
            self._windows[spatial_shape] = windows
        return self._windows[spatial_shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """
        Args:
            x: (batch, in_channels, *spatial), any spatial size.

        Returns:
            (batch, out_channels, *spatial) logits; in training mode with deep supervision a list of logit maps,
            full resolution first, the map of stage s of size ceil(spatial / cumulative stride of s).
        """
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"LKMUNet: input must be (batch, {self.in_channels}, {self.spatial_dims} spatial axes), "
                f"got {tuple(x.shape)}."
            )
        x = plain_tensor(x)
        size = tuple(x.shape[2:])
        x = pad_to_multiple(x, self.stage_strides[-1])
        padded = tuple(x.shape[2:])

        skips = []
        h = self.stem(x)
        for stage, pim, pam, (pim_factors, pam_factors) in zip(
            self.stages, self.pixel_mambas, self.patch_mambas, self.window_factors(padded)
        ):
            h = pam(pim(stage(h), pim_factors), pam_factors)
            skips.append(h)

        decoded = [skips[-1]]
        for up_block, skip in zip(self.up_blocks, reversed(skips[:-1])):
            decoded.append(up_block(decoded[-1], skip))
        logits = crop_spatial(self.head(decoded[-1]), size)
        if not (self.training and self.deep_supervision):
            return logits
        # decoded[-1 - s] has the resolution of stage s; crop each map to the part that covers the input
        coarse = [
            crop_spatial(aux_head(decoded[-1 - s]), [-(-n // t) for n, t in zip(size, self.stage_strides[s])])
            for s, aux_head in enumerate(self.aux_heads, start=1)
        ]
        return [logits, *coarse]


LKMUNet.thop_multiplicity = {
    # nnU-Net's ConvDropoutNormReLU registers its conv and norm twice, as `.conv`/`.norm` and in `.all_modules`;
    # the transposed convolutions and the heads are plain convolutions there too, counted once
    Convolution: 2,
    # the reference's decoder holds the encoder (`decoder.encoder`), so thop walks the whole encoder twice: stem,
    # residual stages and PiM/PaM layers (encoder convolutions and norms thus count 4x)
    (LKMUNet, "stem"): 2,
    (LKMUNet, "stages"): 2,
    (LKMUNet, "pixel_mambas"): 2,
    (LKMUNet, "patch_mambas"): 2,
    # the measured 185.3 M fits only with each Mamba's in_proj, conv1d and x_proj visible and its dt_proj not
    (Mamba, "dt_proj"): 0,
}
