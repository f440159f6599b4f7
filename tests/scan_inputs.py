"""Random selective-scan operands shared by the CPU and GPU scan tests."""

from __future__ import annotations

import torch


def scan_operands(
    batch: int,
    dim: int,
    length: int,
    dstate: int,
    groups: int | None = None,
    regime: str = "trained",
    time_invariant_B: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Operands of ``selective_scan`` as keyword arguments (softplus applies to ``delta``).

    ``regime="trained"`` is kernels.md's stress regime: dt = softplus(2 randn), A = -exp(U(0, 3.4)), where
    cumulative decays underflow. ``"init"`` is Mamba's initialisation: dt log-uniform in [1e-3, 0.1], A = -(1..N).
    """
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    if regime == "trained":
        delta = 2 * randn(batch, dim, length)
        A = -torch.exp(torch.rand(dim, dstate, generator=g) * 3.4)
        delta_bias = 0.5 * randn(dim)
    elif regime == "init":
        dt = torch.exp(torch.rand(batch, dim, length, generator=g) * (torch.log(torch.tensor(0.1 / 1e-3)))) * 1e-3
        delta = dt + torch.log(-torch.expm1(-dt))  # softplus^-1
        A = -torch.arange(1, dstate + 1, dtype=torch.float32).repeat(dim, 1)
        delta_bias = torch.zeros(dim)
    else:
        raise ValueError(regime)
    bc_shape = (batch, dstate, length) if groups is None else (batch, groups, dstate, length)
    operands = {
        "u": randn(batch, dim, length),
        "delta": delta,
        "A": A,
        "B": randn(dim, dstate) if time_invariant_B else randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(dim),
        "z": randn(batch, dim, length),
        "delta_bias": delta_bias,
    }
    out = {}
    for name, x in operands.items():
        keep_fp32 = name in ("A", "D", "delta_bias") or (name == "B" and time_invariant_B)
        out[name] = x.to(device=device, dtype=torch.float32 if keep_fp32 and dtype != torch.float64 else dtype)
    return out


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """max |x - ref| / max |ref|."""
    reference = reference.double()
    return ((x.double() - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()
