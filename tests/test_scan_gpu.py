"""GPU checks of the op and the mixer: torch vs mamba-ssm's kernel, and state-dict compatibility with mamba_ssm.

Figures the foundation issue asks for are printed as ``FIGURE`` lines (run with ``-s``).
"""

import pytest
import torch
from scan_inputs import relative_error, scan_operands

from monai_mamba_nets import Mamba, available_backends, selective_scan
from monai_mamba_nets.ops import selective_scan_ref

pytestmark = pytest.mark.gpu

needs_cuda_backend = pytest.mark.skipif(
    not torch.cuda.is_available() or "cuda" not in available_backends(), reason="mamba-ssm's kernel is not installed"
)


def _grads(backend, ops, grad_out):
    leaves = {k: v.clone().requires_grad_() for k, v in ops.items()}
    out = selective_scan(**leaves, delta_softplus=True, backend=backend)
    (out * grad_out).sum().backward()
    return out.detach(), {k: v.grad for k, v in leaves.items()}


def test_torch_backend_on_gpu_matches_reference():
    ops = scan_operands(2, 16, 1000, 16, groups=2, device="cuda")
    out = selective_scan(**ops, delta_softplus=True, backend="torch")
    ref = selective_scan_ref(**{k: v.double() for k, v in ops.items()}, delta_softplus=True)
    assert relative_error(out, ref) <= 1e-5


@needs_cuda_backend
def test_torch_and_cuda_backends_agree():
    ops = scan_operands(2, 64, 4096, 16, device="cuda")
    grad_out = torch.randn(2, 64, 4096, device="cuda")
    out_t, grads_t = _grads("torch", ops, grad_out)
    out_c, grads_c = _grads("cuda", ops, grad_out)
    diff = (out_t - out_c).abs().max().item()
    print(f"FIGURE scan (B2,D64,N16,L4096) max|torch-cuda| = {diff:.3e} at max|y| = {out_t.abs().max().item():.3e}")
    torch.testing.assert_close(out_c, out_t, rtol=6e-4, atol=2e-3)
    for name in ops:
        err = relative_error(grads_c[name], grads_t[name])
        print(f"FIGURE scan grad {name}: relative max error torch vs cuda = {err:.3e}")
        assert err <= 1e-3, name


@needs_cuda_backend
def test_mixer_backends_agree_on_long_sequences():
    torch.manual_seed(0)
    m = Mamba(64, scan_backend="torch").cuda()
    x = torch.randn(2, 32768, 64, device="cuda")
    with torch.no_grad():
        y_torch = m(x)
        m.scan_backend = "cuda"
        y_cuda = m(x)
    diff = (y_torch - y_cuda).abs().max().item()
    y_max = y_torch.abs().max().item()
    print(f"FIGURE Mamba(64) on (2, 32768, 64): max|torch-cuda| = {diff:.3e}, max|y| = {y_max:.3e}")
    assert relative_error(y_cuda, y_torch) <= 1e-4


@needs_cuda_backend
def test_state_dict_round_trip_with_mamba_ssm():
    mamba_ssm = pytest.importorskip("mamba_ssm")
    torch.manual_seed(1)
    theirs = mamba_ssm.Mamba(d_model=64, d_state=16, d_conv=4, expand=2).cuda()
    ours = Mamba(64).cuda()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4096, 64, device="cuda")
    with torch.no_grad():
        err_in = relative_error(ours(x), theirs(x))
        ours_fresh = Mamba(64).cuda()
        theirs.load_state_dict(ours_fresh.state_dict())
        err_out = relative_error(theirs(x), ours_fresh(x))
    print(f"FIGURE state_dict mamba_ssm->ours rel err {err_in:.3e}; ours->mamba_ssm rel err {err_out:.3e}")
    assert err_in <= 1e-3 and err_out <= 1e-3
