"""LKM-UNet: exact parameter counts of the reference plans, PiM/PaM grouping, window fitting, shapes, deep
supervision with MONAI's loss and inferer, gradients."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DeepSupervisionLoss, DiceCELoss

from monai_mamba_nets import LKMUNet
from monai_mamba_nets.layers import PatchMambaLayer, PixelMambaLayer, ResidualBlockD, fit_window_factors
from monai_mamba_nets.nets import LKM_UNET_REFERENCE_PLANS, reference_window_factors


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _small_2d(**kwargs) -> LKMUNet:
    # 4 stages: reference factors PiM 10, 10, 5, 5 and PaM 2, 2, 1, 1
    return LKMUNet(2, 1, 3, features=(8, 16, 24, 32), kernel_sizes=3, strides=(1, 2, 2, 2), **kwargs)


def _small_3d(**kwargs) -> LKMUNet:
    # 3 stages: reference factors PiM (10, 14, 12), (5, 7, 6), (5, 7, 6) and PaM 2, 1, 1
    return LKMUNet(
        3, 1, 3, features=(4, 8, 16), kernel_sizes=((1, 3, 3), 3, 3), strides=(1, (1, 2, 2), 2), **kwargs
    )


# ---------------------------------------------------------------- parameter counts (build only, no forward)


@pytest.mark.parametrize(
    "spatial_dims, total, mamba",
    [(3, 63_782_246, 6_625_920), (2, 80_886_452, 19_238_016)],
)
def test_reference_plan_parameter_counts(spatial_dims, total, mamba):
    net = LKMUNet.from_reference_plan(spatial_dims, in_channels=1, out_channels=14)
    mamba_count = _count(net.pixel_mambas) + _count(net.patch_mambas)
    assert _count(net) == total
    assert mamba_count == mamba
    assert _count(net) - mamba_count == {3: 57_156_326, 2: 61_648_436}[spatial_dims]


def test_eight_stage_2d_parameter_count():
    net = LKMUNet(2, 1, 14, features=(32, 64, 128, 256, 512, 512, 512, 512), kernel_sizes=3, strides=(1,) + (2,) * 7)
    assert _count(net) == 109_446_338
    assert _count(net.pixel_mambas) + _count(net.patch_mambas) == 24_970_368


@pytest.mark.parametrize("channels, expected", [(32, 17_856), (64, 57_216), (320, 1_146_240), (512, 2_866_176)])
def test_pim_and_pam_parameters_per_layer(channels, expected):
    # one LayerNorm and one out_proj shared by the two directions: 10C^2 + 8rC + 222C
    assert _count(PixelMambaLayer(2, channels)) == expected
    assert _count(PatchMambaLayer(3, channels)) == expected


def test_without_deep_supervision_only_the_coarser_heads_are_missing():
    with_ds, without_ds = _small_2d(deep_supervision=True), _small_2d(deep_supervision=False)
    assert without_ds.aux_heads is None
    assert _count(with_ds) - _count(without_ds) == _count(with_ds.aux_heads) == (16 * 3 + 3) + (24 * 3 + 3)


# ---------------------------------------------------------------- window factors


def test_reference_window_factors_match_the_reference_tables():
    pim, pam = reference_window_factors(3, 6)
    assert pim == [(20, 28, 24), (20, 28, 24), (10, 14, 12), (10, 14, 12), (5, 7, 6), (5, 7, 6)]
    assert pam == [(4,) * 3, (4,) * 3, (2,) * 3, (2,) * 3, (1,) * 3, (1,) * 3]
    pim, pam = reference_window_factors(2, 7)
    assert [p[0] for p in pim] == [40, 20, 20, 10, 10, 5, 5]
    assert [p[0] for p in pam] == [8, 4, 4, 2, 2, 1, 1]


@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_reference_patch_keeps_the_reference_factors_without_warning(spatial_dims):
    plan = LKM_UNET_REFERENCE_PLANS[spatial_dims]
    # the plan with 2-channel stages: window factors depend on the strides only, and this builds in milliseconds
    small = LKMUNet(spatial_dims, 1, 2, (2,) * len(plan.features), plan.kernel_sizes, plan.strides)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        windows = small.window_factors(plan.patch_size)
    pim, pam = reference_window_factors(spatial_dims, len(plan.features))
    assert windows == list(zip(pim, pam))


def test_fit_window_factors():
    assert fit_window_factors((40, 224, 192), (20, 28, 24)) == (20, 28, 24)
    assert fit_window_factors((40, 48), (10, 10)) == (10, 8)  # 8 and 12 tie: the smaller
    assert fit_window_factors((9, 37), (4, 5)) == (3, 1)  # 37 is prime
    assert fit_window_factors((5, 6), (20, 5)) == (5, 6)  # factors larger than the axis
    with pytest.raises(ValueError, match="one entry per axis"):
        fit_window_factors((4, 4), (2,))
    with pytest.raises(ValueError, match="positive"):
        fit_window_factors((4, 4), (0, 2))


def test_factors_that_do_not_divide_warn_once_per_shape_naming_stage_and_shapes():
    net = _small_2d().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            net(torch.randn(1, 1, 40, 40))  # 40, 20, 10, 5: every factor divides
    with pytest.warns(UserWarning) as record:
        with torch.no_grad():
            net(torch.randn(1, 1, 40, 48))
    messages = [str(w.message) for w in record if "LKMUNet" in str(w.message)]
    assert len(messages) == 1
    assert "(40, 48)" in messages[0]
    assert "stage 0 (feature map (40, 48)): PiM (10, 10) -> (10, 8)" in messages[0]
    assert "stage 3 (feature map (5, 6)): PiM (5, 5) -> (5, 6)" in messages[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            net(torch.randn(1, 1, 40, 48))  # same shape again: no second warning


def test_window_factor_arguments_override_the_reference():
    net = _small_2d(pim_factors=(4, 2, 1, 1), pam_factors=(1, 1, 1, 1))
    assert net.window_factors((40, 40))[0] == ((4, 4), (1, 1))
    with pytest.raises(ValueError, match="pim_factors"):
        _small_2d(pim_factors=(4, 2, 1))


# ---------------------------------------------------------------- PiM / PaM semantics


def _group_of_changed_pixels(grouping: str, size=(8, 12), factors=(2, 3), pixel=(3, 4)) -> torch.Tensor:
    """Mask of the pixels whose PiM output (minus the residual) changes when one input pixel changes."""
    torch.manual_seed(0)
    layer = PixelMambaLayer(2, 4, pixel_grouping=grouping)
    x = torch.randn(1, 4, *size)
    bumped = x.clone()
    bumped[0, :, pixel[0], pixel[1]] += torch.tensor([1.0, -2.0, 0.5, 3.0])  # not constant: LayerNorm
    with torch.no_grad():
        change = (layer(bumped, factors) - bumped) - (layer(x, factors) - x)
    # sequences that do not hold the pixel see exactly the same input, hence exactly the same output
    return change.abs().amax(dim=(0, 1)) > 0


def test_dilated_grouping_mixes_pixels_p_apart():
    # factors (2, 3) on 8 x 12: sequences of 4 x 4 pixels, 2 rows and 3 columns apart; pixel (3, 4) has offset (1, 1)
    changed = _group_of_changed_pixels("dilated")
    expected = torch.zeros(8, 12, dtype=torch.bool)
    expected[1::2, 1::3] = True
    assert torch.equal(changed, expected)


def test_contiguous_grouping_mixes_pixels_of_one_window():
    # factors (2, 3) on 8 x 12: windows of 4 x 4 adjacent pixels; pixel (3, 4) lies in window rows 0-3, cols 4-7
    changed = _group_of_changed_pixels("contiguous")
    expected = torch.zeros(8, 12, dtype=torch.bool)
    expected[0:4, 4:8] = True
    assert torch.equal(changed, expected)


def test_pim_regrouping_is_inverted_exactly():
    layer = PixelMambaLayer(3, 2, pixel_grouping="dilated")
    layer.mix = lambda sequences: sequences  # identity mixer: output must be exactly x + x
    x = torch.randn(2, 2, 4, 6, 10)
    torch.testing.assert_close(layer(x, (2, 3, 5)), 2 * x, rtol=0, atol=0)


def test_pam_pools_mixes_globally_and_upsamples_nearest():
    torch.manual_seed(0)
    layer = PatchMambaLayer(2, 4)
    x = torch.randn(1, 4, 8, 6)
    with torch.no_grad():
        update = layer(x, (4, 2)) - x
    # constant inside every 4 x 2 patch (up to the rounding of (update + x) - x)
    torch.testing.assert_close(update, update[:, :, ::4, ::2].repeat_interleave(4, 2).repeat_interleave(2, 3))
    # one global sequence: the first token's change reaches the last patch (backward scan)
    bumped = x.clone()
    bumped[0, :, 0, 0] += torch.tensor([1.0, -2.0, 0.5, 3.0])
    with torch.no_grad():
        assert (layer(bumped, (4, 2)) - bumped - update)[..., -1, -1].abs().max() > 0


def test_pim_pam_run_in_fp32_under_autocast_and_for_half_inputs():
    layer = PixelMambaLayer(2, 4)
    x = torch.randn(1, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x, 2).dtype == torch.float32
    assert layer(x.bfloat16(), 2).dtype == torch.float32
    assert PatchMambaLayer(2, 4)(x.half(), 2).dtype == torch.float32


def test_pim_pam_reject_factors_that_do_not_divide():
    with pytest.raises(ValueError, match="dividing the feature map"):
        PixelMambaLayer(2, 4)(torch.randn(1, 4, 6, 6), 4)
    with pytest.raises(ValueError, match="one positive factor per spatial axis"):
        PatchMambaLayer(3, 4)(torch.randn(1, 4, 4, 4, 4), (2, 2))
    with pytest.raises(ValueError, match="pixel_grouping"):
        PixelMambaLayer(2, 4, pixel_grouping="windows")


# ---------------------------------------------------------------- network shapes and outputs


@pytest.mark.parametrize(
    "size, coarse_sizes",
    [((40, 40), [(20, 20), (10, 10)]), ((40, 36), [(20, 18), (10, 9)]), ((37, 43), [(19, 22), (10, 11)])],
)
def test_2d_shapes(size, coarse_sizes):
    torch.manual_seed(0)
    net = _small_2d()
    x = torch.randn(2, 1, *size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (37, 43) pads to (40, 48), which some factors do not divide
        outputs = net(x)
        assert isinstance(outputs, list)
        assert [tuple(o.shape) for o in outputs] == [(2, 3, *size)] + [(2, 3, *s) for s in coarse_sizes]
        net.eval()
        with torch.no_grad():
            assert tuple(net(x).shape) == (2, 3, *size)


@pytest.mark.parametrize("size", [(10, 16, 12), (7, 14, 13)])
def test_3d_shapes(size):
    torch.manual_seed(0)
    net = _small_3d()
    x = torch.randn(1, 1, *size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PiM 14 on 16 voxels
        outputs = net(x)
        assert [tuple(o.shape) for o in outputs] == [(1, 3, *size), (1, 3, size[0], -(-size[1] // 2), -(-size[2] // 2))]
        net.eval()
        with torch.no_grad():
            assert tuple(net(x).shape) == (1, 3, *size)


def test_inputs_are_padded_at_the_end_and_cropped_back():
    torch.manual_seed(0)
    net = _small_2d().eval()
    x = torch.randn(1, 1, 37, 43)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(net(x), net(F.pad(x, (0, 5, 0, 3)))[..., :37, :43])


def test_without_deep_supervision_training_returns_one_map():
    net = _small_2d(deep_supervision=False)
    assert tuple(net(torch.randn(1, 1, 40, 40)).shape) == (1, 3, 40, 40)


def test_groupings_differ_in_result_but_not_in_parameters():
    torch.manual_seed(0)
    dilated = _small_2d(pixel_grouping="dilated").eval()
    contiguous = _small_2d(pixel_grouping="contiguous").eval()
    assert _count(dilated) == _count(contiguous)
    contiguous.load_state_dict(dilated.state_dict())
    x = torch.randn(1, 1, 40, 40)
    with torch.no_grad():
        a, b = dilated(x), contiguous(x)
    assert not torch.allclose(a, b, atol=1e-4)
    # p = 1 makes both groupings one global sequence: then they agree
    dilated = _small_2d(pixel_grouping="dilated", pim_factors=(1, 1, 1, 1)).eval()
    contiguous = _small_2d(pixel_grouping="contiguous", pim_factors=(1, 1, 1, 1)).eval()
    contiguous.load_state_dict(dilated.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(dilated(x), contiguous(x))


def test_initialisation_zeroes_the_last_norm_of_every_residual_block():
    net = _small_2d()
    blocks = [m for m in net.modules() if isinstance(m, ResidualBlockD)]
    assert len(blocks) == 2 * 4 + 2 * 3
    for block in blocks:
        assert all(torch.count_nonzero(p) == 0 for p in block.last_norm.parameters())
    conv_biases = [m.bias for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None]
    assert conv_biases and all(torch.count_nonzero(b) == 0 for b in conv_biases)


def test_gradients_reach_every_parameter_through_deep_supervision_loss():
    torch.manual_seed(0)
    # PiM sequences longer than one pixel at every stage: on a single pixel the state decay A plays no role
    # (as at the reference's bottleneck, where PiM's A_log gets no gradient)
    net = _small_2d(pim_factors=(10, 5, 5, 1))
    # the zero-initialised norms would stop the gradient of the convolutions before them
    for block in (m for m in net.modules() if isinstance(m, ResidualBlockD)):
        torch.nn.init.ones_(block.last_norm.weight)
    loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), weights=[0.5714, 0.2857, 0.1429])
    target = torch.randint(0, 3, (2, 1, 40, 36)).float()
    loss = loss_fn(net(torch.randn(2, 1, 40, 36)), target)
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_deep_supervision_weights_are_nnunets():
    weights = LKMUNet(3, 1, 2, (2,) * 6, 3, (1, 2, 2, 2, 2, 2)).deep_supervision_weights()
    assert weights == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0])
    assert LKMUNet(2, 1, 2, (2, 2), 3, (1, 2)).deep_supervision_weights() == [1.0]
    with pytest.raises(ValueError, match="deep_supervision=False"):
        LKMUNet(2, 1, 2, (2, 2), 3, (1, 2), deep_supervision=False).deep_supervision_weights()


def test_eval_output_works_with_sliding_window_inference():
    torch.manual_seed(0)
    net = _small_3d().eval()
    image = torch.randn(1, 1, 12, 20, 18)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        out = sliding_window_inference(image, roi_size=(10, 16, 12), sw_batch_size=2, predictor=net, overlap=0.25)
    assert tuple(out.shape) == (1, 3, 12, 20, 18)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="spatial_dims"):
        LKMUNet(1, 1, 2, (4, 8), 3, (1, 2))
    with pytest.raises(ValueError, match="kernel_sizes"):
        LKMUNet(2, 1, 2, (4, 8), (3, 4), (1, 2))
    with pytest.raises(ValueError, match="strides"):
        LKMUNet(2, 1, 2, (4, 8), 3, (1, 2, 2))
    with pytest.raises(ValueError, match="features"):
        LKMUNet(2, 1, 2, (4,), 3, (1,))
    with pytest.raises(ValueError, match="n_blocks_decoder"):
        LKMUNet(2, 1, 2, (4, 8, 8), 3, (1, 2, 2), n_blocks_decoder=(1, 1, 1))
    with pytest.raises(ValueError, match="pixel_grouping"):
        LKMUNet(2, 1, 2, (4, 8), 3, (1, 2), pixel_grouping="paper")
    net = LKMUNet(2, 2, 2, (4, 8), 3, (1, 2))
    with pytest.raises(ValueError, match=r"input must be \(batch, 2, 2 spatial axes\)"):
        net(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="input must be"):
        net(torch.randn(1, 2, 8, 8, 8))


@pytest.mark.gpu
def test_gpu_amp_training_step():
    torch.manual_seed(0)
    net = _small_3d().cuda()
    x = torch.randn(2, 1, 10, 16, 12, device="cuda")
    target = torch.randint(0, 3, (2, 1, 10, 16, 12), device="cuda").float()
    loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))
    with warnings.catch_warnings(), torch.autocast("cuda", dtype=torch.float16):
        warnings.simplefilter("ignore")
        loss = loss_fn(net(x), target)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
