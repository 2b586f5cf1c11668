"""Ancestral DDPM sampling (Ho et al. 2020), on all T timesteps or a respaced sub-sequence."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.diffusion.samplers.base import Sampler
from diffusion_lab.diffusion.schedules import NoiseSchedule

VARIANCES = ("posterior", "beta")


class DDPMSampler(Sampler):
    """Sample x_{t'} ~ p(x_{t'} | x_t), t' the next timestep, with the posterior mean from the predicted x_0.

    On a sub-sequence of timesteps the step uses the respaced process, beta'_t = 1 - alpha_bar_t /
    alpha_bar_t' (as diffusers' ``DDPMScheduler`` and improved-diffusion's respacing); with all T
    steps this is exactly the trained chain.

    Args:
        schedule: the noise schedule the model was trained with.
        variance: ``posterior`` (beta tilde, the lower bound; diffusers' ``fixed_small``) or ``beta``
            (beta_t, the upper bound; ``fixed_large``).
        timestep_spacing: see :func:`~diffusion_lab.diffusion.samplers.base.spaced_timesteps`.
        clip_sample: clamp the predicted x_0 to [-1, 1] before forming the mean.
    """

    default_steps = None  # every training timestep

    def __init__(
        self,
        schedule: NoiseSchedule,
        variance: str = "posterior",
        timestep_spacing: str = "leading",
        clip_sample: bool = True,
    ) -> None:
        if variance not in VARIANCES:
            raise ValueError(f"DDPM variance must be one of {', '.join(VARIANCES)}, got {variance!r}")
        self.variance = variance
        super().__init__(schedule, timestep_spacing=timestep_spacing, clip_sample=clip_sample)

    def step(self, eps: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        prev = self.prev_timestep[t]
        ab_t, ab_prev = self.alpha_bar(t), self.alpha_bar(prev)
        alpha_t = ab_t / ab_prev
        beta_t = 1 - alpha_t
        x0 = self.predict_x0(eps, t, x_t)
        mean = (beta_t * ab_prev.sqrt() / (1 - ab_t)) * x0 + ((1 - ab_prev) * alpha_t.sqrt() / (1 - ab_t)) * x_t
        if prev < 0:
            return mean
        var = (beta_t * (1 - ab_prev) / (1 - ab_t)).clamp(min=1e-20) if self.variance == "posterior" else beta_t
        return mean + var.sqrt() * self.noise_like(x_t, generator)
