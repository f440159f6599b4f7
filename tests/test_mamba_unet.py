"""Mamba-UNet: SS2D cross-scan, parameter counts, shapes, padding, gradients and the VMamba encoder loader."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import monai_mamba_nets.layers.ss2d as ss2d_module
from monai_mamba_nets import MambaUNet, available_backends
from monai_mamba_nets.layers import SS2D, cross_merge, cross_scan
from monai_mamba_nets.layers.patch import depth_to_space, merge_phases


def small_net(**kwargs) -> MambaUNet:
    """A narrow Mamba-UNet with the reference's layout, fast on CPU."""
    torch.manual_seed(0)
    kwargs = {"in_channels": 1, "out_channels": 3, "embed_dim": 8, "scan_backend": "torch", **kwargs}
    return MambaUNet(**kwargs)


def num_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- parameter counts and names


@pytest.mark.parametrize("classes, expected", [(4, 19_121_664), (9, 19_122_144), (2, 19_121_472)])
def test_parameter_count_matches_reference(classes, expected):
    with torch.device("meta"):  # counting needs no storage
        assert num_parameters(MambaUNet(2, in_channels=3, out_channels=classes)) == expected


def test_parameter_breakdown_matches_reference():
    """architectures.md 5.5; a grey-scale net repeats to a 3-channel stem and has the same count."""
    with torch.device("meta"):
        net = MambaUNet(2, in_channels=1, out_channels=4)
    assert num_parameters(net) == 19_121_664
    assert num_parameters(net.patch_embed) == 4_896
    assert [num_parameters(layer) for layer in net.layers] == [285_312, 976_128, 3_574_272, 8_911_872]
    assert [num_parameters(layer) for layer in net.layers_up] == [1_180_416, 2_686_848, 753_600, 210_816]
    assert num_parameters(net.concat_back_dim) == 387_744
    assert num_parameters(net.norm) + num_parameters(net.norm_up) == 1_536 + 192
    assert num_parameters(net.up) == 147_648
    assert net.output.bias is None and num_parameters(net.output) == 96 * 4


@pytest.mark.parametrize("d_model", [96, 768, 40])
def test_ss2d_parameter_formula(d_model):
    rank = -(-d_model // 16)
    assert num_parameters(SS2D(d_model)) == 6 * d_model**2 + 16 * rank * d_model + 424 * d_model


def test_vmamba_parameter_names_and_shapes():
    state = small_net(in_channels=3, out_channels=4).state_dict()
    d, di, rank = 8, 16, 1
    expected = {
        "patch_embed.proj.weight": (d, 3, 4, 4),
        "patch_embed.norm.weight": (d,),
        "layers.0.blocks.0.ln_1.weight": (d,),
        "layers.0.blocks.0.self_attention.in_proj.weight": (2 * di, d),
        "layers.0.blocks.0.self_attention.conv2d.weight": (di, 1, 3, 3),
        "layers.0.blocks.0.self_attention.conv2d.bias": (di,),
        "layers.0.blocks.0.self_attention.x_proj_weight": (4, rank + 32, di),
        "layers.0.blocks.0.self_attention.dt_projs_weight": (4, di, rank),
        "layers.0.blocks.0.self_attention.dt_projs_bias": (4, di),
        "layers.0.blocks.0.self_attention.A_logs": (4 * di, 16),
        "layers.0.blocks.0.self_attention.Ds": (4 * di,),
        "layers.0.blocks.0.self_attention.out_norm.weight": (di,),
        "layers.0.blocks.0.self_attention.out_proj.weight": (d, di),
        "layers.0.downsample.norm.weight": (4 * d,),
        "layers.0.downsample.reduction.weight": (2 * d, 4 * d),
        "layers_up.0.expand.weight": (16 * d, 8 * d),
        "layers_up.1.upsample.expand.weight": (8 * d, 4 * d),
        "concat_back_dim.1.weight": (4 * d, 8 * d),
        "concat_back_dim.3.bias": (d,),
        "norm.weight": (8 * d,),
        "norm_up.weight": (d,),
        "up.expand.weight": (16 * d, d),
        "up.norm.weight": (d,),
        "output.weight": (4, d, 1, 1),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert not any(k.startswith(("layers.3.downsample", "layers_up.3.upsample", "concat_back_dim.0")) for k in state)


def test_drop_path_rates_rise_over_encoder_and_mirror_in_decoder():
    net = small_net(drop_path_rate=0.2)
    rates = torch.linspace(0, 0.2, 8).tolist()
    encoder = [block.drop_path.drop_prob for layer in net.layers for block in layer.blocks]
    decoder = [[block.drop_path.drop_prob for block in layer.blocks] for layer in list(net.layers_up)[1:]]
    assert encoder == pytest.approx(rates)
    assert decoder == [pytest.approx(rates[4:6]), pytest.approx(rates[2:4]), pytest.approx(rates[0:2])]


# ---------------------------------------------------------------- cross-scan / cross-merge


def test_cross_scan_reads_four_distinct_orders():
    height, width = 3, 5
    index = torch.arange(height * width).view(1, 1, height, width)
    orders = cross_scan(index)[0, :, 0].tolist()
    row_major = [h * width + w for h in range(height) for w in range(width)]
    column_major = [h * width + w for w in range(width) for h in range(height)]
    assert orders == [row_major, column_major, row_major[::-1], column_major[::-1]]


def test_cross_merge_is_the_adjoint_of_cross_scan():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 7, generator=g, dtype=torch.float64)
    y = torch.randn(2, 4, 3, 28, generator=g, dtype=torch.float64)
    merged = cross_merge(y, 4, 7)
    assert merged.shape == (2, 3, 28)
    torch.testing.assert_close((cross_scan(x) * y).sum(), (x.flatten(2) * merged).sum())
    torch.testing.assert_close(cross_merge(cross_scan(x), 4, 7), 4 * x.flatten(2))
    with pytest.raises(ValueError, match="cross_merge"):
        cross_merge(y, 4, 8)


def _only_direction(ss2d: SS2D, direction: int) -> None:
    """Silence every direction but one: zero the C rows of the other x_proj weights and every D."""
    with torch.no_grad():
        c_rows = slice(ss2d.dt_rank + ss2d.d_state, None)
        for k in range(4):
            if k != direction:
                ss2d.x_proj_weight[k, c_rows] = 0
        ss2d.Ds.zero_()


def _dependence(ss2d: SS2D, height: int, width: int, pixel: tuple[int, int]) -> torch.Tensor:
    """Which input pixels the merged scan output at ``pixel`` depends on (through the gradient)."""
    x = torch.randn(1, ss2d.d_inner, height, width, dtype=torch.float64, requires_grad=True)
    ss2d.forward_core(x)[0, :, pixel[0], pixel[1]].sum().backward()
    return x.grad.abs().sum(1)[0] > 0


@pytest.mark.parametrize("direction", [0, 1, 2, 3])
def test_each_direction_sees_its_own_causal_past(direction):
    """Scan direction k alone makes the output at p depend exactly on the pixels at or before p in order k,
    so a dropped, duplicated or mis-merged direction fails."""
    height, width, pixel = 4, 5, (1, 2)
    torch.manual_seed(direction)
    ss2d = SS2D(4, d_state=4, scan_backend="torch").double()
    _only_direction(ss2d, direction)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    position = [rows * width + cols, cols * height + rows][direction % 2]
    target = position[pixel]
    expected = position <= target if direction < 2 else position >= target
    assert torch.equal(_dependence(ss2d, height, width, pixel), expected)


def test_all_directions_together_see_the_whole_map():
    torch.manual_seed(0)
    ss2d = SS2D(4, d_state=4, scan_backend="torch").double()
    assert _dependence(ss2d, 4, 5, (1, 2)).all()


def test_ss2d_runs_one_grouped_scan(monkeypatch):
    calls = []
    scan = ss2d_module.selective_scan

    def recording_scan(u, delta, A, B, C, *args, **kwargs):
        calls.append((tuple(u.shape), tuple(A.shape), tuple(B.shape), tuple(C.shape), kwargs.get("z")))
        return scan(u, delta, A, B, C, *args, **kwargs)

    monkeypatch.setattr(ss2d_module, "selective_scan", recording_scan)
    ss2d = SS2D(8, d_state=4, scan_backend="torch")
    out = ss2d(torch.randn(2, 3, 5, 8))
    assert out.shape == (2, 3, 5, 8)
    assert calls == [((2, 64, 15), (64, 4), (2, 4, 4, 15), (2, 4, 4, 15), None)]


# ---------------------------------------------------------------- patch blocks


def test_patch_merging_phase_order_and_depth_to_space_layout():
    x = torch.arange(16.0).view(1, 4, 4, 1)
    # phases (row, column) offsets (0, 0), (1, 0), (0, 1), (1, 1) of the top-left 2x2 window
    assert merge_phases(x)[0, 0, 0].tolist() == [0.0, 4.0, 1.0, 5.0]
    channels = torch.arange(8.0).view(1, 1, 1, 8)  # (p1, p2, c) with c = 2
    assert depth_to_space(channels, 2)[0, :, :, 1].tolist() == [[1.0, 3.0], [5.0, 7.0]]
    with pytest.raises(ValueError, match="even"):
        merge_phases(torch.zeros(1, 3, 4, 1))


# ---------------------------------------------------------------- the network


def test_output_shape_224():
    net = small_net(out_channels=4).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 224, 224)).shape == (1, 4, 224, 224)


def test_odd_size_is_zero_padded_to_32_and_cropped_back():
    net = small_net().eval()
    x = torch.randn(2, 1, 50, 70)
    with torch.no_grad():
        out = net(x)
        padded = net(F.pad(x, (0, 96 - 70, 0, 64 - 50)))
    assert out.shape == (2, 3, 50, 70)
    torch.testing.assert_close(out, padded[..., :50, :70])


def test_grayscale_input_is_repeated_to_a_three_channel_stem():
    grey = small_net(in_channels=1).eval()
    rgb = small_net(in_channels=3).eval()
    rgb.load_state_dict(grey.state_dict())
    assert grey.patch_embed.proj.in_channels == 3
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)))


def test_grayscale_and_multichannel_stems_without_repeat():
    single = small_net(in_channels=1, repeat_grayscale=False).eval()
    multi = small_net(in_channels=2).eval()
    assert single.patch_embed.proj.in_channels == 1 and multi.patch_embed.proj.in_channels == 2
    with torch.no_grad():
        assert single(torch.randn(1, 1, 40, 33)).shape == (1, 3, 40, 33)
        assert multi(torch.randn(1, 2, 32, 32)).shape == (1, 3, 32, 32)


def test_gradients_reach_every_parameter():
    net = small_net(drop_path_rate=0.0).train()
    # 64 x 32 leaves a 2 x 1 bottleneck: with a single token A would not enter the scan
    net(torch.randn(2, 1, 64, 32)).square().mean().backward()
    without = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spatial_dims": 3}, "spatial_dims"),
        ({"in_channels": 3, "repeat_grayscale": True}, "repeat_grayscale"),
        ({"depths": (2,)}, "depths"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
        ({"out_channels": 0}, "out_channels"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_net(**kwargs)


def test_wrong_input_channels_are_rejected():
    with pytest.raises(ValueError, match=re.escape("in_channels=1")):
        small_net()(torch.randn(1, 3, 32, 32))


# ---------------------------------------------------------------- pretrained VMamba encoder


def _vmamba_tiny_like_checkpoint(path, wrong_shape_key: str) -> dict[str, torch.Tensor]:
    """VMamba's layout: a {"model": state} file with the encoder of a depths (2, 2, 9, 2) net and a classifier."""
    donor = small_net(in_channels=3, embed_dim=16, depths=(2, 2, 9, 2))
    state = {k: v for k, v in donor.state_dict().items() if k.startswith(("patch_embed.", "layers."))}
    state["head.weight"] = torch.randn(1000, 128)
    state[wrong_shape_key] = torch.randn(7)
    torch.save({"model": state, "epoch": 292}, path)
    return state


def test_load_pretrained_encoder_reports_loaded_skipped_missing(tmp_path):
    wrong = "layers.1.blocks.1.ln_1.weight"
    path = tmp_path / "vmamba_tiny.pth"
    ckpt = _vmamba_tiny_like_checkpoint(path, wrong)
    net = small_net(in_channels=1, embed_dim=16, out_channels=4)
    model_keys = list(net.state_dict())
    report = net.load_pretrained_encoder(path)

    def mirror(key):
        stage, rest = re.fullmatch(r"layers\.(\d)\.(.+)", key).groups()
        return f"layers_up.{3 - int(stage)}.{rest}"

    loadable = {k for k in ckpt if k in model_keys and k != wrong}
    loadable |= {mirror(k) for k in loadable if k.startswith("layers.") and mirror(k) in model_keys}
    assert set(report.loaded) == loadable
    assert set(report.missing) == set(model_keys) - loadable
    assert set(report.loaded).isdisjoint(report.missing)

    # what the encoder mirror cannot place: stage-2 blocks 2-8, the merge layers, stage 3 (layers_up.0 expands only)
    assert report.skipped[mirror(wrong)] == f"shape (7,) in the checkpoint, (32,) in the model (mirrored from {wrong})"
    assert report.skipped[wrong] == "shape (7,) in the checkpoint, (32,) in the model"
    assert report.skipped["head.weight"] == "not in the model"
    for j in range(2, 9):
        assert report.skipped[f"layers.2.blocks.{j}.ln_1.weight"] == "not in the model"
        assert f"layers_up.1.blocks.{j}.self_attention.A_logs" in report.skipped
    assert "layers_up.3.downsample.reduction.weight" in report.skipped
    assert "layers_up.0.blocks.0.self_attention.Ds" in report.skipped
    assert set(report.skipped) == (set(ckpt) | {mirror(k) for k in ckpt if k.startswith("layers.")}) - loadable

    state = net.state_dict()
    source = "layers.0.blocks.1.self_attention.x_proj_weight"
    torch.testing.assert_close(state[source], ckpt[source])
    torch.testing.assert_close(state["layers_up.3.blocks.1.self_attention.x_proj_weight"], ckpt[source])
    stage_2 = "blocks.0.self_attention.A_logs"
    torch.testing.assert_close(state[f"layers_up.1.{stage_2}"], ckpt[f"layers.2.{stage_2}"])
    torch.testing.assert_close(state["patch_embed.proj.weight"], ckpt["patch_embed.proj.weight"])
    assert "missing output.weight" in str(report)


def test_load_pretrained_encoder_rejects_bad_files(tmp_path):
    net = small_net()
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        net.load_pretrained_encoder(tmp_path / "absent.pth")
    torch.save({"model": {"layers.0.blocks.0.ln_1.weight": [1.0, 2.0]}}, tmp_path / "lists.pth")
    with pytest.raises(ValueError, match="no state dict of tensors"):
        net.load_pretrained_encoder(tmp_path / "lists.pth")


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_scan_backends_agree_on_gpu(backend):
    """The full-size network on the torch backend and on a GPU kernel, with identical weights."""
    if backend not in available_backends():
        pytest.skip(f"scan backend {backend!r} is not available here")
    torch.manual_seed(0)
    reference = MambaUNet(2, in_channels=1, out_channels=4, scan_backend="torch").cuda().eval()
    candidate = MambaUNet(2, in_channels=1, out_channels=4, scan_backend=backend).cuda().eval()
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(2, 1, 224, 224, device="cuda")
    with torch.no_grad():
        expected, actual = reference(x), candidate(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
