"""The Mamba-1 selective scan with mamba-ssm's ``selective_scan_fn`` contract and a choice of backends.

For batch b, channel d and state n (kernels.md, section 1.1)::

    dt      = softplus(delta + delta_bias)        (or delta + delta_bias without delta_softplus)
    h_t[n]  = exp(dt_t * A[d, n]) * h_{t-1}[n] + dt_t * B_t[n] * u_t
    out_t   = (sum_n C_t[n] * h_t[n] + D[d] * u_t) * silu(z_t)     (no gate without z)
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Callable

import torch

from .scan_cuda import INSTALL_HINT, cuda_extension, selective_scan_cuda_kernel
from .scan_torch import selective_scan_torch

__all__ = ["selective_scan", "available_backends", "resolve_backend", "BACKEND_ENV", "BACKENDS"]

BACKEND_ENV = "MONAI_MAMBA_SCAN_BACKEND"
BACKENDS = ("auto", "torch", "cuda", "triton")
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# the order in which `auto` tries the GPU backends: on the H100, the three networks train and infer faster in GPU
# time with the Triton kernels than with mamba-ssm's (docs/performance.md, "Whole networks")
AUTO_ORDER = ("triton", "cuda")
# the widest state the triton kernels are tested at (a thread keeps up to 16 states of a channel in registers)
_TRITON_MAX_DSTATE = 64


@functools.lru_cache(maxsize=None)
def _triton_module() -> ModuleType | None:
    """``scan_triton`` where Triton imports (it ships with CUDA builds of PyTorch), else None. Imported on first
    use only, so that CPU-only installs never touch Triton."""
    try:
        from . import scan_triton
    except (ImportError, OSError):
        return None
    return scan_triton


def _selective_scan_triton(*args):
    return _triton_module().selective_scan_triton(*args)


_IMPLEMENTATIONS: dict[str, Callable] = {
    "torch": selective_scan_torch,
    "cuda": selective_scan_cuda_kernel,
    "triton": _selective_scan_triton,
}


def _check_real_float(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"selective_scan: `{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if x.is_complex() or not x.is_floating_point():
        raise ValueError(f"selective_scan: `{name}` must be a real floating-point tensor, got dtype {x.dtype}.")


def _check_shape(name: str, x: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(x.shape) != expected:
        raise ValueError(f"selective_scan: `{name}` must have shape {meaning} = {expected}, got {tuple(x.shape)}.")


def _validate(u, delta, A, B, C, D, z, delta_bias) -> None:
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, x in named.items():
        if x is not None:
            _check_real_float(name, x)
    if u.dim() != 3:
        raise ValueError(f"selective_scan: `u` must be 3-D (batch, dim, L), got shape {tuple(u.shape)}.")
    batch, dim, length = u.shape
    _check_shape("delta", delta, tuple(u.shape), "(batch, dim, L)")
    if delta.dtype != u.dtype:
        raise ValueError(f"selective_scan: `delta` must have u's dtype {u.dtype}, got {delta.dtype}.")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: `A` must have shape (dim, N) with dim = {dim}, got {tuple(A.shape)}.")
    dstate = A.shape[1]
    groups = {}
    for name, x in (("B", B), ("C", C)):
        if x.dim() == 2:
            _check_shape(name, x, (dim, dstate), "(dim, N)")
        elif x.dim() == 3:
            _check_shape(name, x, (batch, dstate, length), "(batch, N, L)")
        elif x.dim() == 4:
            if x.shape[1] < 1 or dim % x.shape[1]:
                raise ValueError(
                    f"selective_scan: `{name}` has {x.shape[1]} groups, which must divide dim = {dim}; "
                    f"shape {tuple(x.shape)}."
                )
            _check_shape(name, x, (batch, x.shape[1], dstate, length), "(batch, groups, N, L)")
            groups[name] = x.shape[1]
        else:
            raise ValueError(
                f"selective_scan: `{name}` must be (dim, N), (batch, N, L) or (batch, groups, N, L), "
                f"got shape {tuple(x.shape)}."
            )
    if len(set(groups.values())) > 1:
        raise ValueError(f"selective_scan: `B` and `C` must have the same number of groups, got {groups}.")
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None:
            _check_shape(name, x, (dim,), "(dim,)")
    if z is not None:
        _check_shape("z", z, tuple(u.shape), "(batch, dim, L)")
    devices = {x.device for x in named.values() if x is not None}
    if len(devices) > 1:
        raise ValueError(f"selective_scan: all tensors must be on one device, got {sorted(map(str, devices))}.")


def _cuda_applicability(u, A, B, C, D, z, delta_bias) -> str | None:
    """Why mamba-ssm's kernel cannot run these tensors, or None when it can."""
    if not u.is_cuda:
        return f"tensors are on {u.device}, the kernel needs CUDA tensors"
    if cuda_extension() is None:
        return "the extension `selective_scan_cuda` (mamba-ssm) is not importable"
    if u.dtype not in _KERNEL_DTYPES:
        return f"the kernel takes float32/float16/bfloat16 u, got {u.dtype}"
    if A.dtype != torch.float32 or A.shape[1] > 256:
        return f"the kernel needs float32 A with N <= 256, got {A.dtype} with N = {A.shape[1]}"
    for name, x in (("B", B), ("C", C)):
        expected = torch.float32 if x.dim() == 2 else u.dtype
        if x.dtype != expected:
            return f"the kernel needs `{name}` of dtype {expected}, got {x.dtype}"
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None and x.dtype != torch.float32:
            return f"the kernel needs float32 `{name}`, got {x.dtype}"
    if z is not None and z.dtype != u.dtype:
        return f"the kernel needs `z` of u's dtype {u.dtype}, got {z.dtype}"
    return None


def _triton_applicability(u, A, B, C, D, z, delta_bias) -> str | None:
    """Why the Triton kernels cannot run these tensors, or None when they can."""
    if not u.is_cuda:
        return f"tensors are on {u.device}, the Triton kernels need CUDA tensors"
    if _triton_module() is None:
        return "`import triton` fails (Triton ships with CUDA builds of PyTorch)"
    for name, x in (("u", u), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("delta_bias", delta_bias)):
        if x is not None and x.dtype not in _KERNEL_DTYPES:
            return f"the kernels take float32/float16/bfloat16 tensors, got `{name}` of dtype {x.dtype}"
    if B.dim() == 2 or C.dim() == 2:
        return "the kernels take time-varying B and C only, (batch, N, L) or (batch, groups, N, L)"
    if A.shape[1] > _TRITON_MAX_DSTATE:
        return f"the kernels take N <= {_TRITON_MAX_DSTATE}, got N = {A.shape[1]}"
    return None


def _applicability(backend: str, *operands) -> str | None:
    """Why ``backend`` ("cuda" or "triton") cannot run these operands, or None when it can."""
    return (_cuda_applicability if backend == "cuda" else _triton_applicability)(*operands)


def available_backends() -> list[str]:
    """Backends that can run on this machine (``cuda`` and ``triton`` only with a GPU and, for ``cuda``,
    mamba-ssm's extension; for ``triton``, an importable Triton)."""
    backends = ["torch"] + (["cuda"] if cuda_extension() is not None else [])
    if torch.cuda.is_available() and _triton_module() is not None:
        backends.append("triton")
    return backends


def resolve_backend(backend: str, u, A, B, C, D=None, z=None, delta_bias=None) -> str:
    """The concrete backend a call runs on. ``auto`` defers to $MONAI_MAMBA_SCAN_BACKEND when it is set, and
    otherwise takes the first of triton, cuda, torch that can run the tensors."""
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"${BACKEND_ENV}={backend!r} is not one of {BACKENDS}.")
    elif backend not in BACKENDS:
        raise ValueError(f"selective_scan: `backend` must be one of {BACKENDS}, got {backend!r}.")
    if backend == "auto":
        for name in AUTO_ORDER:
            if _applicability(name, u, A, B, C, D, z, delta_bias) is None:
                return name
        return "torch"
    if backend in ("cuda", "triton"):
        reason = _applicability(backend, u, A, B, C, D, z, delta_bias)
        if reason is not None:
            hint = f"; {INSTALL_HINT}" if backend == "cuda" else ""
            raise RuntimeError(f"selective_scan: backend '{backend}' cannot run here: {reason}{hint}.")
    return backend


def selective_scan(
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
    backend: str = "auto",
):
    """Selective scan with the contract of mamba-ssm's ``selective_scan_fn``.

    Args:
        u: input, (batch, dim, L), float32/float16/bfloat16 (float64 on the torch backend).
        delta: time steps before ``delta_bias`` and softplus, same shape and dtype as ``u``.
        A: state matrix, (dim, N), real.
        B: input matrix: (dim, N) time-invariant, (batch, N, L), or grouped (batch, G, N, L) where channel d
            uses group d // (dim / G).
        C: output matrix, same forms as ``B``.
        D: skip, (dim,).
        z: gate, (batch, dim, L): the output is multiplied by silu(z).
        delta_bias: (dim,), added to ``delta`` before softplus.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state (batch, dim, N) in the compute dtype (no gradient).
        backend: ``"auto"`` (default: the Triton kernels on CUDA where Triton imports and the inputs suit them,
            else mamba-ssm's kernel where it is importable and applicable, else torch;
            $MONAI_MAMBA_SCAN_BACKEND overrides the choice), ``"torch"``, ``"cuda"`` or ``"triton"``.

    Returns:
        ``out`` of ``u``'s shape and dtype, or ``(out, last_state)`` when ``return_last_state``.

    Raises:
        ValueError: a tensor has the wrong rank, shape, dtype or device (the message names the argument).
        RuntimeError: ``cuda`` or ``triton`` was forced where that backend cannot run (the message says why).
    """
    _validate(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u, A, B, C, D, z, delta_bias)
    return _IMPLEMENTATIONS[name](u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
