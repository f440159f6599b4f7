"""Complexity counter: the papers' thop-style numbers and full MACs at the real input shapes, and its rules."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from monai_mamba_nets import LightMUNet, Mamba
from monai_mamba_nets.cli import complexity as complexity_command
from monai_mamba_nets.complexity import build_network, count_complexity


def lightm(spatial_dims: int, variant: str) -> LightMUNet:
    in_channels, out_channels = (3, 2) if spatial_dims == 2 else (1, 3)
    return LightMUNet(spatial_dims, in_channels, out_channels, variant=variant)


# ---------------------------------------------------------------- LightM-UNet targets (architectures.md 3.5, 3.7)

# per full-resolution pixel/voxel, derived by hand from the v1 block table (3.3) at 2D 512^2 / 3D 128^3:
# conv = stem + decoder 1x1 convs + ResUpBlocks + head; linear = the RVM projections;
# mamba = 21 mixers at 6C^2 + 4rC + 204C per token, by the resolution they run at
_V1_FULL_PER_PIXEL = {
    2: {"conv": 123 + 1_536 + 3_576 + 96, "linear": 24_576, "mamba": 184_992},
    3: {"conv": 59 + 448 + 2_926 + 128, "linear": 9_728, "mamba": 80_200},
}


@pytest.mark.parametrize(
    "spatial_dims, variant, shape, thop_params, thop_per_pixel, full_g",
    [
        (2, "v1", (1, 3, 512, 512), 727_581, 32_507, 56.3),
        (3, "v1", (1, 1, 128, 128, 128), 731_582, 14_489, 196.1),
        (2, "v0", (12, 3, 512, 512), 1_091_810, 84_936, 12 * 70.1),
        (3, "v0", (2, 1, 128, 128, 128), 1_865_987, 109_104, 2 * 394.5),
    ],
)
def test_lightm_unet_counts_match_reference(spatial_dims, variant, shape, thop_params, thop_per_pixel, full_g):
    report = count_complexity(lightm(spatial_dims, variant), shape)
    pixels = shape[0] * math.prod(shape[2:])
    assert report.thop_params == thop_params
    assert report.thop_macs == thop_per_pixel * pixels
    assert round(report.full_macs / 1e9 / shape[0], 1) == pytest.approx(full_g / shape[0])
    if variant == "v1":
        expected = {kind: per_pixel * pixels for kind, per_pixel in _V1_FULL_PER_PIXEL[spatial_dims].items()}
        assert report.full_macs_by_kind == expected


def test_paper_table_numbers_are_v0_under_thop():
    """The paper's 1.09 M / 267.19 G (M&S, 12 x 3 x 512^2) and 1.87 M / 457.62 G (LiTS, 2 x 1 x 128^3)."""
    two_d = count_complexity(lightm(2, "v0"), (12, 3, 512, 512))
    three_d = count_complexity(lightm(3, "v0"), (2, 1, 128, 128, 128))
    assert (round(two_d.thop_params / 1e6, 2), round(two_d.thop_macs / 1e9, 2)) == (1.09, 267.19)
    assert (round(three_d.thop_params / 1e6, 2), round(three_d.thop_macs / 1e9, 2)) == (1.87, 457.62)
    assert two_d.true_params == 5_375_991 and three_d.true_params == 6_150_168


# ---------------------------------------------------------------- the other networks


def test_mamba_unet_counts_match_reference():
    """architectures.md 5.5: 15.48 M parameters visible to thop, 3.54 G thop MACs, about 5.6 G in full."""
    report = count_complexity(build_network("MambaUNet", in_channels=3, out_channels=4), (1, 3, 224, 224))
    assert report.true_params == 19_121_664
    assert round(report.thop_params / 1e6, 2) == 15.48
    assert round(report.thop_macs / 1e9, 2) == 3.54
    assert round(report.full_macs / 1e9, 1) == 5.6


def test_lkm_unet_2d_full_macs_match_reference():
    """architectures.md 4.5: 55.0 G at 1 x 1 x 320^2 (conv 45.3, Mamba 8.4)."""
    report = count_complexity(build_network("LKMUNet.from_reference_plan", spatial_dims=2), (1, 1, 320, 320))
    assert report.true_params == 80_886_452
    assert round(report.full_macs / 1e9, 1) == 55.0
    assert round(report.full_macs_by_kind["conv"] / 1e9, 1) == 45.3
    assert round(report.full_macs_by_kind["mamba"] / 1e9, 1) == 8.4


def test_lkm_unet_3d_thop_params_match_reference():
    """architectures.md 4.5: thop on the reference 3D model reports 185.3 M parameters (nnU-Net blocks register
    each conv/norm twice, the decoder walks the encoder again, the unfused Mamba modules are visible)."""
    report = count_complexity(build_network("LKMUNet.from_reference_plan", spatial_dims=3), (1, 1, 40, 224, 192))
    assert report.true_params == 63_782_246
    assert report.thop_params == 185_268_590
    assert round(report.thop_params / 1e6, 1) == 185.3
    assert report.thop_params == pytest.approx(185.3e6, rel=5e-3)


# ---------------------------------------------------------------- counting rules on small modules


class _Shared(nn.Module):
    """One Linear reached through two parents, and one that is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.again = nn.Sequential(self.linear)
        self.unused = nn.Linear(4, 100)
        self.norm = nn.GroupNorm(1, 3)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.norm(self.linear(x).unsqueeze(-1)) * self.scale


def test_thop_rules_follow_thop():
    report = count_complexity(_Shared(), (2, 4))
    # thop: the shared Linear twice (15 parameters, 2 * 3 * 4 MACs each time); never-called, GroupNorm and
    # a custom module's own parameter are invisible
    assert report.true_params == 15 + 500 + 6 + 1
    assert report.thop_params == 2 * 15
    assert report.thop_macs == 2 * 24
    assert report.full_macs == report.full_macs_by_kind["linear"] == 24


def test_declared_multiplicity_hides_and_repeats_subtrees():
    class Declared(_Shared):
        thop_multiplicity = {(_Shared, "again"): 0, nn.Linear: 3}

    report = count_complexity(Declared(), (2, 4))
    assert report.thop_params == 3 * 15 and report.thop_macs == 3 * 24
    assert report.full_macs == 24  # full MACs ignore the declaration


@pytest.mark.parametrize("project_output", [True, False])
def test_mamba_full_macs_follow_the_closed_form(project_output):
    c, tokens = 64, 2 * 50
    mamba = Mamba(c, project_output=project_output)
    report = count_complexity(mamba, (2, 50, c))
    di, r, n = 2 * c, 4, 16
    per_token = c * 2 * di + di * 4 + di * (r + 2 * n) + r * di + 4 * di * n + 2 * di
    per_token += di * c if project_output else 0
    assert report.full_macs_by_kind == {"conv": 0, "linear": 0, "mamba": tokens * per_token}


def test_transposed_convolution_full_macs():
    conv = nn.ConvTranspose3d(8, 4, kernel_size=2, stride=2)
    report = count_complexity(conv, (1, 8, 3, 4, 5))
    assert report.full_macs == 3 * 4 * 5 * 8 * 4 * 8  # each input voxel meets 4 channels x 8 taps
    assert report.thop_macs == 8 * 60 * 4 * 8 * 8  # thop: output voxels x input channels x taps


def test_counting_leaves_the_network_as_it_was():
    net = LightMUNet(2, 3, 2, blocks_down=(1, 1), blocks_up=(1,), init_filters=8, scan_backend="torch").train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    count_complexity(net, (1, 3, 16, 16))
    assert net.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    out = net(torch.randn(1, 3, 16, 16))  # the real scan is back
    assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("shape", [(), (1, 0, 4), (1, 3.5, 4)])
def test_bad_shape_is_rejected(shape):
    with pytest.raises(ValueError, match="input_shape"):
        count_complexity(nn.Linear(4, 4), shape)


def test_unknown_network_is_rejected():
    with pytest.raises(ValueError, match="unknown network 'UNet'"):
        build_network("UNet")
    with pytest.raises(ValueError, match="no constructor"):
        build_network("LightMUNet.from_nothing")


# ---------------------------------------------------------------- command line


def test_complexity_command():
    text = complexity_command("LightMUNet", (1, 3, 64, 64), spatial_dims=2, in_channels=3, out_channels=2)
    assert "5,011,765" in text and "727,581" in text and f"{32_507 * 64 * 64:,}" in text


@pytest.mark.slow
def test_complexity_command_through_fire():
    args = ["complexity", "LightMUNet", "--shape=1,1,16,16,16", "--spatial_dims=3", "--in_channels=1"]
    args += ["--out_channels=3", "--variant=v0"]
    result = subprocess.run(
        [sys.executable, "-m", "monai_mamba_nets", *args], capture_output=True, text=True, timeout=300, check=True
    )
    assert "6,150,168" in result.stdout and "1,865,987" in result.stdout
