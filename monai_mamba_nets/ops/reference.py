"""Sequential selective scan: one Python step per time step. The test oracle and the benchmarks' baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_ref"]


def _per_channel(x: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C as (batch | 1, dim, N, L | 1): groups repeated to their channels, time-invariant as length 1."""
    if x.dim() == 2:
        return x.unsqueeze(0).unsqueeze(-1)
    if x.dim() == 3:
        return x.unsqueeze(1)
    return x.repeat_interleave(dim // x.shape[1], dim=1)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """The recurrence of kernels.md section 1.1, step by step, in ``promote(u.dtype, float32)``.

    Differentiable through autograd (slowly). Same arguments and returns as
    :func:`monai_mamba_nets.selective_scan`.
    """
    dtype = torch.promote_types(u.dtype, torch.float32)
    dim = u.shape[1]
    uc, dt = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bc, Cc = _per_channel(B.to(dtype), dim), _per_channel(C.to(dtype), dim)
    decay = torch.exp(dt.unsqueeze(-1) * A.to(dtype).unsqueeze(1))  # (batch, dim, L, N)
    state = u.new_zeros((u.shape[0], dim, A.shape[-1]), dtype=dtype)
    ys = []
    for t in range(u.shape[-1]):
        b_t = Bc[..., t if Bc.shape[-1] > 1 else 0]
        c_t = Cc[..., t if Cc.shape[-1] > 1 else 0]
        state = decay[:, :, t] * state + (dt[:, :, t] * uc[:, :, t]).unsqueeze(-1) * b_t
        ys.append((state * c_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + uc * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    out = y.to(u.dtype)
    return (out, state) if return_last_state else out
