"""The Triton causal depthwise conv1d + SiLU: against ``F.conv1d`` in float64, under Triton's interpreter on CPU and
compiled on GPU, and as the Mamba mixer's convolution where causal-conv1d is not installed."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
# (batch, channels, L, K, bias, layout of x): ragged tiles, L < K, no bias, K = 3
CASES = [
    (2, 40, 70, 4, True, "channel-major"),
    (2, 24, 50, 4, True, "token-major"),
    (1, 5, 3, 4, False, "contiguous"),
    (1, 33, 130, 3, True, "contiguous"),
]


def _operands(batch, channels, length, K, bias, layout, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(length)
    if layout == "channel-major":  # the first half of the mixer's (2 channels, batch, L) input projection
        x = torch.randn(2 * channels, batch, length, generator=g)[:channels].transpose(0, 1)
    elif layout == "token-major":  # a half of (batch, L, 2 channels) tokens: channel stride 1
        x = torch.randn(batch, length, 2 * channels, generator=g).transpose(1, 2)[:, :channels]
    else:
        x = torch.randn(batch, channels, length, generator=g)
    weight, b = torch.randn(channels, K, generator=g), torch.randn(channels, generator=g) if bias else None
    grad = torch.randn(batch, channels, length, generator=g)
    # .to() keeps the strides of dense tensors, the channel-major layout among them
    move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return move(x), move(weight), move(b), move(grad)


def _reference(x, weight, bias):
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=weight.shape[1] - 1, groups=x.shape[1])
    return F.silu(out[..., : x.shape[-1]])


def _errors(conv, x, weight, bias, grad) -> list[float]:
    """max |ours - ref| / max |ref| of the output and of each gradient, the reference in float64."""
    results = []
    for fn, dtype in ((conv, None), (_reference, torch.float64)):
        leaves = [
            None if t is None else (t.to(dtype) if dtype else t).detach().requires_grad_() for t in (x, weight, bias)
        ]
        out = fn(*leaves)
        (out * grad.to(out.dtype)).sum().backward()
        results.append([out] + [t.grad for t in leaves if t is not None])
    return [((a.double() - r).abs().max() / r.abs().max()).item() for a, r in zip(*results)]


_INTERPRETER_CHECK = """
import sys
from test_conv_triton import CASES, _errors, _operands
from monai_mamba_nets.ops.conv_triton import causal_conv1d_silu_triton
for case in CASES:
    x, weight, bias, grad = _operands(*case)
    errors = _errors(causal_conv1d_silu_triton, x, weight, bias, grad)
    assert max(errors) <= 1e-5, (case, errors)
    # the output keeps a channel-major input's layout, else it is contiguous
    expected = x.stride() if case[-1] == "channel-major" else causal_conv1d_silu_triton(x.contiguous(), weight).stride()
    assert causal_conv1d_silu_triton(x, weight, bias).stride() == expected, case
print("interpreter check passed")
"""


@needs_triton
def test_matches_conv1d_under_triton_interpreter():
    tests_dir = Path(__file__).resolve().parent
    path = os.pathsep.join([str(tests_dir), str(tests_dir.parent)] + [os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    result = subprocess.run(
        [sys.executable, "-c", _INTERPRETER_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "interpreter check passed" in result.stdout


@needs_triton
@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, name",
    [((4, 8), (4, 4), None, "x"), ((1, 4, 8), (5, 4), None, "weight"), ((1, 4, 8), (4, 4), (3,), "bias")],
)
def test_bad_shapes_name_the_argument(x_shape, w_shape, b_shape, name):
    from monai_mamba_nets.ops.conv_triton import causal_conv1d_silu_triton

    bias = None if b_shape is None else torch.zeros(b_shape)
    with pytest.raises(ValueError, match=f"`{name}`"):
        causal_conv1d_silu_triton(torch.zeros(x_shape), torch.zeros(w_shape), bias)


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("dtype, bound", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("case", CASES + [(2, 128, 32768, 4, True, "channel-major")])
def test_matches_conv1d_on_gpu(case, dtype, bound):
    from monai_mamba_nets.ops.conv_triton import causal_conv1d_silu_triton

    x, weight, bias, grad = _operands(*case, device="cuda")
    x = x.to(dtype)
    errors = _errors(causal_conv1d_silu_triton, x, weight, bias, grad)
    assert max(errors) <= bound, errors


@pytest.mark.gpu
@needs_triton
def test_mixer_takes_triton_conv_without_causal_conv1d():
    from monai_mamba_nets import Mamba
    from monai_mamba_nets.layers import mamba as mamba_layer

    torch.manual_seed(0)
    mixer = Mamba(16, scan_backend="triton").cuda()
    x = torch.randn(2, 300, 16, device="cuda")
    calls = []
    kernel = mamba_layer._triton_conv_kernel()
    spy = lambda *args: calls.append(1) or kernel(*args)  # noqa: E731
    with mock.patch.object(mamba_layer, "_causal_conv1d_kernel", lambda: None):
        with mock.patch.object(mamba_layer, "_triton_conv_kernel", lambda: spy):
            ours = mixer(x)
        with mock.patch.object(mamba_layer, "_triton_conv_kernel", lambda: None):
            reference = mixer(x)
    assert calls, "the mixer did not use the Triton convolution"
    assert ((ours - reference).abs().max() / reference.abs().max()).item() < 1e-5
