"""What the three networks share at their input: MetaTensors, pad-and-crop helpers."""

import pytest
import torch
from monai.data import MetaTensor

from monai_mamba_nets import LightMUNet, LKMUNet, MambaUNet
from monai_mamba_nets.nets.inputs import crop_spatial, pad_to_multiple, plain_tensor


def _small_nets():
    torch.manual_seed(0)
    yield LightMUNet(2, 1, 2, init_filters=8, scan_backend="torch")
    yield LKMUNet(2, 1, 2, features=(8, 16), kernel_sizes=(3, 3), strides=(1, 2), deep_supervision=False)
    yield MambaUNet(2, in_channels=1, out_channels=2, embed_dim=8, depths=(1, 1, 1, 1), scan_backend="torch")


@pytest.mark.parametrize("net", list(_small_nets()), ids=lambda n: type(n).__name__)
def test_metatensor_input_gives_the_plain_result(net):
    x = torch.randn(1, 1, 35, 33)
    meta = MetaTensor(x.clone(), meta={"filename_or_obj": "a.png"})
    with torch.no_grad():
        plain = net.eval()(x)
        from_meta = net(meta)
    assert from_meta.shape == (1, 2, 35, 33)
    assert torch.equal(torch.as_tensor(from_meta), plain)


def test_pad_to_multiple_and_crop_back():
    x = torch.randn(2, 3, 5, 8, 9)
    padded = pad_to_multiple(x, (4, 8, 3))
    assert padded.shape == (2, 3, 8, 8, 9)
    assert torch.equal(padded[..., 5:, :, :], torch.zeros(2, 3, 3, 8, 9))
    assert torch.equal(crop_spatial(padded, x.shape[2:]), x)
    assert pad_to_multiple(x, (1, 1, 1)) is x


def test_plain_tensor_drops_only_the_metadata():
    meta = MetaTensor(torch.arange(4.0), meta={"k": 1})
    plain = plain_tensor(meta)
    assert type(plain) is torch.Tensor and torch.equal(plain, torch.arange(4.0))
