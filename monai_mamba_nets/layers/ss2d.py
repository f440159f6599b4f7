"""SS2D, the 2D selective scan of VMamba (v0), and the VSS block built on it (Mamba-UNet).

A feature map is read as four sequences (cross-scan): row-major, column-major and the reverse of each. Each
direction has its own ``x_proj`` and ``dt_proj``, all four run through **one** grouped selective-scan call, and
the outputs are mapped back to row-major order and summed (cross-merge) before ``out_norm``. Parameter names
and shapes follow VMamba-v0 so that its ImageNet checkpoints load as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import DropPath

from ..ops.selective_scan import selective_scan
from .mamba import init_dt_projection

__all__ = ["cross_scan", "cross_merge", "SS2D", "VSSBlock", "NUM_DIRECTIONS"]

NUM_DIRECTIONS = 4


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """Read a map in the four scan orders.

    Args:
        x: (batch, C, H, W).

    Returns:
        (batch, 4, C, H * W): direction 0 is the row-major flatten (index h * W + w), direction 1 the
        column-major flatten (index w * H + h), directions 2 and 3 are directions 0 and 1 reversed.
    """
    rows_and_columns = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)
    return torch.cat([rows_and_columns, rows_and_columns.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sum four direction-ordered sequences back in row-major order; the adjoint of :func:`cross_scan`.

    Args:
        y: (batch, 4, C, height * width), direction k in the order :func:`cross_scan` gives it.
        height, width: the map the sequences were read from.

    Returns:
        (batch, C, height * width) in row-major order.
    """
    if y.dim() != 4 or y.shape[1] != NUM_DIRECTIONS or y.shape[-1] != height * width:
        raise ValueError(
            f"cross_merge: `y` must be (batch, {NUM_DIRECTIONS}, C, {height} * {width}), got shape {tuple(y.shape)}."
        )
    rows_and_columns = y[:, :2] + y[:, 2:].flip(-1)
    columns = rows_and_columns[:, 1].unflatten(-1, (width, height)).transpose(-1, -2).flatten(-2)
    return rows_and_columns[:, 0] + columns


class SS2D(nn.Module):
    """VMamba's 2D selective-scan mixer (SS2D, "v0" as used by Mamba-UNet), channels-last.

    Forward: ``in_proj`` -> x, z; x -> depthwise Conv2d -> SiLU -> cross-scan -> per-direction ``x_proj`` and
    ``dt_proj`` -> one selective scan with B/C grouped per direction (batch, 4, N, L) -> cross-merge (sum) ->
    ``out_norm`` -> * SiLU(z) -> ``out_proj``. The scan runs in (at least) fp32 whatever autocast does.

    Parameters: 6 D^2 + 16 r D + 424 D for d_model D, d_state 16, d_conv 3, expand 2 (D = 96: 105,216).

    Args:
        d_model: channels D of the tokens.
        d_state: state size N per channel.
        d_conv: kernel size of the depthwise 2D convolution (odd).
        expand: inner channels Di = expand * d_model.
        dt_rank: rank r of the time-step projections; ``"auto"`` = ceil(d_model / 16).
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: time-step init, as in Mamba.
        dropout: dropout after ``out_proj``.
        conv_bias: bias in the depthwise convolution.
        bias: bias in ``in_proj`` and ``out_proj``.
        scan_backend: backend of :func:`monai_mamba_nets.selective_scan`.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        dropout: float = 0.0,
        conv_bias: bool = True,
        bias: bool = False,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if d_conv < 1 or d_conv % 2 == 0:
            raise ValueError(f"SS2D: `d_conv` must be a positive odd kernel size, got {d_conv}.")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        k, di = NUM_DIRECTIONS, self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * di, bias=bias)
        self.conv2d = nn.Conv2d(di, di, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=di, bias=conv_bias)
        # per-direction projections, stacked: x_proj (K, r + 2N, Di) and dt_proj (K, Di, r) + (K, Di)
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, di))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, di, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, di))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(k * di, 1))
        self.Ds = nn.Parameter(torch.ones(k * di))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        self.out_norm = nn.LayerNorm(di)
        self.out_proj = nn.Linear(di, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

        with torch.no_grad():
            # the default init of the nn.Linear each direction's x_proj was stacked from
            self.x_proj_weight.uniform_(-(di**-0.5), di**-0.5)
        init_dt_projection(self.dt_projs_weight, self.dt_projs_bias, dt_min, dt_max, dt_init, dt_scale, dt_init_floor)
        self.dt_projs_bias._no_reinit = True

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """The four-direction scan of a map, summed in row-major order (before ``out_norm``).

        Args:
            x: (batch, d_inner, H, W), the activated convolution output.

        Returns:
            (batch, d_inner, H, W) in the scan's dtype (at least fp32).
        """
        batch, channels, height, width = x.shape
        if channels != self.d_inner:
            raise ValueError(f"SS2D: the scanned map must have d_inner = {self.d_inner} channels, got {channels}.")
        length = height * width
        xs = cross_scan(x)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        dtype = torch.promote_types(x.dtype, torch.float32)
        # the scan runs in fp32 (or wider) whatever autocast does, as in the reference
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = selective_scan(
                xs.reshape(batch, -1, length).to(dtype),
                dts.reshape(batch, -1, length).to(dtype),
                -torch.exp(self.A_logs.to(dtype)),
                Bs.to(dtype),
                Cs.to(dtype),
                self.Ds.to(dtype),
                z=None,
                delta_bias=self.dt_projs_bias.reshape(-1).to(dtype),
                delta_softplus=True,
                backend=self.scan_backend,
            )
        y = cross_merge(y.view(batch, NUM_DIRECTIONS, channels, length), height, width)
        return y.view(batch, channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: channels-last tokens (batch, H, W, d_model).

        Returns:
            (batch, H, W, d_model).
        """
        if x.dim() != 4 or x.shape[-1] != self.d_model:
            raise ValueError(f"SS2D: input must be (batch, H, W, d_model={self.d_model}), got shape {tuple(x.shape)}.")
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))
        y = self.out_norm(self.forward_core(x).permute(0, 2, 3, 1)).to(x.dtype)
        return self.dropout(self.out_proj(y * F.silu(z)))


class VSSBlock(nn.Module):
    """Visual state-space block: ``x + DropPath(SS2D(LayerNorm(x)))`` on channels-last tokens (no MLP).

    Args:
        hidden_dim: token channels.
        drop_path: stochastic-depth probability of the residual branch.
        ss2d_kwargs: further :class:`SS2D` arguments (d_state, scan_backend, ...).
    """

    def __init__(self, hidden_dim: int, drop_path: float = 0.0, **ss2d_kwargs) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.self_attention = SS2D(hidden_dim, **ss2d_kwargs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, hidden_dim) -> (batch, H, W, hidden_dim)."""
        return x + self.drop_path(self.self_attention(self.ln_1(x)))
