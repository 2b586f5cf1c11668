"""The sampling loop and classifier-free guidance."""

from __future__ import annotations

import pytest
import torch

from diffusion_lab.diffusion.reverse_process import guided_eps, make_sampler, sample, sample_progressive
from diffusion_lab.diffusion.schedules import cosine
from diffusion_lab.models.unet import ConditionalUNet


@pytest.fixture
def unet() -> ConditionalUNet:
    torch.manual_seed(0)
    net = ConditionalUNet(down_chs=(8, 16))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net.eval()


def test_guidance_zero_is_conditional(unet: ConditionalUNet) -> None:
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([5, 50, 500, 900]), torch.tensor([0, 3, 7, 9])
    torch.testing.assert_close(guided_eps(unet, x, t, y, 0.0), unet(x, t, y))


def test_guidance_formula(unet: ConditionalUNet) -> None:
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([100, 100]), torch.tensor([1, 2])
    cond, uncond = unet(x, t, y), unet(x, t, torch.full_like(y, unet.null_class))
    torch.testing.assert_close(guided_eps(unet, x, t, y, 2.0), 3.0 * cond - 2.0 * uncond, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("sampler", "steps"), [("ddim", 10), ("ddpm", None), ("dpm_solver", 10)])
def test_sample_is_seeded(unet: ConditionalUNet, sampler: str, steps: int | None) -> None:
    schedule = cosine(40)
    labels = torch.tensor([0, 1, 2])

    def draw(seed: int) -> torch.Tensor:
        return sample(
            unet,
            schedule,
            labels,
            sampler=sampler,
            steps=steps,
            guidance=1.0,
            generator=torch.Generator().manual_seed(seed),
            image_shape=(1, 28, 28),
        )

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (3, 1, 28, 28) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_progressive_sampling_yields_every_step(unet: ConditionalUNet) -> None:
    sampler = make_sampler("ddim", cosine(100))
    sampler.set_timesteps(5)
    noise = torch.randn(2, 1, 28, 28)
    steps = list(sample_progressive(unet, sampler, torch.tensor([1, 2]), noise, guidance=1.0))
    assert [t for t, _ in steps] == [80, 60, 40, 20, 0, -1]
    assert steps[0][1] is noise
    final = sample(unet, cosine(100), torch.tensor([1, 2]), sampler="ddim", steps=5, guidance=1.0, noise=noise)
    torch.testing.assert_close(steps[-1][1].clamp(-1, 1), final)
