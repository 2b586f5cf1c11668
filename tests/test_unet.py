"""ConditionalUNet shapes and conditioning for every preset."""

from __future__ import annotations

import pytest
import torch

from diffusion_lab.models.unet import ConditionalUNet

PRESETS = {
    "small": dict(down_chs=(16, 32, 64)),
    "base": dict(down_chs=(32, 64, 128), attention_levels=(2,)),
    "large": dict(down_chs=(64, 128, 256, 512), num_res_blocks=2, attention_levels=(2, 3)),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_output_shape_matches_input(preset: str) -> None:
    torch.manual_seed(0)
    unet = ConditionalUNet(**PRESETS[preset])
    x = torch.randn(3, 1, 28, 28)
    out = unet(x, torch.tensor([0, 500, 999]), torch.tensor([0, 9, 10]))
    assert out.shape == x.shape


@pytest.mark.parametrize("down_chs", [(8,), (8, 16), (8, 16, 32, 64, 64)])
@pytest.mark.parametrize("size", [28, 27, 32])
def test_any_depth_on_any_size(down_chs: tuple[int, ...], size: int) -> None:
    unet = ConditionalUNet(down_chs=down_chs, attention_levels=(len(down_chs) - 1,))
    out = unet(torch.randn(2, 1, size, size), torch.tensor([1, 2]), torch.tensor([3, 4]))
    assert out.shape == (2, 1, size, size)


def test_output_depends_on_label_time_and_input() -> None:
    torch.manual_seed(0)
    unet = ConditionalUNet(down_chs=(8, 16))
    for p in unet.parameters():  # zero-initialised output layers would hide the dependence
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(1, 1, 28, 28), torch.tensor([10])
    base = unet(x, t, torch.tensor([3]))
    assert not torch.allclose(base, unet(x, t, torch.tensor([unet.null_class])))
    assert not torch.allclose(base, unet(x, torch.tensor([900]), torch.tensor([3])))
    assert not torch.allclose(base, unet(x + 0.1, t, torch.tensor([3])))


def test_null_class_is_extra_embedding() -> None:
    unet = ConditionalUNet(down_chs=(8,), num_classes=10)
    assert unet.null_class == 10
    assert unet.class_emb.num_embeddings == 11


def test_starts_predicting_zero() -> None:
    """Zero-initialised output layers: the untrained loss is exactly E[eps^2] = 1."""
    unet = ConditionalUNet(down_chs=(8, 16))
    assert torch.count_nonzero(unet(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.tensor([0, 1]))) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(down_chs=()), "down_chs must be a non-empty list"),
        (dict(down_chs=(16, 0)), "down_chs must be a non-empty list of positive ints"),
        (dict(down_chs=(16,), attention_levels=(3,)), r"attention_levels \[3\] out of range"),
        (dict(activation="relu6"), "activation must be one of"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConditionalUNet(**kwargs)
