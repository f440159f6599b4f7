"""LightM-UNet: exact parameter counts of both variants, RVM semantics, shapes at any size, gradients, backends."""

from __future__ import annotations

import copy
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_mamba_nets import LightMUNet, Mamba, available_backends
from monai_mamba_nets.layers import ResidualVisionMamba, ResMambaBlock, get_rvm_layer


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mamba_parameters(c: int) -> int:
    """architectures.md section 1: 6C^2 + 4rC + 110C."""
    return 6 * c**2 + 4 * -(-c // 16) * c + 110 * c


def make_net(spatial_dims: int, in_channels: int, out_channels: int, seed: int = 0, **kwargs) -> LightMUNet:
    torch.manual_seed(seed)
    return LightMUNet(spatial_dims, in_channels, out_channels, scan_backend="torch", **kwargs)


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    "variant, spatial_dims, in_channels, out_channels, expected",
    [
        ("v1", 2, 3, 2, 5_011_765),
        ("v1", 3, 1, 3, 5_015_766),
        ("v0", 2, 3, 2, 5_375_991),
        ("v0", 3, 1, 3, 6_150_168),
    ],
)
def test_parameter_count_matches_reference(variant, spatial_dims, in_channels, out_channels, expected):
    with torch.device("meta"):  # counting needs no storage
        net = LightMUNet(spatial_dims, in_channels, out_channels, variant=variant)
    assert num_parameters(net) == expected


def test_parameter_breakdown_matches_reference():
    """architectures.md 3.5: v1 2D (in 3, out 2), block by block."""
    with torch.device("meta"):
        net = LightMUNet(2, 3, 2)
    assert num_parameters(net.convInit) == 123
    assert [num_parameters(stage) for stage in net.down_layers] == [22_210, 160_325, 575_109, 4_186_377]
    assert num_parameters(net.up_layers) == 24_419
    assert num_parameters(net.up_samples) == 43_008
    assert num_parameters(net.conv_final) == 194
    # 21 Mamba mixers: 2 + 5 + 5 + 9, the first of stages 1-3 at the finer stage's width
    widths = [m.d_model for m in net.modules() if isinstance(m, Mamba)]
    assert sorted(widths) == sorted([32] * 3 + [64] * 5 + [128] * 5 + [256] * 8)
    with torch.device("meta"):
        assert num_parameters(LightMUNet(2, 1, 2)) == 5_011_765 - 82


@pytest.mark.parametrize(
    "kwargs, expected",
    [({"init_filters": 16}, 1.343e6), ({"init_filters": 24}, 2.887e6), ({"blocks_down": (1, 2, 2, 2)}, 2.993e6)],
)
def test_other_widths_match_reference(kwargs, expected):
    with torch.device("meta"):
        assert round(num_parameters(LightMUNet(2, 3, 2, **kwargs)), -3) == expected


def test_reference_parameter_names():
    """SegResNet's and the reference's module names, so that the reference's state dicts load."""
    v1 = LightMUNet(2, 3, 2, blocks_down=(1, 2), blocks_up=(1,), init_filters=8).state_dict()
    for key in (
        "convInit.0.conv.weight",  # depthwise
        "convInit.1.conv.weight",  # pointwise
        "down_layers.0.1.norm1.weight",
        "down_layers.0.1.conv1.norm.weight",
        "down_layers.0.1.conv1.skip_scale",
        "down_layers.0.1.conv1.mamba.A_log",
        "down_layers.0.1.conv2.proj.bias",
        "down_layers.1.0.0.mamba.in_proj.weight",  # the RVM layer before the max-pool
        "up_samples.0.0.conv.weight",
        "up_layers.0.0.conv.1.conv.weight",
        "up_layers.0.0.skip_scale",
        "conv_final.0.weight",
        "conv_final.2.0.conv.bias",
        "conv_final.2.1.conv.bias",
    ):
        assert key in v1, key
    v0 = LightMUNet(2, 3, 2, blocks_down=(1, 2), blocks_up=(1,), init_filters=8, variant="v0").state_dict()
    for key in ("convInit.conv.weight", "up_layers.0.0.conv1.conv.weight", "conv_final.2.conv.bias"):
        assert key in v0, key
    assert "convInit.conv.bias" not in v0


# ---------------------------------------------------------------- the RVM layer


def test_rvm_layer_is_mamba_plus_scaled_skip_between_one_shared_layernorm():
    torch.manual_seed(0)
    layer = ResidualVisionMamba(8, 12, scan_backend="torch")
    with torch.no_grad():
        layer.skip_scale.fill_(0.37)
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.normal_()
    assert sum(isinstance(m, nn.LayerNorm) for m in layer.modules()) == 1
    assert num_parameters(layer) == mamba_parameters(8) + 2 * 8 + 8 * 12 + 12 + 1

    x = torch.randn(2, 8, 5, 7)
    tokens = x.flatten(2).transpose(1, 2)  # row-major: the last spatial axis runs fastest

    def norm(t):
        return F.layer_norm(t, (8,), layer.norm.weight, layer.norm.bias, layer.norm.eps)

    mixed = layer.mamba(norm(tokens)) + 0.37 * tokens
    expected = F.linear(norm(mixed), layer.proj.weight, layer.proj.bias).transpose(1, 2).reshape(2, 12, 5, 7)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_rvm_layer_runs_in_float32():
    torch.manual_seed(0)
    layer = ResidualVisionMamba(8, 8, scan_backend="torch")
    x = torch.randn(1, 8, 3, 4)
    out = layer(x.half())
    assert out.dtype == torch.float32 and out.shape == (1, 8, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = layer(x)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, layer(x))  # autocast does not reach inside the layer


def test_mamba_runs_before_the_max_pool():
    layer = get_rvm_layer(3, 8, 16, stride=2)
    assert isinstance(layer[0], ResidualVisionMamba) and isinstance(layer[1], nn.MaxPool3d)
    assert layer[1].kernel_size == 2 and layer[1].stride == 2
    assert isinstance(get_rvm_layer(2, 8, 16), ResidualVisionMamba)
    block = ResMambaBlock(2, 8, scan_backend="torch")
    x = torch.randn(1, 8, 4, 6)
    with torch.no_grad():
        for rvm in (block.conv1, block.conv2):
            rvm.proj.weight.zero_()
            rvm.proj.bias.zero_()
    torch.testing.assert_close(block(x), x)  # with zero branches only the identity is left


def test_rvm_layer_rejects_wrong_channels():
    with pytest.raises(ValueError, match="in_channels=8"):
        ResidualVisionMamba(8, 8)(torch.randn(1, 4, 3, 3))


# ---------------------------------------------------------------- shapes, padding, gradients


@pytest.mark.parametrize(
    "variant, shape, out_channels",
    [("v1", (2, 3, 35, 37), 2), ("v1", (1, 1, 13, 17, 11), 3), ("v0", (1, 1, 9, 6, 11), 3)],
)
def test_output_has_input_size(variant, shape, out_channels):
    net = make_net(len(shape) - 2, shape[1], out_channels, variant=variant).eval()
    with torch.no_grad():
        out = net(torch.randn(shape))
    assert out.shape == (shape[0], out_channels, *shape[2:])
    assert torch.isfinite(out).all()


def test_odd_sizes_are_zero_padded_at_the_far_end_and_cropped_back():
    net = make_net(2, 3, 2).eval()
    x = torch.randn(1, 3, 13, 10)
    with torch.no_grad():
        out = net(x)
        padded = net(F.pad(x, (0, 6, 0, 3)))  # to 16 x 16
    assert padded.shape[2:] == (16, 16)
    torch.testing.assert_close(out, padded[..., :13, :10])


@pytest.mark.parametrize("variant", ["v1", "v0"])
def test_gradients_reach_every_parameter(variant):
    net = make_net(2, 3, 2, variant=variant)
    net(torch.randn(2, 3, 11, 13)).square().mean().backward()
    without = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_same_weights_give_same_output_on_torch_backend():
    reference = make_net(2, 3, 2, seed=0).eval()
    candidate = make_net(2, 3, 2, seed=1).eval()
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 24, 21)
    with torch.no_grad():
        expected, actual = reference(x), candidate(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "shape, match",
    [((1, 1, 16, 16), "in_channels=3"), ((1, 3, 16, 16, 16), "2 spatial dims"), ((3, 16, 16), "2 spatial dims")],
)
def test_wrong_input_is_rejected(shape, match):
    with pytest.raises(ValueError, match=match):
        LightMUNet(2, 3, 2, blocks_down=(1, 1), blocks_up=(1,), init_filters=8)(torch.randn(shape))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"variant": "v2"}, "variant"),
        ({"blocks_up": (1, 1)}, "blocks_up"),
        ({"blocks_down": (1, 0, 2, 4)}, "blocks_down"),
        ({"out_channels": 0}, "out_channels"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    arguments = {"spatial_dims": 2, "in_channels": 3, "out_channels": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        LightMUNet(**arguments)


# ---------------------------------------------------------------- GPU: the fast backends agree with torch


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("shape", [(2, 3, 64, 72), (1, 1, 32, 40, 24)])
def test_fast_backends_agree_with_torch_on_gpu(backend, shape, exact_float32):
    """The full-size network with identical weights on the torch backend and on a GPU kernel, forward and grads."""
    if backend not in available_backends():
        pytest.skip(f"scan backend {backend!r} is not available here")
    spatial_dims, in_channels = len(shape) - 2, shape[1]
    reference = make_net(spatial_dims, in_channels, 3).cuda()
    candidate = LightMUNet(spatial_dims, in_channels, 3, scan_backend=backend).cuda()
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(shape, device="cuda")
    expected, actual = reference(x), candidate(x)
    difference = ((actual - expected).abs().max() / expected.abs().max()).item()
    print(f"FIGURE LightMUNet {tuple(shape)} {backend} vs torch: max|diff| / max|y| = {difference:.2e}")
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    expected.square().mean().backward()
    actual.square().mean().backward()
    # Against float64: within 1e-3 of the gradient's scale, or, where fp32 itself cannot get there (GroupNorm
    # backward cancels: even the torch backend is a few % off float64 on some tensors), no further than 4x the
    # torch backend's own fp32 error.
    exact = copy.deepcopy(reference).double()
    exact.zero_grad()
    exact(x.double()).square().mean().backward()
    for (name, p_exact), p_torch, p in zip(exact.named_parameters(), reference.parameters(), candidate.parameters()):
        scale = p_exact.grad.abs().max().item()
        torch_error = (p_torch.grad.double() - p_exact.grad).abs().max().item()
        backend_error = (p.grad.double() - p_exact.grad).abs().max().item()
        assert backend_error <= max(1e-3 * scale, 4 * torch_error), (name, backend_error, torch_error, scale)


@pytest.mark.gpu
def test_mixed_precision_training_step_on_gpu():
    """Under bfloat16 autocast the convolutions run in bf16 while every RVM layer stays float32."""
    torch.manual_seed(0)
    net = LightMUNet(3, 1, 3).cuda()  # scan backend "auto": the fastest one installed
    rvm_dtypes = []
    hooks = [
        m.register_forward_hook(lambda m, args, out: rvm_dtypes.append(out.dtype))
        for m in net.modules()
        if isinstance(m, ResidualVisionMamba)
    ]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(torch.randn(2, 1, 32, 24, 40, device="cuda"))
    out.float().square().mean().backward()
    for hook in hooks:
        hook.remove()
    assert out.shape == (2, 3, 32, 24, 40) and torch.isfinite(out).all()
    assert rvm_dtypes and set(rvm_dtypes) == {torch.float32}
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
