"""Mamba-UNet (Wang et al. 2024, arXiv 2402.05079): a pure visual-Mamba (VSS / SS2D) UNet in the layout of Swin-UNet.

Module and parameter names follow the reference (``ziyangwang007/Mamba-UNet``, ``code/networks/mamba_sys.py``) so
that its state dicts and the ImageNet VMamba-Tiny encoder weights load by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..layers.patch import PatchEmbed2D, PatchExpand2D, PatchMerging2D
from ..layers.ss2d import VSSBlock
from .inputs import crop_spatial, pad_to_multiple, plain_tensor

__all__ = ["MambaUNet", "VSSLayer", "PretrainedLoadReport"]

# the stem width of ImageNet VMamba weights, to which grey-scale input is repeated
RGB_CHANNELS = 3
_ENCODER_KEY = re.compile(r"layers\.(\d+)\.(.+)")


class VSSLayer(nn.Module):
    """One stage of Mamba-UNet: VSS blocks, then an optional patch merging (encoder) or expanding (decoder).

    Args:
        dim: token channels.
        drop_path: stochastic-depth probability of each block; its length is the number of blocks.
        resample: ``"down"`` (``downsample``: PatchMerging2D, dim -> 2 dim at half resolution), ``"up"``
            (``upsample``: PatchExpand2D, dim -> dim / 2 at double resolution) or None.
        ss2d_kwargs: further :class:`~monai_mamba_nets.layers.SS2D` arguments.
    """

    def __init__(self, dim: int, drop_path: Sequence[float], resample: str | None = None, **ss2d_kwargs) -> None:
        super().__init__()
        if resample not in ("down", "up", None):
            raise ValueError(f"VSSLayer: `resample` must be 'down', 'up' or None, got {resample!r}.")
        self.blocks = nn.ModuleList([VSSBlock(dim, drop_path=p, **ss2d_kwargs) for p in drop_path])
        self.downsample = PatchMerging2D(dim) if resample == "down" else None
        self.upsample = PatchExpand2D(dim, dim // 2, scale=2) if resample == "up" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, dim) -> the blocks' output, merged or expanded when the stage resamples."""
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


@dataclass
class PretrainedLoadReport:
    """What :meth:`MambaUNet.load_pretrained_encoder` did.

    Attributes:
        loaded: model keys that received a checkpoint tensor.
        skipped: checkpoint keys (and their decoder mirrors) that were not loaded, with the reason.
        missing: model keys that kept their initial value.
    """

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)}, skipped {len(self.skipped)}, missing {len(self.missing)} keys"]
        lines += [f"  skipped {key}: {reason}" for key, reason in self.skipped.items()]
        lines += [f"  missing {key}" for key in self.missing]
        return "\n".join(lines)


class MambaUNet(nn.Module):
    """Mamba-UNet: patch embedding, VSS encoder with patch merging, VSS decoder with patch expanding and skip
    concatenation, final x``patch_size`` expansion and a bias-free 1x1 head.

    The skips are the *inputs* of the encoder stages (the patch embedding and the merged outputs of the stages
    before), concatenated after the decoder features and projected back by ``concat_back_dim``. With the
    defaults and 3 input channels the network has 19,121,664 parameters for 4 classes (19,122,144 for 9,
    19,121,472 for 2), exactly as the reference.

    Inputs of any size are zero-padded at the bottom and right to a multiple of
    ``patch_size * 2 ** (len(depths) - 1)`` (32 by default) and the logits are cropped back to the input size.

    Args:
        spatial_dims: must be 2.
        in_channels: channels of the input image.
        out_channels: number of classes (channels of the logits).
        embed_dim: channels after the patch embedding; stage i has ``embed_dim * 2 ** i``.
        depths: VSS blocks per encoder stage (the last stage is the bottleneck); the decoder mirrors all but the last.
        d_state: SSM state size of every SS2D.
        drop_path_rate: the largest stochastic-depth probability; probabilities rise linearly over the encoder
            blocks and the decoder reuses those of the encoder stage it mirrors.
        patch_size: side of the embedding patches, also the factor of the final expansion.
        repeat_grayscale: repeat a 1-channel input to 3 channels before a 3-channel stem, as the reference does so
            that ImageNet VMamba weights fit. None (default) means True when ``in_channels == 1``; True requires
            ``in_channels == 1``.
        scan_backend: backend of :func:`monai_mamba_nets.selective_scan` used by every SS2D.

    Raises:
        ValueError: an argument is out of range.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
        repeat_grayscale: bool | None = None,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"MambaUNet: only `spatial_dims=2` is supported (SS2D scans 2D maps), got {spatial_dims}.")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("embed_dim", embed_dim)):
            if value < 1:
                raise ValueError(f"MambaUNet: `{name}` must be positive, got {value}.")
        if patch_size < 1:
            raise ValueError(f"MambaUNet: `patch_size` must be positive, got {patch_size}.")
        depths = tuple(depths)
        if len(depths) < 2 or any(d < 0 for d in depths):
            raise ValueError(f"MambaUNet: `depths` needs at least 2 stages of >= 0 blocks, got {depths}.")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"MambaUNet: `drop_path_rate` must be in [0, 1), got {drop_path_rate}.")
        if repeat_grayscale is None:
            repeat_grayscale = in_channels == 1
        elif repeat_grayscale and in_channels != 1:
            raise ValueError(f"MambaUNet: `repeat_grayscale=True` needs `in_channels=1`, got {in_channels}.")

        self.in_channels, self.out_channels = in_channels, out_channels
        self.repeat_grayscale = repeat_grayscale
        self.num_layers = len(depths)
        self.size_divisor = patch_size * 2 ** (self.num_layers - 1)
        dims = [embed_dim * 2**i for i in range(self.num_layers)]
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stage_rates = [rates[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(self.num_layers)]
        ss2d_kwargs = {"d_state": d_state, "scan_backend": scan_backend}

        self.patch_embed = PatchEmbed2D(patch_size, RGB_CHANNELS if repeat_grayscale else in_channels, embed_dim)
        self.layers = nn.ModuleList(
            VSSLayer(dims[i], stage_rates[i], "down" if i < self.num_layers - 1 else None, **ss2d_kwargs)
            for i in range(self.num_layers)
        )
        # decoder step i works at the width of encoder stage n - 1 - i; step 0 only expands the bottleneck
        self.layers_up = nn.ModuleList([PatchExpand2D(dims[-1], dims[-1] // 2, scale=2)])
        self.concat_back_dim = nn.ModuleList([nn.Identity()])
        for i in range(1, self.num_layers):
            stage = self.num_layers - 1 - i
            self.concat_back_dim.append(nn.Linear(2 * dims[stage], dims[stage]))
            self.layers_up.append(VSSLayer(dims[stage], stage_rates[stage], "up" if stage > 0 else None, **ss2d_kwargs))
        self.norm = nn.LayerNorm(dims[-1])
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = PatchExpand2D(embed_dim, embed_dim, scale=patch_size)
        self.output = nn.Conv2d(embed_dim, out_channels, kernel_size=1, bias=False)
        self.apply(_init_linear_and_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: image (batch, in_channels, H, W), any H and W.

        Returns:
            logits (batch, out_channels, H, W).
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"MambaUNet: input must be (batch, in_channels={self.in_channels}, H, W), got shape {tuple(x.shape)}."
            )
        x = plain_tensor(x)
        height, width = x.shape[2:]
        if self.repeat_grayscale:
            x = x.expand(-1, RGB_CHANNELS, -1, -1)
        x = pad_to_multiple(x, (self.size_divisor, self.size_divisor))

        x = self.patch_embed(x)
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        x = self.norm(x)
        for i, (layer_up, concat_back) in enumerate(zip(self.layers_up, self.concat_back_dim)):
            if i > 0:
                x = concat_back(torch.cat([x, skips[self.num_layers - 1 - i]], dim=-1))
            x = layer_up(x)
        x = self.up(self.norm_up(x)).permute(0, 3, 1, 2)
        return crop_spatial(self.output(x), (height, width))

    def load_pretrained_encoder(self, path: str | Path, weights_only: bool = True) -> PretrainedLoadReport:
        """Initialise from an ImageNet VMamba checkpoint the way the reference's ``load_from`` does.

        Every checkpoint key loads under its own name (``patch_embed.*``, ``layers.{i}.*``, ...), and each
        ``layers.{i}.*`` key is also mirrored to ``layers_up.{n - 1 - i}.*``, so that the decoder stages start from
        the encoder stage of the same width. Keys the model lacks and keys whose shape differs are skipped; model
        keys that get nothing keep their initial value. The weights are copied in place.

        Args:
            path: local checkpoint file: a state dict, or a dict holding one under ``"model"`` (VMamba's layout,
                e.g. ``vssmtiny_dp01_ckpt_epoch_292.pth``).
            weights_only: passed to :func:`torch.load`; set False only for a trusted file that pickles other
                objects (a training config, for instance).

        Returns:
            the report of loaded, skipped and missing keys.

        Raises:
            FileNotFoundError: ``path`` is not a file.
            ValueError: the file holds no state dict of tensors.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"MambaUNet.load_pretrained_encoder: no checkpoint file at {path}.")
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
        state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(
                f"MambaUNet.load_pretrained_encoder: {path} holds no state dict of tensors (or one under 'model')."
            )

        candidates = {key: (value, key) for key, value in state.items()}
        for key, value in state.items():
            match = _ENCODER_KEY.fullmatch(key)
            if match and int(match[1]) < self.num_layers:
                candidates[f"layers_up.{self.num_layers - 1 - int(match[1])}.{match[2]}"] = (value, key)

        model_state = self.state_dict()
        report, to_load = PretrainedLoadReport(), {}
        for key, (value, source) in candidates.items():
            origin = "" if source == key else f" (mirrored from {source})"
            if key not in model_state:
                report.skipped[key] = "not in the model" + origin
            elif value.shape != model_state[key].shape:
                shapes = f"shape {tuple(value.shape)} in the checkpoint, {tuple(model_state[key].shape)} in the model"
                report.skipped[key] = shapes + origin
            else:
                to_load[key] = value
        self.load_state_dict(to_load, strict=False)
        report.loaded = [key for key in model_state if key in to_load]
        report.missing = [key for key in model_state if key not in to_load]
        return report


def _init_linear_and_norm(module: nn.Module) -> None:
    """The reference's init: truncated normal (std 0.02) Linear weights with zero bias, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
