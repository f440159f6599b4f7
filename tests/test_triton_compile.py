"""Every Triton and Gluon kernel compiles for an H100 (sm_90), without a GPU.

Triton's interpreter (tests/test_scan_triton.py) runs the kernels' Python on the CPU, so it misses what only the
compiler rejects: a loop-carried value that changes type, a layout it cannot lower, a constexpr branch no GPU test
reaches. Here the ops run on CPU tensors while every kernel launch is turned into a compile for sm_90 (Triton's
front end, LLVM and ptxas, all shipped in the Triton wheel), through the same specialisation as a real launch. The
shapes take each path of the scan's plans and each constexpr branch of its kernels.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HAS_TRITON = importlib.util.find_spec("triton") is not None

# Runs in a fresh interpreter: it replaces Triton's active driver and its launch.
_COMPILE_CHECK = textwrap.dedent("""
    import json

    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction, MockTensor

    from monai_mamba_nets.ops import scan_triton
    from monai_mamba_nets.ops.conv_triton import causal_conv1d_silu_triton


    class OfflineDriver:
        # what compiling needs of a driver: a device, a stream and the target
        def get_current_device(self):
            return 0

        def get_current_stream(self, device):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)


    compiled = []
    launch = JITFunction.run


    def compile_instead(kernel, *args, grid, warmup, **kwargs):
        # tensors become their dtype at a 16-byte aligned address, as the ops hand them to the kernels
        args = [MockTensor(x.dtype) if isinstance(x, torch.Tensor) else x for x in args]
        binary = launch(kernel, *args, grid=grid, warmup=True, **kwargs)
        assert binary.metadata.target.arch == 90 and "cubin" in binary.asm, kernel.fn.__name__
        constants = {k: v for k, v in kwargs.items() if k.isupper()}
        compiled.append(dict(kernel=f"{kernel.fn.__module__.split('.')[-1]}.{kernel.fn.__name__}", **constants))
        return binary


    JITFunction.run = compile_instead
    triton.runtime.driver.set_active(OfflineDriver())


    def sequence(batch, dim, length, dtype, channel_major):
        if channel_major:  # the Mamba mixer's (dim, batch, L) order
            return torch.empty(dim, batch, length, dtype=dtype).transpose(0, 1)
        return torch.empty(batch, dim, length, dtype=dtype)


    def scan(batch, dim, length, dstate, groups=None, dtype=torch.float32, optional=True, channel_major=False,
             grad=True):
        matrix = (batch, dstate, length) if groups is None else (batch, groups, dstate, length)
        operands = dict(
            u=sequence(batch, dim, length, dtype, channel_major),
            delta=sequence(batch, dim, length, dtype, channel_major),
            A=torch.empty(dim, dstate),
            B=torch.empty(matrix, dtype=dtype),
            C=torch.empty(matrix, dtype=dtype),
            D=torch.empty(dim) if optional else None,
            z=sequence(batch, dim, length, dtype, channel_major) if optional else None,
            delta_bias=torch.empty(dim) if optional else None,
        )
        for x in operands.values():
            if x is not None:
                x.requires_grad_(grad)
        out = scan_triton.selective_scan_triton(**operands, delta_softplus=optional, return_last_state=True)[0]
        if grad:
            out.backward(torch.empty_like(out))


    # whole-sequence forward (L <= 1024) with the chunked backward and its carry kernel (19 chunks), 2 groups
    scan(2, 8, 600, 16, groups=2)
    # every chunked launch (the forward walks in Gluon), no optional operand; gradient programs take 8 channel
    # blocks, dB and dC in place; then inference, whose Gluon forward is three dependent launches
    scan(2, 64, 32768, 16, optional=False)
    scan(2, 64, 32768, 16, optional=False, grad=False)
    # the forward walks in Triton: fp16 rows whose length does not show them 4-byte aligned for cp.async
    scan(2, 64, 4100, 16, dtype=torch.float16, optional=False)
    # whole-sequence programs in bf16, N = 5, no optional operand
    scan(2, 16, 100, 5, dtype=torch.bfloat16, optional=False)
    # Mamba-UNet's 14 x 14 stage: whole-sequence gradient programs take several channel blocks; then inference
    scan(8, 3072, 196, 16, groups=4)
    scan(8, 3072, 196, 16, groups=4, grad=False)
    # the chunked forward in fp16 at N = 64, channel-major, 16 chunks: gradient programs fold the adjoint carry; 250
    # channels, not a multiple of the forward's channel block, so the Gluon walks keep their masks
    scan(2, 250, 512, 64, dtype=torch.float16, channel_major=True)
    # one chunk per sequence: the output launch alone (N = 32 keeps it off the whole-sequence forward), in Triton
    # (bf16 rows of 225 steps) and in Gluon
    scan(2, 20000, 225, 32, dtype=torch.bfloat16)
    scan(2, 20000, 240, 32, dtype=torch.bfloat16)

    for dtype, K, bias, channel_major in [(torch.float32, 4, True, False), (torch.bfloat16, 3, False, True)]:
        x = sequence(2, 24, 300, dtype, channel_major).requires_grad_()
        weight = torch.empty(24, K, dtype=dtype, requires_grad=True)
        y = causal_conv1d_silu_triton(x, weight, torch.empty(24, dtype=dtype, requires_grad=True) if bias else None)
        y.backward(torch.empty_like(y))

    print(json.dumps(compiled))
    """)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_every_kernel_compiles_for_sm90(tmp_path):
    tests_dir = Path(__file__).resolve().parent
    path = [str(tests_dir.parent)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    # a cache of its own, so that every kernel really goes through the compiler
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), TRITON_CACHE_DIR=str(tmp_path))
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_CHECK], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr
    compiled = json.loads(result.stdout.strip().splitlines()[-1])

    def variants(kernel, constant):
        return {entry[constant] for entry in compiled if entry["kernel"] == kernel}

    assert {entry["kernel"] for entry in compiled} == {
        *(
            f"scan_triton.{name}"
            for name in (
                "_forward_summary_kernel", "_forward_output_kernel", "_chunk_carry_kernel",
                "_backward_summary_kernel", "_backward_kernel", "_whole_forward_kernel", "_whole_backward_kernel",
                "_sum_partials_kernel",
            )
        ),
        "scan_gluon.forward_summary_kernel", "scan_gluon.forward_output_kernel",
        "conv_triton._forward_kernel", "conv_triton._backward_kernel",
    }  # fmt: skip
    # every constexpr branch of the kernels, each way
    branches = {
        "scan_triton._forward_output_kernel": ("SINGLE_CHUNK", "HAS_D", "HAS_Z", "HAS_BIAS", "SOFTPLUS"),
        "scan_gluon.forward_summary_kernel": ("HAS_BIAS", "SOFTPLUS", "EXACT", "DEPENDENT"),
        "scan_gluon.forward_output_kernel": (
            "SINGLE_CHUNK", "HAS_D", "HAS_Z", "HAS_BIAS", "SOFTPLUS", "EXACT", "DEPENDENT",
        ),
        "scan_triton._chunk_carry_kernel": ("REVERSE", "DEPENDENT"),
        "scan_triton._backward_kernel": ("INLINE_CARRY", "HAS_D", "HAS_Z", "HAS_BIAS", "SOFTPLUS"),
        "scan_triton._whole_forward_kernel": ("PRE_GATE", "HAS_D", "HAS_Z", "HAS_BIAS", "SOFTPLUS"),
        "scan_triton._whole_backward_kernel": ("HAS_D", "HAS_Z", "HAS_BIAS", "SOFTPLUS"),
        "conv_triton._forward_kernel": ("HAS_BIAS",),
        "conv_triton._backward_kernel": ("HAS_BIAS",),
    }
    for kernel, flags in branches.items():
        for flag in flags:
            assert variants(kernel, flag) == {False, True}, (kernel, flag)
    # gradient programs taking one and several channel blocks; the whole-sequence forward alone and before chunks
    for kernel, constant, single in [
        ("scan_triton._backward_kernel", "FOLD", 1),
        ("scan_triton._whole_backward_kernel", "FOLD", 1),
        ("scan_triton._whole_forward_kernel", "CHUNK", 0),
    ]:
        taken = variants(kernel, constant)
        assert single in taken and len(taken) > 1, (kernel, constant, taken)
