"""Samplers: update equations against diffusers' schedulers, and the distribution they sample."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import Tensor, nn

from diffusion_lab.diffusion.reverse_process import make_sampler, sample
from diffusion_lab.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, spaced_timesteps
from diffusion_lab.diffusion.schedules import NoiseSchedule, cosine, linear


def fake_eps(x: Tensor, t: int) -> Tensor:
    """A deterministic stand-in for a network's noise prediction."""
    return torch.tanh(x) * 0.7 + 0.1 * torch.cos(torch.full_like(x, t / 50.0))


def betas(schedule: NoiseSchedule) -> list[float]:
    return schedule.betas.double().tolist()


@pytest.mark.parametrize(
    ("spacing", "num_steps", "scheduler_cls"),
    [("leading", 50, DDIMScheduler), ("leading", 7, DDPMScheduler), ("trailing", 50, DDIMScheduler),
     ("trailing", 30, DDIMScheduler), ("linspace", 20, DPMSolverMultistepScheduler)],
)  # fmt: skip
def test_timesteps_match_diffusers(spacing: str, num_steps: int, scheduler_cls: type) -> None:
    ref = scheduler_cls(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(num_steps)
    assert spaced_timesteps(1000, num_steps, spacing).tolist() == ref.timesteps.tolist()


@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("num_steps", [None, 50])
@pytest.mark.parametrize("clip", [True, False])
def test_ddpm_step_matches_diffusers(variance: str, num_steps: int | None, clip: bool) -> None:
    schedule = linear(1000)
    ours = DDPMSampler(schedule, variance=variance, clip_sample=clip)
    ours.set_timesteps(num_steps)
    ref = DDPMScheduler(
        num_train_timesteps=1000,
        trained_betas=betas(schedule),
        variance_type={"posterior": "fixed_small", "beta": "fixed_large"}[variance],
        clip_sample=clip,
    )
    ref.set_timesteps(num_steps or 1000)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    for t in [*ours.timesteps.tolist()[::97], 0]:
        eps = fake_eps(x, t)
        got = ours.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        want = ref.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("clip", [True, False])
def test_ddim_step_matches_diffusers(eta: float, spacing: str, clip: bool) -> None:
    schedule = linear(1000)
    ours = DDIMSampler(schedule, eta=eta, timestep_spacing=spacing, clip_sample=clip)
    ours.set_timesteps(50)
    ref = DDIMScheduler(
        num_train_timesteps=1000, trained_betas=betas(schedule), clip_sample=clip, timestep_spacing=spacing
    )  # with clipping, both re-derive eps from the clipped x_0 (diffusers' use_clipped_model_output)
    ref.set_timesteps(50)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
    for t in ours.timesteps.tolist():
        eps = fake_eps(x, t)
        got = ours.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        want = ref.step(
            eps, t, x, eta=eta, use_clipped_model_output=clip, generator=torch.Generator().manual_seed(t)
        ).prev_sample
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("num_steps", [20, 8])
def test_dpm_solver_trajectory_matches_diffusers(num_steps: int) -> None:
    schedule = linear(1000)
    ours = DPMSolverSampler(schedule, clip_sample=False)
    ours.set_timesteps(num_steps)
    ref = DPMSolverMultistepScheduler(num_train_timesteps=1000, trained_betas=betas(schedule))
    ref.set_timesteps(num_steps)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    x_ours = x_ref = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    for t in ours.timesteps.tolist():
        x_ours = ours.step(fake_eps(x_ours, t), t, x_ours)
        x_ref = ref.step(fake_eps(x_ref, t), t, x_ref).prev_sample
        torch.testing.assert_close(x_ours, x_ref, rtol=1e-4, atol=1e-4)


class GaussianEps(nn.Module):
    """The exact noise predictor for data x_0 ~ N(mu_y, s^2) per pixel, mu_y = -0.5 + 0.1 y.

    ``E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab)``, so a correct sampler
    driven by it draws from N(mu_y, s^2).
    """

    null_class = 10

    def __init__(self, schedule: NoiseSchedule, s: float = 0.2) -> None:
        super().__init__()
        self.schedule, self.s = schedule, s

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        ab = self.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
        mu = (-0.5 + 0.1 * labels.float()).view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * self.s**2 + 1 - ab)


@pytest.mark.parametrize(
    ("name", "steps", "kwargs"),
    [("ddpm", None, {}), ("ddpm", None, {"variance": "beta"}), ("ddim", 1000, {"eta": 1.0}),
     ("ddim", 100, {}), ("ddpm", 250, {}), ("dpm_solver", 50, {})],
)  # fmt: skip
def test_samplers_draw_the_data_distribution(name: str, steps: int | None, kwargs: dict) -> None:
    schedule = cosine(1000)
    model = GaussianEps(schedule)
    labels = torch.tensor([0, 9]).repeat_interleave(200)
    x = sample(
        model, schedule, labels, sampler=name, steps=steps, image_shape=(1, 8, 8),
        generator=torch.Generator().manual_seed(0), clip_sample=False, **kwargs,
    )  # fmt: skip
    for label, mu in ((0, -0.5), (9, 0.4)):
        values = x[labels == label]
        assert abs(values.mean().item() - mu) < 0.01, (name, label)
        assert abs(values.std().item() - 0.2) < 0.01, (name, label)


def test_ddim_eta_one_on_all_steps_is_ddpm() -> None:
    """DDIM with eta=1 over all T steps draws the same noise at the same steps as DDPM: same samples."""
    schedule = cosine(200)
    model = GaussianEps(schedule)
    labels = torch.arange(10)

    def draw(name: str, **kwargs: object) -> Tensor:
        return sample(
            model, schedule, labels, sampler=name, steps=200, image_shape=(1, 4, 4),
            generator=torch.Generator().manual_seed(3), **kwargs,
        )  # fmt: skip

    torch.testing.assert_close(draw("ddim", eta=1.0), draw("ddpm"), rtol=1e-4, atol=1e-4)


def test_unknown_names_refused() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'euler': use one of ddpm, ddim, dpm_solver"):
        make_sampler("euler", cosine(10))
    with pytest.raises(ValueError, match="unknown timestep_spacing 'even'"):
        DDIMSampler(cosine(10), timestep_spacing="even")
    with pytest.raises(ValueError, match="DDPM variance must be one of posterior, beta"):
        DDPMSampler(cosine(10), variance="learned")
    with pytest.raises(ValueError, match=r"steps must be in 1\.\.10 \(the schedule's T\), got 11"):
        DDIMSampler(cosine(10)).set_timesteps(11)
