"""The Mamba-1 mixer: mamba-ssm's parameter layout and initialisation, and its forward wiring."""

import math

import pytest
import torch
import torch.nn.functional as F

from monai_mamba_nets import BidirectionalMamba, Mamba
from monai_mamba_nets.ops import selective_scan_ref

# mamba_ssm.Mamba(d_model=64) state dict (mamba_ssm/modules/mamba_simple.py, defaults)
MAMBA_SSM_LAYOUT_64 = {
    "A_log": (128, 16),
    "D": (128,),
    "in_proj.weight": (256, 64),
    "conv1d.weight": (128, 1, 4),
    "conv1d.bias": (128,),
    "x_proj.weight": (4 + 32, 128),
    "dt_proj.weight": (128, 4),
    "dt_proj.bias": (128,),
    "out_proj.weight": (64, 128),
}


def test_state_dict_layout_matches_mamba_ssm():
    layout = {k: tuple(v.shape) for k, v in Mamba(64).state_dict().items()}
    assert layout == MAMBA_SSM_LAYOUT_64


@pytest.mark.parametrize("d_model, expected", [(32, 9_920), (64, 32_640), (128, 116_480), (320, 675_200)])
def test_parameter_count(d_model, expected):
    rank = math.ceil(d_model / 16)
    assert expected == 6 * d_model**2 + 4 * rank * d_model + 110 * d_model
    assert sum(p.numel() for p in Mamba(d_model).parameters()) == expected


def test_initialisation_follows_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba(64, dt_min=1e-3, dt_max=0.1)
    assert torch.equal(m.A_log, torch.log(torch.arange(1, 17.0)).repeat(128, 1))
    assert torch.equal(m.D, torch.ones(128))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert m.dt_proj.weight.abs().max() <= 4**-0.5
    assert m.A_log._no_weight_decay and m.D._no_weight_decay and m.dt_proj.bias._no_reinit


def _reference_mixer(m: Mamba, x: torch.Tensor) -> torch.Tensor:
    """The mixer spelled out step by step (architectures.md section 1) on the sequential reference scan."""
    length = x.shape[1]
    xz = x @ m.in_proj.weight.T
    inner, gate = xz[..., : m.d_inner], xz[..., m.d_inner :]
    conv = F.conv1d(inner.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=m.d_conv - 1, groups=m.d_inner)
    inner = F.silu(conv[..., :length])
    proj = inner.transpose(1, 2) @ m.x_proj.weight.T
    dt_low, B, C = proj[..., : m.dt_rank], proj[..., m.dt_rank : m.dt_rank + 16], proj[..., m.dt_rank + 16 :]
    dt = (dt_low @ m.dt_proj.weight.T).transpose(1, 2)
    y = selective_scan_ref(
        inner.double(),
        dt.double(),
        -torch.exp(m.A_log.double()),
        B.transpose(1, 2).double(),
        C.transpose(1, 2).double(),
        m.D.double(),
        z=gate.transpose(1, 2).double(),
        delta_bias=m.dt_proj.bias.double(),
        delta_softplus=True,
    )
    return y.transpose(1, 2).float() @ m.out_proj.weight.T


def test_forward_matches_step_by_step_reference():
    torch.manual_seed(1)
    m = Mamba(16)
    x = torch.randn(2, 37, 16)
    with torch.no_grad():
        assert torch.allclose(m(x), _reference_mixer(m, x), rtol=1e-4, atol=1e-5)


def test_gradients_match_step_by_step_reference():
    torch.manual_seed(6)
    m = Mamba(16)
    x = torch.randn(2, 23, 16, requires_grad=True)
    names = ["input"] + [name for name, _ in m.named_parameters()]
    leaves = [x, *m.parameters()]
    grads = torch.autograd.grad(m(x).square().sum(), leaves)
    expected = torch.autograd.grad(_reference_mixer(m, x).square().sum(), leaves)
    for name, grad, reference in zip(names, grads, expected):
        scale = reference.abs().max().item()
        torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_scan_gets_channel_major_views_of_the_projections(monkeypatch):
    """z, delta, B and C reach the scan as (batch, channels, L) views of the projections' (channels, batch * L)
    rows, uncopied; z is half of the input projection, B and C slices of x_proj's output. (x is the convolution's
    output: channel-major from the GPU kernels, contiguous from ``F.conv1d`` here.)"""
    from monai_mamba_nets.layers import mamba as mamba_layer

    seen, scan = {}, mamba_layer.selective_scan

    def recording_scan(u, delta, A, B, C, D=None, z=None, **kwargs):
        seen.update(u=u, delta=delta, B=B, C=C, z=z)
        return scan(u, delta, A, B, C, D, z, **kwargs)

    monkeypatch.setattr(mamba_layer, "selective_scan", recording_scan)
    m = Mamba(16)
    x = torch.randn(2, 9, 16, requires_grad=True)
    m(x).sum().backward()
    for name in ("z", "delta", "B", "C"):
        assert seen[name].stride() == (9, 2 * 9, 1), name
    assert seen["z"]._base is not None and seen["z"]._base.shape == (2 * m.d_inner, 2 * 9)
    assert seen["B"]._base is seen["C"]._base and seen["B"]._base.shape == (m.dt_rank + 2 * m.d_state, 2 * 9)
    assert x.grad.is_contiguous()


def test_mixer_is_causal():
    torch.manual_seed(2)
    m = Mamba(16).eval()
    x = torch.randn(1, 20, 16)
    changed = x.clone()
    changed[:, 12:] += torch.randn(1, 8, 16)
    with torch.no_grad():
        a, b = m(x), m(changed)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:], atol=1e-3)


def test_gradients_reach_every_parameter():
    m = Mamba(16)
    m(torch.randn(2, 9, 16)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_scan_runs_in_float32_under_autocast():
    torch.manual_seed(3)
    m = Mamba(16)
    x = torch.randn(2, 11, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inner = m.inner(x)
        out = m(x)
    assert inner.dtype == torch.float32
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), m(x), rtol=5e-2, atol=5e-2)
    out.float().square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name


def test_without_output_projection():
    m = Mamba(16, project_output=False)
    assert isinstance(m.out_proj, torch.nn.Identity)
    assert m(torch.randn(2, 5, 16)).shape == (2, 5, 32)
    assert "out_proj.weight" not in m.state_dict()


def test_bidirectional_mixer():
    torch.manual_seed(4)
    bi = BidirectionalMamba(16)
    assert set(k.split(".")[0] for k in bi.state_dict()) == {"mamba_forw", "mamba_backw", "out_proj"}
    x = torch.randn(2, 13, 16)
    with torch.no_grad():
        expected = bi.out_proj(bi.mamba_forw(x) + bi.mamba_backw(x.flip(1)).flip(1))
        assert torch.allclose(bi(x), expected, atol=1e-6)
        # unlike the causal mixer, the first token sees the last one
        changed = x.clone()
        changed[:, -1] += 10.0
        assert (bi(x)[:, 0] - bi(changed)[:, 0]).abs().max() > 1e-5
        assert torch.equal(bi.mamba_forw(x)[:, 0], bi.mamba_forw(changed)[:, 0])


@pytest.mark.parametrize("shape", [(2, 5), (2, 5, 8), (1, 2, 5, 16)])
def test_bad_input_shape_is_named(shape):
    with pytest.raises(ValueError, match="d_model=16"):
        Mamba(16)(torch.randn(*shape))


def test_bad_dt_init():
    with pytest.raises(ValueError, match="dt_init"):
        Mamba(16, dt_init="zeros")


def test_float64_model_scans_in_float64():
    torch.manual_seed(5)
    m = Mamba(8).double()
    x = torch.randn(1, 6, 8, dtype=torch.float64, requires_grad=True)
    assert m(x).dtype == torch.float64
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)
