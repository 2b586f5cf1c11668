"""DDIM sampling (Song et al. 2021) on a sub-sequence of the training timesteps."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.diffusion.samplers.base import Sampler
from diffusion_lab.diffusion.schedules import NoiseSchedule


class DDIMSampler(Sampler):
    """Deterministic (``eta=0``) or stochastic DDIM steps.

    ``x_t' = sqrt(ab_t') x0 + sqrt(1 - ab_t' - sigma^2) eps + sigma z`` with
    ``sigma = eta sqrt((1 - ab_t') / (1 - ab_t) (1 - ab_t / ab_t'))``; ``eta=1`` on all T steps is
    ancestral DDPM. When x_0 is clipped, eps is re-derived from it (diffusers' ``DDIMScheduler`` with
    ``use_clipped_model_output=True``), which keeps eta=1 on all T steps equal to DDPM.

    Args:
        schedule: the noise schedule the model was trained with.
        eta: 0 for deterministic DDIM, 1 for DDPM-like noise.
        timestep_spacing: see :func:`~diffusion_lab.diffusion.samplers.base.spaced_timesteps`.
        clip_sample: clamp the predicted x_0 to [-1, 1].
    """

    default_steps = 50

    def __init__(
        self, schedule: NoiseSchedule, eta: float = 0.0, timestep_spacing: str = "leading", clip_sample: bool = True
    ) -> None:
        if not eta >= 0:
            raise ValueError(f"DDIM eta must be >= 0, got {eta}")
        self.eta = eta
        super().__init__(schedule, timestep_spacing=timestep_spacing, clip_sample=clip_sample)

    def step(self, eps: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        prev = self.prev_timestep[t]
        ab_t, ab_prev = self.alpha_bar(t), self.alpha_bar(prev)
        x0 = self.predict_x0(eps, t, x_t)
        if self.clip_sample:
            eps = (x_t - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
        sigma = self.eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
        x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        if self.eta > 0 and prev >= 0:
            x_prev = x_prev + sigma * self.noise_like(x_t, generator)
        return x_prev
