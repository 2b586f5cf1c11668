"""DDIM sampling (Song et al. 2021) on a sub-sequence of the training timesteps."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.schedules import NoiseSchedule


class DDIMSampler:
    """Deterministic (``eta=0``) or stochastic DDIM steps.

    Timesteps are spaced as ``arange(num_steps) * (T // num_steps)``, highest first, the
    "leading" spacing of diffusers' ``DDIMScheduler``.

    Args:
        schedule: the noise schedule the model was trained with.
        eta: 0 for deterministic DDIM, 1 for DDPM-like noise.
        clip_sample: clamp the predicted x_0 to [-1, 1].
    """

    def __init__(self, schedule: NoiseSchedule, eta: float = 0.0, clip_sample: bool = True) -> None:
        self.schedule = schedule
        self.eta = eta
        self.clip_sample = clip_sample
        self.set_timesteps(50 if schedule.timesteps >= 50 else schedule.timesteps)

    def set_timesteps(self, num_steps: int | None = None) -> None:
        """Use ``num_steps`` evenly spaced timesteps (all T when None)."""
        total = self.schedule.timesteps
        num_steps = total if num_steps is None else num_steps
        if not 0 < num_steps <= total:
            raise ValueError(f"DDIM steps must be in 1..{total} (the schedule's T), got {num_steps}")
        self.step_ratio = total // num_steps
        self.timesteps = (torch.arange(num_steps) * self.step_ratio).flip(0)

    def step(self, eps: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One reverse step from ``x_t`` (``[B, C, H, W]``) to the previous timestep of the sequence."""
        s = self.schedule
        prev = t - self.step_ratio
        ab_t = s.alphas_cumprod[t]
        ab_prev = s.alphas_cumprod[prev] if prev >= 0 else ab_t.new_tensor(1.0)
        x0 = (x_t - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
        if self.clip_sample:
            x0 = x0.clamp(-1, 1)
            eps = (x_t - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
        sigma = self.eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
        x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        if self.eta > 0 and prev >= 0:
            x_prev = x_prev + sigma * torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return x_prev
