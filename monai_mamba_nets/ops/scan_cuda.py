"""mamba-ssm's compiled selective-scan kernel (``selective_scan_cuda``) behind our own autograd Function.

Only the extension module is imported, never the ``mamba_ssm`` package, whose import needs triton,
transformers and huggingface_hub and fails without a GPU build (kernels.md, section 2).
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

__all__ = ["cuda_extension", "selective_scan_cuda_kernel", "INSTALL_HINT"]

INSTALL_HINT = (
    "install mamba-ssm's CUDA kernels with `pip install 'monai-mamba-nets[cuda]' --no-build-isolation` on a "
    "machine with nvcc matching torch.version.cuda (offline: set MAMBA_FORCE_BUILD=TRUE and "
    "CAUSAL_CONV1D_FORCE_BUILD=TRUE), or choose the torch/triton backend"
)


@functools.lru_cache(maxsize=None)
def _import_extension(name: str) -> ModuleType | None:
    try:
        return __import__(name)
    except (ImportError, OSError):  # OSError: ABI or libcudart mismatch of a stale build
        return None


def cuda_extension(name: str = "selective_scan_cuda") -> ModuleType | None:
    """The compiled extension module ``name``, or None where it is missing, broken or there is no GPU."""
    if not torch.cuda.is_available():
        return None
    return _import_extension(name)


class SelectiveScanCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        kernel = cuda_extension()
        u, delta, z = (None if x is None else x.contiguous() for x in (u, delta, z))
        B, C = (x.contiguous() for x in (B, C))
        # the kernel takes grouped (batch, G, N, L); a plain (batch, N, L) is one group
        squeeze_B, squeeze_C = B.dim() == 3, C.dim() == 3
        B = B.unsqueeze(1) if squeeze_B else B
        C = C.unsqueeze(1) if squeeze_C else C
        D = None if D is None else D.contiguous()
        out, chunk_states, *gated = kernel.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, chunk_states, out if z is not None else None)
        ctx.delta_softplus, ctx.squeeze = delta_softplus, (squeeze_B, squeeze_C)
        result = gated[0] if z is not None else out
        if not return_last_state:
            return result
        # chunk_states interleaves (decay product, state) per N along its last dim
        last_state = chunk_states[:, :, -1, 1::2]
        ctx.mark_non_differentiable(last_state)
        return result, last_state

    @staticmethod
    def backward(ctx, dout, *unused):
        u, delta, A, B, C, D, z, delta_bias, chunk_states, out = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *dz = cuda_extension().bwd(
            u, delta, A, B, C, D, z, delta_bias, dout.contiguous(), chunk_states, out, None, ctx.delta_softplus, False
        )
        squeeze_B, squeeze_C = ctx.squeeze
        return (
            du,
            ddelta,
            dA,
            dB.squeeze(1) if squeeze_B else dB,
            dC.squeeze(1) if squeeze_C else dC,
            dD if D is not None else None,
            dz[0] if z is not None else None,
            ddelta_bias if delta_bias is not None else None,
            None,
            None,
        )


def selective_scan_cuda_kernel(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The ``cuda`` backend of :func:`monai_mamba_nets.selective_scan`; arguments are assumed validated."""
    return SelectiveScanCuda.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
