"""Ancestral DDPM sampling (Ho et al. 2020): one reverse step per training timestep."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.schedules import NoiseSchedule


class DDPMSampler:
    """Sample x_{t-1} ~ p(x_{t-1} | x_t) with the posterior mean from the predicted x_0.

    Args:
        schedule: the noise schedule the model was trained with.
        variance: ``posterior`` (beta tilde, the lower bound) or ``beta`` (beta_t, the upper bound).
        clip_sample: clamp the predicted x_0 to [-1, 1] before forming the mean.
    """

    def __init__(self, schedule: NoiseSchedule, variance: str = "posterior", clip_sample: bool = True) -> None:
        if variance not in ("posterior", "beta"):
            raise ValueError(f"DDPM variance must be 'posterior' or 'beta', got {variance!r}")
        self.schedule = schedule
        self.variance = variance
        self.clip_sample = clip_sample
        self.timesteps = torch.arange(schedule.timesteps - 1, -1, -1)

    def set_timesteps(self, num_steps: int | None = None) -> None:
        """DDPM always walks every training timestep; ``num_steps`` must be None or T."""
        if num_steps not in (None, self.schedule.timesteps):
            raise ValueError(
                f"DDPM takes all T={self.schedule.timesteps} steps; use sampler=ddim for {num_steps} steps"
            )

    def step(self, eps: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One reverse step from ``x_t`` (``[B, C, H, W]``) given the predicted noise ``eps``."""
        s = self.schedule
        ab_t, ab_prev = s.alphas_cumprod[t], s.alphas_cumprod_prev[t]
        beta_t, alpha_t = s.betas[t], s.alphas[t]
        x0 = (x_t - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
        if self.clip_sample:
            x0 = x0.clamp(-1, 1)
        mean = (beta_t * ab_prev.sqrt() / (1 - ab_t)) * x0 + ((1 - ab_prev) * alpha_t.sqrt() / (1 - ab_t)) * x_t
        if t == 0:
            return mean
        var = s.posterior_variance[t].clamp(min=1e-20) if self.variance == "posterior" else beta_t
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + var.sqrt() * noise
