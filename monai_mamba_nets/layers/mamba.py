"""The Mamba-1 mixer with mamba-ssm's parameter names, shapes and initialisation, running on any device."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.scan_cuda import cuda_extension
from ..ops.selective_scan import selective_scan

__all__ = ["Mamba", "BidirectionalMamba", "causal_conv1d_silu", "init_dt_projection", "upcast_half"]


def upcast_half(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 to fp32, other dtypes as they are: Mamba layers run in fp32, as in every reference network."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


_CONV_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _causal_conv1d_kernel():
    """causal-conv1d's Python entry point with SiLU, where its CUDA extension imports, else None."""
    if cuda_extension("causal_conv1d_cuda") is None:
        return None
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        return None
    return functools.partial(causal_conv1d_fn, activation="silu")


@functools.lru_cache(maxsize=None)
def _triton_conv_kernel():
    """Our Triton causal conv1d + SiLU where Triton imports, else None."""
    try:
        from ..ops.conv_triton import causal_conv1d_silu_triton
    except (ImportError, OSError):
        return None
    return causal_conv1d_silu_triton


def causal_conv1d_silu(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """silu(causal depthwise conv1d(x)) for x of shape (batch, channels, L), with ``conv`` padded by k - 1.

    On CUDA tensors of fp32, fp16 or bf16, uses causal-conv1d's kernel where it is installed, else our Triton
    kernel; ``F.conv1d`` otherwise (float64 models, CPU, no Triton), whose grouped-convolution backward is slow on GPU.
    """
    if x.is_cuda and x.dtype in _CONV_KERNEL_DTYPES:
        kernel = _causal_conv1d_kernel() or _triton_conv_kernel()
        if kernel is not None:
            return kernel(x, conv.weight.squeeze(1), conv.bias)
    return F.silu(conv(x)[..., : x.shape[-1]])


def _channel_rows(x: torch.Tensor) -> torch.Tensor:
    """A (batch, channels, L) tensor as (channels, batch * L) rows: a view where it is channel-major, else a copy."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _project_rows(weight: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A linear layer over channel-major rows (channels, tokens): weight @ rows, plus the bias of each output row."""
    return torch.mm(weight, rows) if bias is None else torch.addmm(bias[:, None], weight, rows)


def _project_tokens(projection: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``projection`` (a linear layer or identity) of every token of a (batch, channels, L) tensor: (batch, L, out).

    The channel-major rows are read as a transposed matrix, so nothing is copied to token-major order first; a linear
    layer gives contiguous tokens, and the rows' gradient comes back channel-major."""
    return projection(_channel_rows(x).t()).view(x.shape[0], x.shape[2], -1)


def _sequences(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """(channels, batch * L) rows as a channel-major (batch, channels, L) view."""
    return rows.view(rows.shape[0], batch, -1).transpose(0, 1)


def init_dt_projection(
    weight: torch.Tensor,
    bias: torch.Tensor,
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    dt_init: str = "random",
    dt_scale: float = 1.0,
    dt_init_floor: float = 1e-4,
) -> None:
    """Mamba's time-step projection init, in place: weight (..., Di, r) and bias (..., Di).

    The weight is uniform in +-r^-0.5 * dt_scale (or that constant); the bias is softplus^-1 of time steps drawn
    log-uniformly in [dt_min, dt_max] and floored at ``dt_init_floor``.
    """
    if dt_init not in ("random", "constant"):
        raise ValueError(f"init_dt_projection: `dt_init` must be 'random' or 'constant', got {dt_init!r}.")
    std = weight.shape[-1] ** -0.5 * dt_scale
    with torch.no_grad():
        if dt_init == "constant":
            weight.fill_(std)
        else:
            weight.uniform_(-std, std)
        dt = torch.exp(torch.rand_like(bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        # bias = softplus^-1(dt), so that softplus(bias) starts at dt
        bias.copy_(dt + torch.log(-torch.expm1(-dt)))


class Mamba(nn.Module):
    """Mamba-1 selective state-space mixer (Gu & Dao 2023), state-dict compatible with ``mamba_ssm.Mamba``.

    Args:
        d_model: token channels C.
        d_state: state size N per channel.
        d_conv: width of the causal depthwise convolution.
        expand: inner channels Di = expand * d_model.
        dt_rank: rank of the time-step projection; ``"auto"`` = ceil(d_model / 16).
        dt_min, dt_max: range of the log-uniform initial time steps.
        dt_init: ``"random"`` (uniform +-dt_rank^-0.5 * dt_scale) or ``"constant"`` init of ``dt_proj.weight``.
        dt_scale: scale of that init.
        dt_init_floor: smallest initial time step.
        conv_bias: bias in the depthwise convolution.
        bias: bias in ``in_proj`` and ``out_proj``.
        project_output: False replaces ``out_proj`` by identity, returning the Di inner channels (LKM-UNet
            shares one projection between two directions).
        scan_backend: backend of :func:`monai_mamba_nets.selective_scan`.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        project_output: bool = True,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias) if project_output else nn.Identity()
        init_dt_projection(self.dt_proj.weight, self.dt_proj.bias, dt_min, dt_max, dt_init, dt_scale, dt_init_floor)
        self.dt_proj.bias._no_reinit = True

    def inner(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Everything before ``out_proj``: tokens (batch, L, d_model) -> gated scan output (batch, d_inner, L),
        channel-major, fp32 (fp64 for a float64 model).

        Every step runs on channel-major rows, (channels, batch * L), and hands the scan channel-major
        (batch, channels, L) views: each projection is one matrix product over all tokens, and x, z, delta, B and C
        reach the scan, and its output the output projection, with no copy.
        """
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"Mamba: input must be (batch, L, d_model={self.d_model}), got shape {tuple(hidden_states.shape)}."
            )
        batch = hidden_states.shape[0]
        tokens = hidden_states.reshape(-1, self.d_model).t()
        xz = _project_rows(self.in_proj.weight, tokens, self.in_proj.bias)
        x, z = (_sequences(rows, batch) for rows in xz.chunk(2))
        x = causal_conv1d_silu(x, self.conv1d)
        dt, B, C = _project_rows(self.x_proj.weight, _channel_rows(x)).split([self.dt_rank, self.d_state, self.d_state])
        dt, B, C = (_sequences(rows, batch) for rows in (_project_rows(self.dt_proj.weight, dt), B, C))
        # the scan runs in fp32 (fp64 for a float64 model) whatever autocast does, as in mamba-ssm
        scan_dtype = torch.promote_types(self.D.dtype, torch.float32)
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            return selective_scan(
                x.to(scan_dtype),
                dt.to(scan_dtype),
                -torch.exp(self.A_log.to(scan_dtype)),
                B.to(scan_dtype),
                C.to(scan_dtype),
                self.D.to(scan_dtype),
                z=z.to(scan_dtype),
                delta_bias=self.dt_proj.bias.to(scan_dtype),
                delta_softplus=True,
                backend=self.scan_backend,
            )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """
        Args:
            hidden_states: tokens (batch, L, d_model).

        Returns:
            (batch, L, d_model), contiguous; or a (batch, L, d_inner) view of :meth:`inner`'s channel-major output
            when built with ``project_output=False``.
        """
        return _project_tokens(self.out_proj, self.inner(hidden_states))


class BidirectionalMamba(nn.Module):
    """Two Mamba mixers, one over the sequence and one over its reverse, summed before one shared ``out_proj``.

    This is the "BiM" of LKM-UNet: ``mamba_forw`` and ``mamba_backw`` keep mamba-ssm's names without their
    own output projection, and ``out_proj`` (Linear Di -> d_model, no bias) serves both.

    Args:
        d_model: token channels.
        mamba_kwargs: further :class:`Mamba` arguments (d_state, d_conv, expand, ...).
    """

    def __init__(self, d_model: int, **mamba_kwargs) -> None:
        super().__init__()
        self.mamba_forw = Mamba(d_model, project_output=False, **mamba_kwargs)
        self.mamba_backw = Mamba(d_model, project_output=False, **mamba_kwargs)
        self.out_proj = nn.Linear(self.mamba_forw.d_inner, d_model, bias=mamba_kwargs.get("bias", False))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, L, d_model) -> (batch, L, d_model)."""
        forward = self.mamba_forw(hidden_states)
        backward = self.mamba_backw(hidden_states.flip(1)).flip(1)
        # token views of channel-major results, as is their sum
        return _project_tokens(self.out_proj, (forward + backward).transpose(1, 2))
