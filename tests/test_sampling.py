"""The sampling loop: classifier-free guidance, its interval and rescale, seeds, per-step hooks, any denoiser."""

from __future__ import annotations

import pytest
import torch
from diffusers.guiders.guider_utils import rescale_noise_cfg

from diffusion_lab.diffusion.objectives import EpsilonObjective
from diffusion_lab.diffusion.reverse_process import denoise, guided_output, noise_levels, sample, step_guidance
from diffusion_lab.diffusion.samplers import make_sampler
from diffusion_lab.diffusion.schedules import cosine
from diffusion_lab.models.unet import ConditionalUNet
from tests.toy_models import toy_objectives

OBJECTIVES = toy_objectives(100)


@pytest.fixture
def unet() -> ConditionalUNet:
    torch.manual_seed(0)
    net = ConditionalUNet(down_chs=(8, 16))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net.eval()


def test_guidance_zero_is_conditional(unet: ConditionalUNet) -> None:
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([5, 50, 500, 900]), torch.tensor([0, 3, 7, 9])
    torch.testing.assert_close(guided_output(unet, x, t, y, 0.0), unet(x, t, y))


def test_guidance_formula_and_rescale(unet: ConditionalUNet) -> None:
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([100, 100]), torch.tensor([1, 2])
    cond, uncond = unet(x, t, y), unet(x, t, torch.full_like(y, unet.null_class))
    guided = 3.0 * cond - 2.0 * uncond
    torch.testing.assert_close(guided_output(unet, x, t, y, 2.0), guided, rtol=1e-4, atol=1e-5)
    rescaled = guided_output(unet, x, t, y, 2.0, rescale=0.7)
    torch.testing.assert_close(rescaled, rescale_noise_cfg(guided, cond, 0.7), rtol=1e-4, atol=1e-5)
    full = guided_output(unet, x, t, y, 2.0, rescale=1.0)  # phi = 1: the conditional output's spread
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-4, atol=1e-5)


def test_step_guidance() -> None:
    assert step_guidance(2.0, None, 100.0) == 2.0
    assert step_guidance(2.0, (0.3, 5.0), 1.0) == 2.0
    assert step_guidance(2.0, (0.3, 5.0), 0.1) == 0.0
    assert step_guidance(2.0, (0.3, 5.0), 6.0) == 0.0


@pytest.mark.parametrize(
    ("objective", "sampler"), [("eps", "dpm_solver"), ("v", "euler"), ("flow", "flow_euler"), ("edm", "edm_euler")]
)
def test_guidance_interval_edges(unet: ConditionalUNet, objective: str, sampler: str) -> None:
    """An interval that holds no step's sigma gives exactly the w=0 images; one holding all, plain guidance."""
    obj = OBJECTIVES[objective]
    labels = torch.tensor([0, 3, 7])
    noise = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))

    def draw(guidance: float, interval: list[float] | None) -> torch.Tensor:
        return sample(unet, obj, labels, sampler=sampler, steps=6, guidance=guidance, noise=noise,
                      guidance_interval=interval)  # fmt: skip

    unguided, guided = draw(0.0, None), draw(2.0, None)
    assert not torch.equal(unguided, guided)
    assert torch.equal(draw(2.0, [1e6, 1e7]), unguided)
    assert torch.equal(draw(2.0, [0.0, float("inf")]), guided)
    middle = draw(2.0, [0.5, 5.0])
    assert not torch.equal(middle, guided) and not torch.equal(middle, unguided)


@pytest.mark.parametrize(
    ("sampler", "steps"), [("ddim", 10), ("ddpm", None), ("dpm_solver", 10), ("euler_ancestral", 8)]
)
def test_sample_is_seeded(unet: ConditionalUNet, sampler: str, steps: int | None) -> None:
    objective = EpsilonObjective(cosine(40))
    labels = torch.tensor([0, 1, 2])

    def draw(seed: int) -> torch.Tensor:
        return sample(
            unet, objective, labels, sampler=sampler, steps=steps, guidance=1.0,
            generator=torch.Generator().manual_seed(seed), image_shape=(1, 28, 28), default_steps=40,
        )  # fmt: skip

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (3, 1, 28, 28) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_the_step_hook_sees_every_evaluation_and_can_replace_x(unet: ConditionalUNet) -> None:
    objective = OBJECTIVES["eps"]
    sampler = make_sampler("ddim", objective)
    sampler.set_timesteps(5)
    noise = torch.randn(2, 1, 28, 28)
    seen: list[tuple[int, int, torch.Tensor]] = []

    def record(i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        seen.append((i, int(t), x.clone()))
        return x

    final = denoise(unet, objective, sampler, torch.tensor([1, 2]), noise, guidance=1.0, on_step=record)
    assert [(i, t) for i, t, _ in seen] == [(0, 80), (1, 60), (2, 40), (3, 20), (4, 0)]
    assert torch.equal(seen[-1][2], final)
    sigmas = noise_levels(objective, sampler)
    assert sigmas[-1] == 0.0 and sigmas == sorted(sigmas, reverse=True)
    torch.testing.assert_close(torch.tensor(sigmas[:-1]), objective.sigma(torch.tensor([80, 60, 40, 20, 0])))
    expected = sample(unet, objective, torch.tensor([1, 2]), sampler="ddim", steps=5, guidance=1.0, noise=noise)
    torch.testing.assert_close(final.clamp(-1, 1), expected)
    # What the hook returns is what the loop goes on with.
    zeroed = denoise(unet, objective, sampler, torch.tensor([1, 2]), noise, on_step=lambda i, t, x: x * 0)
    assert torch.equal(zeroed, torch.zeros_like(zeroed))
    heun = make_sampler("heun", objective)
    heun.set_timesteps(4)
    assert heun.num_evaluations == 7  # two a step, one on the last
    steps: list[int] = []
    denoise(unet, objective, heun, torch.tensor([1]), noise[:1], on_step=lambda i, t, x: steps.append(i) or x)
    assert steps == list(range(7))


class ShrinkToClassMean:
    """A denoiser that is a plain callable, not a network: eps that moves x to a class-dependent constant."""

    null_class = 10

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(
        self, x: torch.Tensor, time: torch.Tensor, labels: torch.Tensor, styles: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.calls.append(len(x))
        target = (labels.float() / 10 - 0.5).view(-1, 1, 1, 1)
        return (x - target) * 0.5


@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_a_plain_callable_denoiser_samples_through_the_reverse_process(guidance: float) -> None:
    denoiser = ShrinkToClassMean()
    objective = OBJECTIVES["eps"]
    labels = torch.tensor([0, 5, 9])
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    images = sample(denoiser, objective, labels, sampler="ddim", steps=6, guidance=guidance, noise=noise)
    assert images.shape == (3, 1, 4, 4) and images.min() >= -1 and images.max() <= 1
    assert denoiser.calls == [6 if guidance else 3] * 6, "one pass a step, of [2B] with classifier-free guidance"
    assert torch.equal(images, sample(denoiser, objective, labels, sampler="ddim", steps=6, guidance=guidance,
                                      noise=noise))  # fmt: skip
    assert not torch.equal(images[0], images[2]), "the labels reach the denoiser"
