"""The Triton selective-scan backend: against the torch backend in float64, against mamba-ssm's kernel where it is
installed, and (on CPU, where Triton is installed) under Triton's interpreter.

Tolerances are the issue's (mamba-ssm's own test tolerances): fp32 rtol 6e-4 / atol 2e-3, bf16 3e-2 / 5e-2, and
mamba-ssm's fp16 3e-3 / 5e-3. For gradients summed over batch and L (dA, dD, ddelta_bias) and over the channels of a
group (dB, dC) the absolute tolerance is scaled by the gradient's magnitude, since their size grows with the sizes
summed over.
"""

import contextvars
import importlib.util
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from scan_inputs import relative_error, scan_operands

from monai_mamba_nets import available_backends, selective_scan
from monai_mamba_nets.ops import resolve_backend

HAS_TRITON = importlib.util.find_spec("triton") is not None
gpu = pytest.mark.gpu
TOLERANCES = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}
REDUCED = ("A", "B", "C", "D", "delta_bias")


def _run(backend, ops, grad_out, dtype=None, **kwargs):
    """Output and gradients of every operand; ``dtype`` casts the operands first (float64 for the oracle)."""
    leaves = {k: None if v is None else (v.to(dtype) if dtype else v).clone().requires_grad_() for k, v in ops.items()}
    out = selective_scan(**leaves, backend=backend, **kwargs)
    result = out[0] if isinstance(out, tuple) else out
    (result * grad_out.to(result.dtype)).sum().backward()
    return out, {k: v.grad for k, v in leaves.items() if v is not None}


def _assert_close(name, actual, expected, dtype):
    rtol, atol = TOLERANCES[dtype]
    scale = expected.abs().max().item() if name in REDUCED else 1.0
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol * max(1.0, scale), msg=name)


def _compare_with_float64_torch(ops, dtype=torch.float32, delta_softplus=True):
    """Triton on ``ops`` against the torch backend in float64 on the same (already rounded) values."""
    u = ops["u"]
    grad_out = torch.randn(u.shape, device=u.device, generator=torch.Generator(u.device).manual_seed(11)).to(u.dtype)
    (out, last), grads = _run("triton", ops, grad_out, delta_softplus=delta_softplus, return_last_state=True)
    (ref, ref_last), ref_grads = _run(
        "torch", ops, grad_out, dtype=torch.float64, delta_softplus=delta_softplus, return_last_state=True
    )
    assert (
        out.dtype == u.dtype
        and last.dtype == torch.float32
        and last.shape == (u.shape[0], u.shape[1], ops["A"].shape[1])
    )
    _assert_close("out", out, ref, dtype)
    _assert_close("last_state", last, ref_last, dtype)
    for name, grad in grads.items():
        assert grad.dtype == ops[name].dtype and grad.shape == ops[name].shape, name
        _assert_close(name, grad, ref_grads[name], dtype)


@gpu
@pytest.mark.parametrize("regime", ["trained", "init"])
@pytest.mark.parametrize(
    "batch, dim, length, dstate, groups",
    [
        (2, 64, 4096, 16, None),
        (1, 8, 700, 64, None),
        # the whole-sequence forward, the chunked backward
        (2, 16, 1000, 16, 4),
        (1, 8, 1, 16, None),
        (2, 8, 300, 5, 2),
        (1, 4, 129, 1, 1),
        # whole-sequence programs
        (2, 16, 196, 16, 4),
        (2, 8, 256, 64, None),
        (3, 24, 49, 16, 2),
    ],
)
def test_matches_float64_torch_backend(regime, batch, dim, length, dstate, groups):
    """Chunk-aligned and ragged L, L = 1, grouped B/C, N not a power of two, N = 1 and N = 64 (shorter chunks);
    sequences that take the whole-sequence forward, and short enough for whole-sequence programs."""
    _compare_with_float64_torch(scan_operands(batch, dim, length, dstate, groups=groups, regime=regime, device="cuda"))


@gpu
@pytest.mark.parametrize("length", [2000, 517, 100])  # chunked, whole-sequence forward, whole-sequence
@pytest.mark.parametrize(
    "with_z, with_D, with_bias, softplus", [(False, False, False, True), (True, False, True, False)]
)
def test_optional_operands(with_z, with_D, with_bias, softplus, length):
    ops = scan_operands(2, 8, length, 16, groups=2, device="cuda", seed=3)
    if not softplus:  # without softplus a negative dt would make the recurrence grow
        ops["delta"], ops["delta_bias"] = ops["delta"].abs(), ops["delta_bias"].abs()
    ops.update(z=ops["z"] if with_z else None, D=ops["D"] if with_D else None)
    ops["delta_bias"] = ops["delta_bias"] if with_bias else None
    _compare_with_float64_torch(ops, delta_softplus=softplus)


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("length", [2000, 517, 196])  # chunked, whole-sequence forward, whole-sequence
def test_half_precision_inputs(length, dtype):
    _compare_with_float64_torch(scan_operands(2, 32, length, 16, groups=2, dtype=dtype, device="cuda"), dtype)


@gpu
@pytest.mark.parametrize("length", [2000, 517, 196])  # chunked, whole-sequence forward, whole-sequence
def test_inference_runs_without_autograd(length):
    """Under no_grad, or where no operand requires grad, the kernels run without an autograd Function: the same
    output and last state (these chunks are too short for an inference plan to lengthen), and no graph."""
    ops = scan_operands(2, 16, length, 16, groups=2, device="cuda", seed=8)
    leaves = {k: v.clone().requires_grad_() for k, v in ops.items()}
    trained = selective_scan(**leaves, backend="triton", delta_softplus=True, return_last_state=True)
    with torch.no_grad():
        inferred = selective_scan(**ops, backend="triton", delta_softplus=True, return_last_state=True)
    constant = selective_scan(**ops, backend="triton", delta_softplus=True, return_last_state=True)
    assert trained[0].grad_fn is not None
    for out, last in (inferred, constant):
        assert out.grad_fn is None
        assert torch.equal(out, trained[0].detach()) and torch.equal(last, trained[1])


@gpu
def test_inference_takes_longer_chunks_within_rounding():
    """At (2, 64, 32768) a call with no backward walks 128-step chunks where the Gluon walks run, a differentiable
    one the backward's 64: outputs and last states agree within rounding."""
    from monai_mamba_nets.ops import scan_triton

    ops = scan_operands(2, 64, 32768, 16, device="cuda", seed=14)
    leaves = {k: v.clone().requires_grad_() for k, v in ops.items()}
    trained = selective_scan(**leaves, backend="triton", delta_softplus=True, return_last_state=True)
    inferred = selective_scan(**ops, backend="triton", delta_softplus=True, return_last_state=True)
    assert relative_error(inferred[0], trained[0]) <= 1e-5 and relative_error(inferred[1], trained[1]) <= 1e-5
    plans = [plan for plan in scan_triton._PLANS.values() if plan.shape == (2, 64, 32768)]
    chunks = {plan.differentiable: plan.forward_output.constants["CHUNK"] for plan in plans}
    assert chunks == {True: 64, False: 128 if plans[0].gluon_walks else 64}


@gpu
@pytest.mark.parametrize("length", [2000, 196])  # chunked, whole-sequence
def test_mixer_runs_in_a_cuda_graph(length):
    """The Mamba mixer on the Triton kernels (scan and convolution), forward and backward captured in a CUDA graph and
    replayed on new input, gives what an eager call gives: every launch goes to the capturing stream and nothing
    synchronises (torch.compile's "reduce-overhead" mode and whole-network captures rely on it)."""
    from unittest import mock

    from monai_mamba_nets import Mamba
    from monai_mamba_nets.layers import mamba as mamba_layer

    torch.manual_seed(0)
    mixer = Mamba(32, scan_backend="triton").cuda()
    static_x = torch.randn(2, length, 32, device="cuda", requires_grad=True)
    weight = mixer.in_proj.weight

    def step():
        loss = mixer(static_x).square().mean()
        loss.backward()
        return loss

    with mock.patch.object(mamba_layer, "_causal_conv1d_kernel", lambda: None):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        static_x.grad, weight.grad = None, None  # allocated by the capture, in the graph's memory
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_loss = step()
        x = torch.randn(2, length, 32, device="cuda")
        with torch.no_grad():
            static_x.copy_(x)
        graph.replay()
        replayed = (static_loss.clone(), static_x.grad.clone(), weight.grad.clone())
        x.requires_grad_()
        loss = mixer(x).square().mean()
        eager = (loss, *torch.autograd.grad(loss, (x, weight)))
    for name, ours, expected in zip(("loss", "x grad", "in_proj grad"), replayed, eager):
        assert relative_error(ours, expected) <= 1e-5, name


@gpu
@pytest.mark.slow
def test_very_long_sequence():
    """L = 2^21 (a 128^3 volume): thousands of chunks carried through the carry pass."""
    _compare_with_float64_torch(scan_operands(1, 2, 2**21, 16, regime="init", device="cuda", seed=5))


@gpu
@pytest.mark.parametrize("length", [3000, 196])  # chunked, whole-sequence
def test_gradients_are_deterministic(length):
    ops = scan_operands(2, 64, length, 16, device="cuda", seed=6)
    grad_out = torch.randn(2, 64, length, device="cuda")
    first, second = (_run("triton", ops, grad_out, delta_softplus=True)[1] for _ in range(2))
    for name in first:
        assert torch.equal(first[name], second[name]), name


@gpu
# whole-sequence programs; the whole-sequence forward; three forward launches and the backward's carry launch
@pytest.mark.parametrize("length", [196, 512, 3000])
def test_calls_with_addresses_give_what_the_first_call_gives(length, monkeypatch):
    """A plan's first call passes its launchers tensors (they compile), later calls addresses: the outputs, last
    states and gradients of both are bitwise equal, with autograd and without."""
    from monai_mamba_nets.ops import scan_triton

    monkeypatch.setattr(scan_triton, "_PLANS", {})
    ops = scan_operands(2, 32, length, 16, device="cuda", seed=13)
    grad_out = torch.randn(2, 32, length, device="cuda")
    # the operands need no grad: the forward without autograd, on a plan of its own
    first, later = (selective_scan(**ops, delta_softplus=True, return_last_state=True) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, later))
    (first, first_grads), (later, later_grads) = (
        _run("triton", ops, grad_out, delta_softplus=True, return_last_state=True) for _ in range(2)
    )
    assert all(torch.equal(a, b) for a, b in zip(first, later))
    assert all(torch.equal(first_grads[name], later_grads[name]) for name in first_grads)
    plans = {plan.differentiable: plan for plan in scan_triton._PLANS.values()}
    assert plans[False].forward_path.takes_addresses()
    assert plans[True].forward_path.takes_addresses() and plans[True].backward_path.takes_addresses()


@gpu
def test_dependent_launches_give_what_separate_launches_give(monkeypatch):
    """Where an inference plan's carry and output kernels start before the kernel ahead of them ends (sm_90), they
    wait for its results: 10 calls and 10 replays of a CUDA graph, at 256 chunks per row, are bitwise equal to the
    same kernels launched one after another."""
    from monai_mamba_nets.ops import scan_triton

    ops = scan_operands(2, 64, 32768, 16, device="cuda", seed=15)
    results = {}
    for dependent in (False, True):
        monkeypatch.setattr(scan_triton, "_PLANS", {})
        monkeypatch.setattr(scan_triton, "_dependent_launch", lambda device, dependent=dependent: dependent)
        results[dependent] = [selective_scan(**ops, delta_softplus=True, return_last_state=True) for _ in range(10)]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # the plan's kernels compiled at its first call above
            captured = selective_scan(**ops, delta_softplus=True, return_last_state=True)
        for _ in range(10):
            graph.replay()
            results[dependent].append(tuple(x.clone() for x in captured))
        (plan,) = scan_triton._PLANS.values()
        assert plan.dependent_launch == (dependent and plan.gluon_walks)
    expected = results[False][0]
    for out, last in results[False] + results[True]:
        assert torch.equal(out, expected[0]) and torch.equal(last, expected[1])


@gpu
@pytest.mark.parametrize("length", [2000, 196])  # chunked, whole-sequence
def test_launch_hooks_see_every_launch(length, monkeypatch):
    """Where a profiler hooks Triton's launches, the plans' later calls go through the path that calls the hooks:
    every launch of forward and backward is seen, and the results are those of the direct launches."""
    import triton

    from monai_mamba_nets.ops import scan_triton

    ops = scan_operands(2, 32, length, 16, device="cuda", seed=12)
    grad_out = torch.randn(2, 32, length, device="cuda")
    direct = [_run("triton", ops, grad_out, delta_softplus=True) for _ in range(2)][-1]
    launched = []

    def record(metadata):
        launched.append(metadata.get()["name"])

    calls = []
    launch = scan_triton._Launcher.__call__
    monkeypatch.setattr(scan_triton._Launcher, "__call__", lambda self, *p: (calls.append(self), launch(self, *p)))
    hooks = triton.knobs.runtime.launch_enter_hook
    hooks.add(record)
    try:
        hooked = _run("triton", ops, grad_out, delta_softplus=True)
    finally:
        hooks.remove(record)
    assert len(launched) == len(calls) >= 3, launched
    assert any("forward" in name for name in launched) and any("backward" in name for name in launched), launched
    assert torch.equal(hooked[0], direct[0])
    for name, grad in hooked[1].items():
        assert torch.equal(grad, direct[1][name]), name


def _channel_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` (batch, dim, L) laid out in (dim, batch, L) order, as the Mamba mixer's projections give it."""
    return x.transpose(0, 1).contiguous().transpose(0, 1)


@gpu
@pytest.mark.parametrize(
    "batch, dim, length, dstate, groups, dtype, layout",
    [
        (2, 64, 4096, 16, None, torch.float32, "contiguous"),
        (2, 32, 3000, 16, 2, torch.float32, "channel-major"),  # ragged L, grouped, the mixer's layout
        (1, 8, 1500, 64, None, torch.float32, "contiguous"),  # N = 64: a channel's states over 4 threads
        (2, 48, 2048, 5, 3, torch.bfloat16, "contiguous"),  # N = 5 padded to 8, bf16 rows copied 16 bytes at a time
        (2, 32, 4096, 16, None, torch.float16, "channel-major"),
        (2, 20000, 240, 32, None, torch.float32, "contiguous"),  # one chunk: the output launch alone
    ],
)
def test_gluon_walks_match_the_triton_walks(batch, dim, length, dstate, groups, dtype, layout, monkeypatch):
    """The chunked forward on the Gluon walks against the same plan on the Triton walks: outputs, last states and
    every gradient (the backward starts from the chunk entry states and sums of dt the forward leaves)."""
    from monai_mamba_nets.ops import scan_triton

    ops = scan_operands(batch, dim, length, dstate, groups=groups, dtype=dtype, device="cuda", seed=12)
    if layout == "channel-major":
        ops.update({k: _channel_major(ops[k]) for k in ("u", "delta", "z")})
    grad_out = torch.randn(batch, dim, length, device="cuda", generator=torch.Generator("cuda").manual_seed(13))
    results = {}
    for gluon in (True, False):
        monkeypatch.setattr(scan_triton, "_PLANS", {})
        if not gluon:
            monkeypatch.setattr(scan_triton, "_gluon_walks", lambda *args: False)
        results[gluon] = _run("triton", ops, grad_out, delta_softplus=True, return_last_state=True)
        (plan,) = scan_triton._PLANS.values()
        assert plan.gluon_walks == gluon
    ((out, last), grads), ((ref, ref_last), ref_grads) = results[True], results[False]
    # the same arithmetic but for A scaled by log2(e) once rather than at every step: rounding apart
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    assert relative_error(out, ref) <= tolerance and relative_error(last, ref_last) <= 1e-5
    for name, grad in grads.items():
        assert relative_error(grad, ref_grads[name]) <= tolerance, name


@gpu
@pytest.mark.skipif("cuda" not in available_backends(), reason="mamba-ssm's kernel is not installed")
@pytest.mark.parametrize(
    "length, groups, dtype",
    [
        (4096, None, torch.float32),
        (4096, 4, torch.float32),
        (4096, None, torch.bfloat16),
        (512, None, torch.float32),
        (196, 4, torch.float32),
    ],
)
def test_matches_mamba_ssm(length, groups, dtype):
    ops = scan_operands(2, 64, length, 16, groups=groups, dtype=dtype, device="cuda", seed=7)
    grad_out = torch.randn(2, 64, length, device="cuda")
    (out, last), grads = _run("triton", ops, grad_out, delta_softplus=True, return_last_state=True)
    (ref, ref_last), ref_grads = _run("cuda", ops, grad_out, delta_softplus=True, return_last_state=True)
    print(f"FIGURE triton vs mamba-ssm L={length} {dtype} G={groups}: out rel err {relative_error(out, ref):.2e}")
    _assert_close("out", out, ref, dtype)
    _assert_close("last_state", last, ref_last, dtype)
    for name, grad in grads.items():
        error = relative_error(grad, ref_grads[name])
        print(f"FIGURE triton vs mamba-ssm L={length} {dtype} G={groups}: d{name} rel err {error:.2e}")
        _assert_close(name, grad, ref_grads[name], dtype)


@gpu
def test_auto_order_and_forcing_explains_why_not():
    """auto: the Triton kernels wherever they apply, else mamba-ssm's kernel where installed, else torch."""
    assert "triton" in available_backends()
    for length in (10, 32768):
        ops = scan_operands(1, 2, length, 4, device="cuda")
        assert resolve_backend("auto", ops["u"], ops["A"], ops["B"], ops["C"]) == "triton"
    invariant = scan_operands(1, 4, 10, 4, time_invariant_B=True, device="cuda")
    expected = "cuda" if "cuda" in available_backends() else "torch"
    assert resolve_backend("auto", invariant["u"], invariant["A"], invariant["B"], invariant["C"]) == expected
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run here: .*time-varying B and C"):
        selective_scan(**invariant, backend="triton")


@gpu
def test_mamba_mixer_with_triton_scan():
    from monai_mamba_nets import Mamba

    torch.manual_seed(0)
    mixer = Mamba(32, scan_backend="triton").cuda()
    x = torch.randn(2, 1500, 32, device="cuda", requires_grad=True)
    out = mixer(x)
    out.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in mixer.named_parameters()}
    mixer.zero_grad()
    mixer.scan_backend = "torch"
    ref = mixer(x)
    ref.square().sum().backward()
    assert relative_error(out, ref) <= 1e-4
    for name, p in mixer.named_parameters():
        assert relative_error(grads[name], p.grad) <= 1e-3, name


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize("scratch", [0, 256])
def test_launcher_passes_what_tritons_wrapper_would(scratch, monkeypatch):
    """A launcher's later calls reach the binary's C launcher with the arguments Triton's own wrapper gives it: on
    Triton 3.6 directly where the kernel needs no scratch memory, through the wrapper otherwise (here its scratch
    allocator is a stub). The C launcher is replaced by a recorder; nothing runs on a GPU."""
    import triton
    from triton.backends.nvidia.driver import CudaLauncher

    from monai_mamba_nets.ops import scan_triton

    recorded = []
    binary_launcher = object.__new__(CudaLauncher)  # its attributes as Triton 3.6 sets them from the metadata
    binary_launcher.launch = lambda *args: recorded.append(args)
    binary_launcher.num_ctas, binary_launcher.launch_cooperative_grid, binary_launcher.launch_pdl = 1, "grid", "pdl"
    binary_launcher.global_scratch_size, binary_launcher.global_scratch_align = scratch, 16
    binary_launcher.profile_scratch_size, binary_launcher.profile_scratch_align = 0, 1

    class Binary:  # what a launcher uses of a CompiledKernel
        run, function, packed_metadata = binary_launcher, 1234, ("metadata",)

    class Driver:
        def get_current_stream(self, device):
            return 77

    launcher = scan_triton._Launcher(
        scan_triton._chunk_carry_kernel, (8,), 0, {}, (1, 2, 3), REVERSE=False, BLOCK_C=16, BLOCK_N=16, DEPENDENT=False
    )
    launcher.compiled = Binary()
    pointers = (torch.empty(4), None, torch.empty(2), torch.empty(3), torch.empty(5))
    addresses = [None if x is None else x.data_ptr() for x in pointers]

    def launch_both_ways():
        triton.set_allocator(lambda size, alignment, stream: "scratch")  # in this context only
        launcher(*addresses)  # as a plan's compiled path passes them
        # as ``binary[grid](...)`` calls Triton's wrapper without hooks: grid, stream, function, metadata, no launch
        # metadata or hooks, then the kernel's arguments
        binary_launcher(8, 1, 1, 77, 1234, ("metadata",), None, None, None, *addresses, 1, 2, 3, False, 16, 16, False)

    monkeypatch.setattr(triton.runtime.driver, "_active", Driver())
    contextvars.copy_context().run(launch_both_ways)
    assert len(recorded) == 2 and recorded[0] == recorded[1], recorded
    direct = scan_triton._DIRECT_C_LAUNCH and not scratch
    assert (launcher.launch == binary_launcher.launch) == direct


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize(
    "shape",
    [
        (2, 64, 200, 16),  # whole-sequence programs
        (2, 256, 512, 16),  # the whole-sequence forward, chunks whose gradient programs fold the adjoint carry
        (2, 128, 4096, 16),  # three forward launches, four backward, partial dB and dC
        (2, 64, 2048, 16),  # dB and dC written in place by the gradient programs
    ],
)
def test_plan_passes_the_same_pointers_as_addresses(shape, monkeypatch):
    """Once a path's launchers have binaries, a plan passes them addresses: the same operands, outputs and workspace
    regions, launch by launch, as the tensors it passes before (kernels replaced by recorders; nothing runs)."""
    import triton

    from monai_mamba_nets.ops import scan_triton

    if not scan_triton._DIRECT_C_LAUNCH:
        pytest.skip("the recorder stands in for Triton 3.6's C launcher")
    batch, dim, length, dstate = shape
    plan = contiguous_plan(batch, dim, length, dstate)
    calls, buffers = [], []

    class Driver:
        def get_current_stream(self, device):
            return 0

    def binary(launcher):
        run = types.SimpleNamespace(
            global_scratch_size=0, profile_scratch_size=0, launch_cooperative_grid=False, launch_pdl=False
        )
        # the record: the kernel and its pointer arguments, which follow Triton 3.6's 13 leading ones
        run.launch = lambda *args: calls.append((launcher.kernel, args[13 : len(args) - len(launcher.trailing)]))
        return types.SimpleNamespace(run=run, function=0, packed_metadata=None)

    monkeypatch.setattr(triton.runtime.driver, "_active", Driver())
    for launcher in vars(plan).values():
        for each in launcher.values() if isinstance(launcher, dict) else [launcher]:
            if isinstance(each, scan_triton._Launcher):
                each.compiled = binary(each)
    allocate = scan_triton._Workspace.allocate
    monkeypatch.setattr(scan_triton._Workspace, "allocate", lambda *a: buffers.append(allocate(*a)) or buffers[-1])
    ops = scan_operands(batch, dim, length, dstate)
    dout = torch.randn(batch, dim, length)

    def labelled(addresses):
        """Each launch's pointers as names: an operand's, an output's, or (buffer, byte offset) in a workspace."""
        out, saved, _ = plan.forward(*ops.values(), False)
        gradients = plan.backward(tuple(ops.values()), saved, dout)
        named = {**ops, "dout": dout, "out": out}
        named.update(zip(("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias"), gradients))
        named.update({f"saved{index}": x for index, x in enumerate(saved)})
        names = {x.data_ptr(): name for name, x in named.items() if x is not None}

        def name(pointer):
            if pointer is None:
                return None
            assert isinstance(pointer, int) == addresses, pointer
            if isinstance(pointer, int):
                address = pointer
            else:  # where an empty region starts (its data_ptr() is 0)
                address = pointer.untyped_storage().data_ptr() + pointer.storage_offset() * pointer.element_size()
            for index, buffer in enumerate(buffers):
                if buffer.data_ptr() <= address <= buffer.data_ptr() + buffer.nbytes:
                    return index, address - buffer.data_ptr()
            return names[address]

        launches = [(kernel, [name(pointer) for pointer in pointers]) for kernel, pointers in calls]
        calls.clear(), buffers.clear()
        return launches

    with monkeypatch.context() as before_binaries:
        before_binaries.setattr(scan_triton._Path, "takes_addresses", lambda self: False)
        as_tensors = labelled(addresses=False)
    as_addresses = labelled(addresses=True)
    # the paths name the launchers that the calls make: their binaries decide whether the calls pass addresses
    path = (*plan.forward_path.launchers, *plan.backward_path.launchers)
    assert [kernel for kernel, _ in as_tensors] == [launcher.kernel for launcher in path]
    assert as_addresses == as_tensors


def contiguous_plan(batch, dim, length, dstate, groups=1, fp32_matrices=True, element_bytes=4, differentiable=True):
    """The Triton plan (built on the CPU for an H100, nothing launched) for contiguous operands with z, D and
    delta_bias; u, z, B and C of ``element_bytes`` at the narrowest."""
    from monai_mamba_nets.ops import scan_triton

    matrix = groups * dstate * length
    contiguous = scan_triton._Strides(*[dim * length] * 3, length, dim * length, matrix, length, matrix, length)
    return scan_triton._Plan(
        batch, dim, length, dstate, groups, None, True, True, True, True, fp32_matrices, element_bytes, contiguous,
        differentiable,
    )  # fmt: skip


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize(
    "shape, chunk, inference_chunk",
    [
        ((2, 64, 32768, 16), 64, 128),
        ((16, 64, 16384, 16), 256, 512),
        ((4, 192, 3136, 16), 64, 64),  # 8 states per thread either way (chosen at the backward's chunks)
        ((2, 128, 4096, 16), 32, 32),  # the shortest chunks either way
        ((2, 256, 512, 16), 32, 32),  # the whole-sequence forward: its entry states are the backward's
    ],
)
@pytest.mark.parametrize("gluon", [True, False])
def test_inference_plans_take_longer_forward_chunks(shape, chunk, inference_chunk, gluon, monkeypatch):
    """A plan for calls with no backward chunks its forward for INFERENCE_FORWARD_THREADS where the Gluon walks run
    it, with the layout that the backward's chunks choose; elsewhere its chunks are the backward's."""
    import triton

    from monai_mamba_nets.ops import scan_triton

    if gluon and scan_triton._version(triton.__version__) != scan_triton.GLUON_TRITON:
        pytest.skip("the Gluon walks are taken on Triton 3.6 only")
    if not gluon:
        monkeypatch.setattr(scan_triton, "_gluon_walks", lambda *args: False)
    training, inference = (contiguous_plan(*shape, differentiable=flag) for flag in (True, False))
    forward = "whole_forward" if training.whole_forward is not None else "forward_output"
    chunks = [getattr(plan, forward).constants["CHUNK"] for plan in (training, inference)]
    assert chunks == [chunk, inference_chunk if gluon else chunk]
    layouts = [getattr(plan, forward).constants.get("NP") for plan in (training, inference)]
    assert layouts[0] == layouts[1]


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize(
    "shape, fp32_matrices, fold, partials, direct",
    [
        ((2, 64, 32768, 16, 1), True, 8, 1, True),  # 8 channel blocks per program: dB and dC written in place
        ((2, 64, 32768, 16, 1), False, 8, 1, False),  # bf16 B and C: one fp32 partial, cast by the sums kernel
        ((2, 128, 4096, 16, 1), True, 4, 4, False),  # 4 of 16 blocks per program: 1024 programs, one wave
        ((2, 256, 512, 16, 1), True, 1, 32, False),  # one wave already: folding would only lengthen the programs
        # Mamba-UNet's 28 x 28 stage, 48 blocks per group: 1280 programs of 6 blocks would take two waves of 1056
        ((8, 1536, 784, 16, 4), True, 8, 6, False),
    ],
)
def test_gradient_programs_fold_channel_blocks(shape, fp32_matrices, fold, partials, direct):
    """How many channel blocks a gradient program takes, and what is left for the sums kernel to add up."""
    batch, dim, length, dstate, groups = shape
    plan = contiguous_plan(batch, dim, length, dstate, groups, fp32_matrices)
    assert (plan.gradient.constants["FOLD"], plan.sums.sizes[-1], plan.direct_matrices) == (fold, partials, direct)
    partial_matrices = plan.backward_workspace.sizes[-2:]
    assert partial_matrices == [0 if direct else batch * groups * partials * dstate * length] * 2


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize(
    "rows, length, chunk",
    [
        (128, 32768, 64),  # (2, 64, 32768): a power of two divides a power of two
        (6144, 3136, 448),  # Mamba-UNet's 56 x 56 stage: 7 chunks of 448 steps, none padded (512 would pad 448)
        (12288, 784, 160),  # its 28 x 28 stage: 5 chunks of 160 (4 of 256 would pad 240 steps)
        (98304, 784, 800),  # its 28 x 28 stage at batch 32: one chunk of 25 checkpoint spans
        (64, 2097152, 2048),
    ],
)
def test_chunks_pad_the_sequence_least(rows, length, chunk):
    """Every chunk is walked whole, padding included: chunks are cut to pad the sequence least."""
    from monai_mamba_nets.ops import scan_triton

    assert scan_triton._chunk_length(rows, length, scan_triton.FORWARD_THREADS) == chunk
    assert chunk % scan_triton.CHECKPOINT == 0


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize(
    "shape, states, threads",
    [
        ((2, 64, 32768, 16), 16, 65536),  # 512 chunks of 64 steps: one thread per channel and chunk is enough
        ((16, 64, 16384, 16), 16, 65536),
        ((4, 512, 512, 16), 8, 65536),  # 16 chunks of the shortest length, 32 steps: two threads per channel
        ((2, 128, 4096, 16), 8, 65536),
        ((2, 64, 1024, 64), 16, 16384),  # N = 64 spreads a channel over 4 threads already: no split
    ],
)
def test_forward_splits_states_where_chunks_give_few_threads(shape, states, threads):
    """Short sequences cannot be cut into more chunks, so the forward kernels share a channel's states among more
    threads there."""
    plan = contiguous_plan(*shape)
    for launcher in (plan.forward_summary, plan.forward_output):
        assert launcher.constants["NP"] == states
        grid_threads = launcher.grid[0] * launcher.grid[1] * launcher.options["num_warps"] * 32
        assert grid_threads == threads


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize(
    "shape, element_bytes, gluon, exact",
    [
        ((2, 64, 32768, 16), 4, True, True),
        ((2, 64, 4100, 16), 4, True, False),  # ragged L: fp32 rows are copied 4 bytes at a time, masked
        ((2, 64, 4096, 5), 4, True, False),  # N = 5: states padded to 8, masked
        ((2, 64, 4096, 16), 2, True, True),
        ((2, 64, 4100, 16), 2, False, None),  # 2-byte rows not shown 4-byte aligned: cp.async cannot copy them
        ((2, 256, 512, 16), 4, False, None),  # the whole-sequence forward
        ((2, 64, 200, 16), 4, False, None),  # whole-sequence programs
    ],
)
def test_chunked_forward_walks_run_in_gluon_where_they_can(shape, element_bytes, gluon, exact):
    """The chunked forward's summary and output walks are the Gluon kernels where Gluon runs them (compiled, Triton
    3.6, sm_80 or later: here a plan built for an H100), the Triton kernels elsewhere. Where the tiles cover the
    operands exactly, the Gluon walks leave their masks out."""
    import triton

    from monai_mamba_nets.ops import scan_gluon, scan_triton

    if scan_triton._version(triton.__version__) != scan_triton.GLUON_TRITON:
        pytest.skip("the Gluon walks are taken on Triton 3.6 only")
    plan = contiguous_plan(*shape, element_bytes=element_bytes)
    assert plan.gluon_walks == gluon
    if hasattr(plan, "forward_output"):
        kernels = (plan.forward_summary.kernel, plan.forward_output.kernel)
        expected = (scan_gluon.forward_summary_kernel, scan_gluon.forward_output_kernel)
        assert (kernels == expected) == gluon
        for launcher in (plan.forward_summary, plan.forward_output):
            assert launcher.constants.get("EXACT") == exact


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize(
    "shape, element_bytes, sm90, differentiable, dependent",
    [
        ((2, 64, 32768, 16), 4, True, False, True),
        ((2, 64, 32768, 16), 4, True, True, False),  # a plan for calls with a backward
        ((2, 64, 32768, 16), 4, False, False, False),  # an sm_80 GPU: Gluon walks, no programmatic dependent launch
        ((2, 64, 4100, 16), 2, True, False, False),  # the Triton walks
        ((32, 3072, 784, 16), 4, True, False, False),  # one chunk: the output launch alone
        ((2, 256, 512, 16), 4, True, False, False),  # the whole-sequence forward
    ],
)
def test_inference_forward_launches_its_carry_and_output_as_dependents(
    shape, element_bytes, sm90, differentiable, dependent, monkeypatch
):
    """On sm_90 an inference plan's chunked Gluon forward launches its carry and output kernels as dependents
    (launch_pdl), and its kernels signal and wait for each other (DEPENDENT); no other launch is a dependent one."""
    import triton

    from monai_mamba_nets.ops import scan_triton

    if scan_triton._version(triton.__version__) != scan_triton.GLUON_TRITON:
        pytest.skip("the Gluon walks are taken on Triton 3.6 only")
    monkeypatch.setattr(scan_triton, "_dependent_launch", lambda device: sm90)
    plan = contiguous_plan(*shape, element_bytes=element_bytes, differentiable=differentiable)
    assert plan.dependent_launch == dependent
    launched_as_dependents = [plan.carry[False], plan.forward_output] if dependent else []
    signalling = [plan.forward_summary, *launched_as_dependents] if dependent else []
    for launcher in vars(plan).values():
        for one in launcher.values() if isinstance(launcher, dict) else [launcher]:
            if isinstance(one, scan_triton._Launcher):
                assert one.options.get("launch_pdl", False) == (one in launched_as_dependents), one.kernel
                assert one.constants.get("DEPENDENT", False) == (one in signalling), one.kernel


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize(
    "shape, chunks, inline",
    [((2, 256, 512), 16, True), ((4, 192, 784), 25, False), ((2, 128, 4096), 128, False), ((2, 64, 32768), 512, False)],
)
def test_gradient_programs_fold_the_adjoint_carry_on_few_chunks(shape, chunks, inline):
    """With few chunks the backward launches no carry kernel: the gradient programs fold the adjoint summaries."""
    plan = contiguous_plan(*shape, dstate=16)
    assert plan.gradient.grid[1] == chunks
    assert plan.inline_carry == plan.gradient.constants["INLINE_CARRY"] == inline


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize("shape, single", [((32, 3072, 784), True), ((8, 3072, 784), False), ((16, 256, 320), False)])
def test_one_chunk_sequences_take_the_output_launch_alone(shape, single):
    """A sequence of one chunk starts from a zero state: no summary and carry launches (Mamba-UNet's 28 x 28 stage at
    batch 32)."""
    plan = contiguous_plan(*shape, dstate=16)
    assert plan.single_chunk == plan.forward_output.constants["SINGLE_CHUNK"] == single
    assert plan.forward_output.grid[1] == 1 or not single


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize(
    "shape, whole_forward, chunk, chunks",
    [
        ((2, 256, 512, 16), True, 32, 16),
        ((2, 512, 512, 16), True, 32, 16),  # rows x steps x states = 2^23, WHOLE_FORWARD_WORK
        ((2, 64, 1000, 16), True, 32, 32),  # padded to 1024 steps
        ((2, 16, 300, 16), True, 32, 10),  # the last chunk of 12 steps
        ((4, 192, 784, 16), False, 32, 25),  # 768 rows x 1024 steps x 16 states: more work than the limit
        ((2, 32, 1024, 32), False, 32, 32),  # more states than WHOLE_FORWARD_STATES
        ((2, 16, 2048, 16), False, 32, 64),  # longer than WHOLE_FORWARD_STEPS
    ],
)
def test_short_chunked_sequences_take_the_whole_sequence_forward(shape, whole_forward, chunk, chunks):
    """Chunked sequences with little work take the forward in one whole-sequence launch, which leaves every chunk's
    entry state and sum of dt for the chunked backward; the others the summary, carry and output launches."""
    plan = contiguous_plan(*shape)
    batch, dim, length, dstate = shape
    rows = batch * dim
    assert not plan.whole_sequence and plan.gradient.grid[1] == chunks
    assert (plan.whole_forward is not None) == whole_forward
    assert hasattr(plan, "forward_output") != whole_forward
    if not whole_forward:
        return
    assert (plan.whole_forward.constants["CHUNK"], plan.whole_forward.sizes[6]) == (chunk, chunks)
    # no chunk end states (there is no summary launch); sums of dt, entry states and the final state
    assert plan.forward_workspace.sizes == [0, rows * chunks, rows * chunks * dstate, rows * dstate]


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize(
    "shape, whole, channels, warps, partials",
    [
        # Mamba-UNet's 14 x 14 stage: 384 one-warp blocks of 512 entries per group, 6 per program (their partial dB and
        # dC would take 308 MB)
        ((8, 3072, 196, 16, 4), True, 2, 1, 64),
        ((8, 6144, 49, 16, 4), True, 8, 1, 192),  # its 7 x 7 stage: 39 MB of partials, one block per program
        ((2, 64, 200, 16, 1), True, 1, 4, 64),  # 64 programs would fill no wave: 128 of 256 entries, four warps each
        ((2048, 4, 64, 16, 1), True, 4, 1, 1),  # all channels in one program: dB and dC written in place
        ((2, 64, 225, 16, 1), False, None, None, None),
        ((2, 128, 256, 16, 1), False, None, None, None),
    ],
)
def test_short_sequences_take_whole_sequence_programs(shape, whole, channels, warps, partials):
    """Sequences of at most WHOLE_SEQUENCE_STEPS steps are not chunked: one launch forward, the gradients and their
    sums backward."""
    from monai_mamba_nets.ops import scan_triton

    plan = contiguous_plan(*shape)
    assert plan.whole_sequence == whole
    if not whole:
        assert not hasattr(plan, "whole_backward")
        return
    # y before the gate saved for the backward, not where nothing is differentiated
    assert plan.whole_forward.constants["CHUNK"] == 0 and plan.whole_forward.constants["PRE_GATE"]
    assert not contiguous_plan(*shape, differentiable=False).whole_forward.constants["PRE_GATE"]
    for launcher in (plan.whole_forward, plan.whole_backward):
        assert (launcher.constants["BD"], launcher.options["num_warps"]) == (channels, warps)
        assert launcher.constants["LP"] * channels <= scan_triton.WHOLE_SEQUENCE_ENTRIES
    assert not hasattr(plan, "forward_summary")
    assert (plan.sums.sizes[-1], plan.direct_matrices) == (partials, partials == 1)
    # no chunk regions: the final state forward; the partial gradients backward
    batch, dim, length, dstate, groups = shape
    assert plan.forward_workspace.total == batch * dim * dstate
    partial_matrices = 0 if partials == 1 else batch * groups * partials * dstate * length
    assert (
        plan.backward_workspace.sizes
        == [0] * 4 + [batch * dim * dstate, batch * dim, batch * dim] + [partial_matrices] * 2
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_forcing_triton_on_cpu_says_why():
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run here: tensors are on cpu"):
        selective_scan(**scan_operands(1, 2, 3, 2), backend="triton")
    assert "triton" not in available_backends()


# Runs in a fresh interpreter: TRITON_INTERPRET must be set before the kernels are defined.
_INTERPRETER_CHECK = textwrap.dedent("""
    import numpy as np
    import torch
    import triton.runtime.interpreter as interpreter

    if np.lib.NumpyVersion(np.__version__) >= "2.4.0":
        # Triton 3.6's interpreter turns loop bounds into ints with int() of a 1-element array, which numpy 2.4
        # refuses; index the element instead.
        patch = interpreter._patch_lang_tensor

        def _patch_lang_tensor(tensor, scope):
            patch(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

        interpreter._patch_lang_tensor = _patch_lang_tensor

    from scan_inputs import relative_error, scan_operands
    from monai_mamba_nets.ops import scan_triton, selective_scan_ref

    cases = [
        dict(batch=2, dim=4, length=40, dstate=16, groups=None, dtype=torch.float32),
        dict(batch=1, dim=6, length=37, dstate=5, groups=3, dtype=torch.float32),
        dict(batch=1, dim=4, length=200, dstate=16, groups=None, dtype=torch.float32),
        dict(batch=2, dim=4, length=1, dstate=4, groups=2, dtype=torch.float32),
        dict(batch=1, dim=4, length=45, dstate=64, groups=None, dtype=torch.float32),
        dict(batch=1, dim=4, length=29, dstate=4, groups=None, dtype=torch.bfloat16),
        dict(batch=1, dim=4, length=45, dstate=64, groups=None, dtype=torch.float32),
        dict(batch=2, dim=4, length=40, dstate=4, groups=2, dtype=torch.float32),
        dict(batch=2, dim=4, length=40, dstate=4, groups=2, dtype=torch.float32),
        # the whole-sequence forward, the chunked backward
        dict(batch=2, dim=4, length=40, dstate=16, groups=None, dtype=torch.float32),
        dict(batch=2, dim=6, length=37, dstate=5, groups=3, dtype=torch.float32),
        dict(batch=2, dim=4, length=100, dstate=4, groups=None, dtype=torch.float32),
        dict(batch=1, dim=4, length=29, dstate=4, groups=None, dtype=torch.bfloat16),
        # whole-sequence programs
        dict(batch=2, dim=4, length=40, dstate=16, groups=None, dtype=torch.float32),
        dict(batch=1, dim=6, length=37, dstate=5, groups=3, dtype=torch.float32),
        dict(batch=2, dim=4, length=1, dstate=4, groups=2, dtype=torch.float32),
        dict(batch=1, dim=4, length=29, dstate=4, groups=None, dtype=torch.bfloat16),
        dict(batch=2, dim=4, length=40, dstate=4, groups=2, dtype=torch.float32),
        dict(batch=2, dim=4, length=40, dstate=4, groups=2, dtype=torch.float32),
        # gradient programs taking several channel blocks: dB and dC added up in place, in fp32 and in the workspace
        dict(batch=1, dim=16, length=100, dstate=4, groups=2, dtype=torch.float32),
        dict(batch=2, dim=24, length=30, dstate=5, groups=None, dtype=torch.bfloat16),
    ]
    # chunked forward and backward, the whole-sequence forward with the chunked backward, whole-sequence programs
    paths = ("chunked",) * 9 + ("whole forward",) * 4 + ("whole",) * 8
    threads = (65536, 65536, 8, 65536, 65536, 65536, 65536, 16, 8) + (65536,) * 12
    # gradient programs resident per multiprocessor; 0 makes a wave of one program, where every fold ties and the
    # largest is taken. A whole-sequence plan then takes 4 warps per program, else 1
    programs = (8, 8, 8, 8, 8, 8, 0, 8, 8) + (8,) * 4 + (0, 8, 8, 8, 8, 8, 8, 8)
    # plans of at most this many chunks fold the adjoint carry in the gradient kernel; 0 launches the carry kernel
    inline_chunks = (16, 0, 16, 16, 0, 16, 16, 0, 16) + (16, 16, 0, 16) + (16,) * 8
    layouts = (None,) * 7 + ("sliced", "channel-major") + (None, "channel-major", "sliced", None)
    layouts += (None,) * 4 + ("sliced", "channel-major", None, None)
    # whole-sequence gradient programs fold channel blocks whatever the size of their partial dB and dC, as many
    # blocks as divide the group (a wave of one program)
    whole_folds = (False,) * 19 + (True, True)
    BATCHED = ("u", "delta", "z", "B", "C")

    def in_channel_major_order(v):
        # v's values with the batch inside the channels (and a group's states): (dim, batch, L) order
        order = list(range(1, v.dim() - 1)) + [0, v.dim() - 1]
        return v.permute(order).contiguous().permute([order.index(i) for i in range(v.dim())])

    def leaves_and_arguments(ops, dtype, layout):
        # leaves to differentiate and the scan's arguments made of them. Sliced, u, delta, z, B and C are the first
        # entries along dim 1 of wider tensors, at a larger batch stride; channel-major, they are in (dim, batch, L)
        # order: the two ways the Mamba mixer may pass them
        leaves, arguments = {}, {}
        for k, v in ops.items():
            v = v.to(dtype) if dtype else v
            if layout == "sliced" and k in BATCHED:
                leaves[k] = torch.cat([v, torch.randn(v.shape[0], 3, *v.shape[2:], dtype=v.dtype)], 1).requires_grad_()
                arguments[k] = leaves[k][:, : v.shape[1]]
            elif layout == "channel-major" and k in BATCHED:
                leaves[k] = arguments[k] = in_channel_major_order(v).requires_grad_()
            else:
                leaves[k] = arguments[k] = v.clone().requires_grad_()
        return leaves, arguments

    folds, forward_states, inline_carries, single_chunks, whole_warps = [], [], [], [], []
    for case, path, forward_threads, gradient_programs, inline, layout, whole_fold in zip(
        cases, paths, threads, programs, inline_chunks, layouts, whole_folds
    ):
        # the first case's forward shares each channel's 16 states between two threads (a short sequence: few chunks).
        # Few threads wanted: chunks of several checkpoint spans (the third case: 2 chunks of 4 spans). N = 64 gives
        # 2 channels per gradient program: two partial dB and dC to sum in the fifth case, and in the seventh, where a
        # wave holds one program, one program taking both blocks and adding up their dB and dC in place
        scan_triton.FORWARD_THREADS, scan_triton.GRADIENT_PROGRAMS_PER_SM = forward_threads, gradient_programs
        scan_triton.INLINE_CARRY_CHUNKS = inline
        scan_triton.WHOLE_BACKWARD_FOLD_BYTES = 0 if whole_fold else 2**26
        scan_triton.WHOLE_BACKWARD_PROGRAMS_PER_SM = 0 if whole_fold else 16
        scan_triton.WHOLE_SEQUENCE_STEPS = 256 if path == "whole" else 0
        scan_triton.WHOLE_FORWARD_STEPS = 0 if path == "chunked" else 256
        scan_triton._PLANS.clear()  # plans are keyed by call and operands: build this case's with these constants
        ops = scan_operands(**case, seed=case["length"])
        # in the operands' dtype, so that the float64 reference differentiates the same bf16 values; seeded, like them
        gradient_seed = torch.Generator().manual_seed(case["length"] + 1)
        grad_out = torch.randn(case["batch"], case["dim"], case["length"], generator=gradient_seed).to(case["dtype"])
        results = []
        for scan, dtype in ((scan_triton.selective_scan_triton, None), (selective_scan_ref, torch.float64)):
            leaves, arguments = leaves_and_arguments(ops, dtype, None if dtype else layout)
            batch_strides = batch_strides if dtype else tuple(arguments[k].stride(0) for k in BATCHED)
            out, last = scan(**arguments, delta_softplus=True, return_last_state=True)
            (out * grad_out.to(out.dtype)).sum().backward()
            grads = {k: v.grad[tuple(map(slice, ops[k].shape))] for k, v in leaves.items()}
            results.append((out, last, grads))
        (out, last, grads), (ref, ref_last, ref_grads) = results
        if layout is None and case["length"] == 40:  # one case of each path: inference runs without autograd
            with torch.no_grad():
                _, arguments = leaves_and_arguments(ops, None, layout)
                inferred = scan_triton.selective_scan_triton(**arguments, delta_softplus=True, return_last_state=True)
            assert inferred[0].grad_fn is None and torch.equal(inferred[0], out) and torch.equal(inferred[1], last)
        bound = 1e-5 if case["dtype"] == torch.float32 else 1e-2
        errors = {"out": relative_error(out, ref), "last": relative_error(last, ref_last)}
        errors.update({"d" + k: relative_error(grads[k], ref_grads[k]) for k in ops})
        assert max(errors.values()) <= bound, (case, errors)
        (plan,) = [plan for plan in scan_triton._PLANS.values() if plan.differentiable]
        assert plan.whole_sequence == (path == "whole")
        assert (plan.whole_forward is None) == (path == "chunked")
        if path == "whole":
            whole_warps.append(plan.whole_forward.options["num_warps"])
            assert (plan.whole_backward.constants["FOLD"] > 1) == whole_fold
        else:
            folds.append(plan.gradient.constants["FOLD"])
            inline_carries.append(plan.inline_carry)
        if path == "chunked":
            forward_states.append(plan.forward_output.constants["NP"])
            single_chunks.append(plan.single_chunk)
        forward = plan.forward_output if path == "chunked" else plan.whole_forward
        # sliced and channel-major operands are read in place, not copied
        strides = scan_triton._Strides(*forward.sizes[-9:])
        u_batch, delta_batch, z_batch, B_batch, C_batch = batch_strides
        assert (strides.u_batch, strides.delta_batch, strides.B_batch, strides.C_batch) == (
            u_batch, delta_batch, B_batch, C_batch
        )
        assert layout != "sliced" or u_batch == (case["dim"] + 3) * case["length"]
        length, channel_major = case["length"], layout == "channel-major"
        rows = (2 * length, length, 2 * length) if channel_major else (length, case["dim"] * length, length)
        assert (strides.row, strides.out_batch, strides.B_row) == rows
    assert folds[4:7] == [1, 1, 2], folds
    assert forward_states[:3] == [8, 8, 16], forward_states
    assert inline_carries == [bool(chunks) for chunks in inline_chunks[:13]], inline_carries
    # one chunk (L = 1, L = 29, and the last case's 40 steps in a 64-step chunk): the output launch alone
    assert single_chunks == [False, False, False, True, False, True, False, False, True], single_chunks
    assert whole_warps == [1, 4, 4, 4, 4, 4, 4, 4], whole_warps

    # plans are found by the layout a call receives: u a misaligned view, which the first call copies; the second
    # call with that layout finds the plan and copies again, and a contiguous u takes a plan of its own
    scan_triton._PLANS.clear()
    ops = scan_operands(1, 4, 40, 4, seed=3)
    wide = torch.zeros(1, 4, 41)
    wide[..., 1:] = ops["u"]
    ops["u"] = wide[..., 1:]
    first = scan_triton.selective_scan_triton(**ops, delta_softplus=True)
    (plan,) = scan_triton._PLANS.values()
    assert plan.copies_operands
    assert torch.equal(scan_triton.selective_scan_triton(**ops, delta_softplus=True), first)
    assert len(scan_triton._PLANS) == 1
    ops["u"] = ops["u"].contiguous()
    assert torch.equal(scan_triton.selective_scan_triton(**ops, delta_softplus=True), first)
    assert len(scan_triton._PLANS) == 2 and not list(scan_triton._PLANS.values())[1].copies_operands
    print("interpreter check passed")
    """)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_kernels_under_triton_interpreter():
    tests_dir = Path(__file__).resolve().parent
    path = [str(tests_dir), str(tests_dir.parent)] + (
        [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    )
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(path))
    result = subprocess.run(
        [sys.executable, "-c", _INTERPRETER_CHECK], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "interpreter check passed" in result.stdout
