"""DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep ODE solver, good samples in 10-25 steps."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.diffusion.samplers.base import Sampler
from diffusion_lab.diffusion.schedules import NoiseSchedule


class DPMSolverSampler(Sampler):
    """DPM-Solver++ with order 2, multistep, in data (x_0) prediction form.

    With ``lambda = log(alpha / sigma)``, ``alpha = sqrt(ab)``, ``sigma = sqrt(1 - ab)`` and ``h`` the
    step in lambda, one step is ``x_s = (sigma_s / sigma_t) x_t - alpha_s (exp(-h) - 1) D`` where ``D``
    is the predicted x_0 extrapolated from the previous step's (first order on the first step). The last
    step lands on sigma = 0 and returns the predicted x_0, as diffusers' ``DPMSolverMultistepScheduler``
    with ``final_sigmas_type="zero"``. Deterministic: ``generator`` is unused.

    The sampler keeps the previous x_0 prediction, so call :meth:`step` in the order of ``timesteps``
    after each :meth:`set_timesteps`.

    Args:
        schedule: the noise schedule the model was trained with.
        timestep_spacing: see :func:`~diffusion_lab.diffusion.samplers.base.spaced_timesteps`.
        clip_sample: clamp each predicted x_0 to [-1, 1] (static thresholding).
    """

    default_steps = 20

    def __init__(self, schedule: NoiseSchedule, timestep_spacing: str = "linspace", clip_sample: bool = True) -> None:
        self._previous: tuple[Tensor, Tensor] | None = None
        super().__init__(schedule, timestep_spacing=timestep_spacing, clip_sample=clip_sample)

    def set_timesteps(self, num_steps: int | None = None) -> None:
        super().set_timesteps(num_steps)
        self._previous = None

    def _lambda(self, t: int) -> Tensor:
        ab = self.alpha_bar(t)
        return 0.5 * (torch.log(ab) - torch.log1p(-ab))

    def step(self, eps: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        prev = self.prev_timestep[t]
        x0 = self.predict_x0(eps, t, x_t)
        lambda_t = self._lambda(t)
        if prev < 0:
            self._previous = None
            return x0
        ab_s = self.alpha_bar(prev)
        h = self._lambda(prev) - lambda_t
        d = x0
        if self._previous is not None:
            x0_before, lambda_before = self._previous
            r = (lambda_t - lambda_before) / h
            d = x0 + (x0 - x0_before) / (2 * r)
        self._previous = (x0, lambda_t)
        sigma_ratio = ((1 - ab_s) / (1 - self.alpha_bar(t))).sqrt()
        return sigma_ratio * x_t - ab_s.sqrt() * torch.expm1(-h) * d
