"""The selective-scan op on CPU: the torch backend against a float64 sequential reference."""

import pytest
import torch
from scan_inputs import relative_error, scan_operands

from monai_mamba_nets import available_backends, selective_scan
from monai_mamba_nets.ops import selective_scan_ref
from monai_mamba_nets.ops.scan_torch import SEGMENT_ELEMENTS, _plan


def _float64(operands):
    return {k: v.double() for k, v in operands.items()}


@pytest.mark.parametrize("regime", ["trained", "init"])
@pytest.mark.parametrize(
    "batch, dim, length, dstate",
    [(2, 8, 1, 16), (2, 8, 97, 16), (1, 16, 4099, 16), (1, 4, 32768, 16)],
)
def test_forward_matches_float64_reference(regime, batch, dim, length, dstate):
    ops = scan_operands(batch, dim, length, dstate, regime=regime)
    out, last = selective_scan(**ops, delta_softplus=True, return_last_state=True, backend="torch")
    ref, ref_last = selective_scan_ref(**_float64(ops), delta_softplus=True, return_last_state=True)
    assert out.dtype == torch.float32 and out.shape == (batch, dim, length)
    assert last.shape == (batch, dim, dstate)
    assert relative_error(out, ref) <= 1e-5
    assert relative_error(last, ref_last) <= 1e-5


def test_long_sequence_spans_several_segments():
    """Sequences longer than one segment carry the state across segment boundaries."""
    batch, dim, dstate = 1, 64, 16
    length = 3 * SEGMENT_ELEMENTS // (batch * dim * dstate) + 5
    segment, _ = _plan(batch, dim, length, dstate)
    assert segment < length
    ops = scan_operands(batch, dim, length, dstate, seed=3)
    out, last = selective_scan(**ops, delta_softplus=True, return_last_state=True, backend="torch")
    ref, ref_last = selective_scan_ref(**_float64(ops), delta_softplus=True, return_last_state=True)
    assert relative_error(out, ref) <= 1e-5
    assert relative_error(last, ref_last) <= 1e-5


@pytest.mark.parametrize("groups", [None, 1, 2, 4])
@pytest.mark.parametrize("with_z, with_D, with_bias", [(True, True, True), (False, False, False), (True, False, True)])
def test_optional_operands_and_groups(groups, with_z, with_D, with_bias):
    ops = scan_operands(2, 8, 53, 4, groups=groups, seed=1)
    ops["z"] = ops["z"] if with_z else None
    ops["D"] = ops["D"] if with_D else None
    ops["delta_bias"] = ops["delta_bias"] if with_bias else None
    out = selective_scan(**ops, delta_softplus=True, backend="torch")
    ref = selective_scan_ref(**{k: None if v is None else v.double() for k, v in ops.items()}, delta_softplus=True)
    assert relative_error(out, ref) <= 1e-5


def test_time_invariant_B_and_no_softplus():
    ops = scan_operands(2, 8, 41, 4, time_invariant_B=True, seed=2)
    ops["delta"] = ops["delta"].abs()  # without softplus a negative dt would make the recurrence grow
    ops["delta_bias"] = ops["delta_bias"].abs()
    out = selective_scan(**ops, delta_softplus=False, backend="torch")
    ref = selective_scan_ref(**_float64(ops), delta_softplus=False)
    assert relative_error(out, ref) <= 1e-5


def test_groups_change_the_result():
    """Channel d must read group d // (dim / G): a wrong group mapping would not be caught by G = 1 tests."""
    ops = scan_operands(1, 8, 30, 4, groups=4, seed=4)
    swapped = dict(ops, B=ops["B"].flip(1), C=ops["C"].flip(1))
    regrouped = selective_scan(**swapped, delta_softplus=True, backend="torch")
    assert relative_error(regrouped, selective_scan(**ops, delta_softplus=True, backend="torch")) > 1e-2


@pytest.mark.parametrize("groups, time_invariant_B", [(None, False), (2, False), (None, True)])
def test_gradcheck_float64(groups, time_invariant_B):
    ops = scan_operands(2, 4, 23, 3, groups=groups, time_invariant_B=time_invariant_B, seed=5)
    names = list(ops)
    inputs = [ops[k].double().requires_grad_() for k in names]

    def scan(*tensors):
        return selective_scan(**dict(zip(names, tensors)), delta_softplus=True, backend="torch")

    assert torch.autograd.gradcheck(scan, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("length", [1, 131, 1031])
def test_gradients_match_autograd_through_reference(length):
    ops = scan_operands(2, 8, length, 16, groups=2, seed=6)
    grad_out = torch.randn(2, 8, length, generator=torch.Generator().manual_seed(7))
    ours = {k: v.clone().requires_grad_() for k, v in ops.items()}
    (selective_scan(**ours, delta_softplus=True, backend="torch") * grad_out).sum().backward()
    ref = {k: v.double().requires_grad_() for k, v in ops.items()}
    (selective_scan_ref(**ref, delta_softplus=True) * grad_out.double()).sum().backward()
    for name in ops:
        assert relative_error(ours[name].grad, ref[name].grad) <= 1e-4, name


def test_low_precision_inputs_compute_in_float32():
    ops = scan_operands(1, 8, 64, 4, dtype=torch.bfloat16, seed=8)
    out = selective_scan(**ops, delta_softplus=True, backend="torch")
    assert out.dtype == torch.bfloat16
    ref = selective_scan_ref(**_float64(ops), delta_softplus=True)
    assert relative_error(out, ref) <= 1e-2


def test_last_state_has_no_gradient():
    ops = {k: v.requires_grad_() for k, v in scan_operands(1, 4, 10, 4).items()}
    out, last = selective_scan(**ops, delta_softplus=True, return_last_state=True, backend="torch")
    assert out.requires_grad and not last.requires_grad


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("u", torch.randn(2, 8), "`u` must be 3-D"),
        ("delta", torch.randn(2, 8, 9), "`delta` must have shape"),
        ("A", torch.randn(7, 4), "`A` must have shape"),
        ("B", torch.randn(2, 4, 9), "`B` must have shape"),
        ("C", torch.randn(2, 3, 4, 10), "`C` has 3 groups"),
        ("D", torch.randn(9), "`D` must have shape"),
        ("z", torch.randn(2, 8, 11), "`z` must have shape"),
        ("delta_bias", torch.randn(8, 1), "`delta_bias` must have shape"),
        ("u", torch.randint(0, 3, (2, 8, 10)), "`u` must be a real floating-point tensor"),
        ("A", torch.randn(8, 4, dtype=torch.complex64), "`A` must be a real floating-point tensor"),
        ("B", torch.randn(2, 16, 4, 10), "`B` has 16 groups"),
        ("B", torch.randn(5), "`B` must be (dim, N)"),
        ("delta", torch.randn(2, 8, 10, dtype=torch.float64), "`delta` must have u's dtype"),
    ],
)
def test_bad_input_names_the_argument(name, value, message):
    ops = scan_operands(2, 8, 10, 4, groups=2)
    ops[name] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        selective_scan(**ops, backend="torch")


def test_mismatched_groups_of_B_and_C():
    ops = scan_operands(2, 8, 10, 4, groups=2)
    ops["C"] = torch.randn(2, 4, 4, 10)
    with pytest.raises(ValueError, match="same number of groups"):
        selective_scan(**ops)


def test_unknown_backend_names_the_argument():
    with pytest.raises(ValueError, match="`backend`"):
        selective_scan(**scan_operands(1, 2, 3, 2), backend="fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_forcing_cuda_without_gpu_explains_how_to_install(monkeypatch):
    with pytest.raises(RuntimeError, match="mamba-ssm|monai-mamba-nets\\[cuda\\]"):
        selective_scan(**scan_operands(1, 2, 3, 2), backend="cuda")
    monkeypatch.setenv("MONAI_MAMBA_SCAN_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run here"):
        selective_scan(**scan_operands(1, 2, 3, 2))
    assert "cuda" not in available_backends()


def test_environment_variable_is_validated(monkeypatch):
    monkeypatch.setenv("MONAI_MAMBA_SCAN_BACKEND", "gpu-please")
    with pytest.raises(ValueError, match="MONAI_MAMBA_SCAN_BACKEND"):
        selective_scan(**scan_operands(1, 2, 3, 2))
    monkeypatch.setenv("MONAI_MAMBA_SCAN_BACKEND", "torch")
    ops = scan_operands(1, 2, 3, 2)
    assert torch.equal(selective_scan(**ops), selective_scan(**ops, backend="torch"))


@pytest.mark.parametrize(
    "runnable, expected",
    [(("cuda", "triton"), "triton"), (("cuda",), "cuda"), (("triton",), "triton"), ((), "torch")],
)
@pytest.mark.parametrize("length", [16, 4096, 32768])
def test_auto_order(monkeypatch, runnable, length, expected):
    """auto: the Triton kernels at every length, else mamba-ssm's kernel, torch last."""
    import importlib

    from monai_mamba_nets.ops import resolve_backend

    op = importlib.import_module("monai_mamba_nets.ops.selective_scan")  # the module, not the function of its name
    for name in ("cuda", "triton"):
        reason = None if name in runnable else f"{name} is not runnable in this test"
        monkeypatch.setattr(op, f"_{name}_applicability", lambda *args, reason=reason: reason)
    ops = scan_operands(1, 2, length, 2)
    assert resolve_backend("auto", ops["u"], ops["A"], ops["B"], ops["C"]) == expected


def test_cpu_never_imports_mamba_ssm():
    import sys

    selective_scan(**scan_operands(1, 2, 3, 2))
    assert not any(name.split(".")[0] in ("mamba_ssm", "causal_conv1d") for name in sys.modules)


def test_gradients_across_many_segments(monkeypatch):
    """Force short segments so that the backward carries the adjoint across segment boundaries."""
    from monai_mamba_nets.ops import scan_torch

    monkeypatch.setattr(scan_torch, "SEGMENT_ELEMENTS", 2 * 8 * 16 * 64)
    assert _plan(2, 8, 300, 16)[0] == 64
    ops = scan_operands(2, 8, 300, 16, groups=2, seed=9)
    ours = {k: v.clone().requires_grad_() for k, v in ops.items()}
    out, last = selective_scan(**ours, delta_softplus=True, return_last_state=True, backend="torch")
    out.sum().backward()
    ref = {k: v.double().requires_grad_() for k, v in ops.items()}
    ref_out, ref_last = selective_scan_ref(**ref, delta_softplus=True, return_last_state=True)
    ref_out.sum().backward()
    assert relative_error(out, ref_out) <= 1e-5 and relative_error(last, ref_last) <= 1e-5
    for name in ops:
        assert relative_error(ours[name].grad, ref[name].grad) <= 1e-4, name
