"""EDM (Karras et al. 2022): preconditioned denoising on x = x_0 + sigma eps, with log-normal training sigmas."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from diffusion_lab.diffusion.objectives.base import Objective, TrainingBatch, expand


class EDMObjective(Objective):
    """``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)``, the network F trained to ``(x_0 - c_skip x) / c_out``.

    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
    c_noise = ln(sigma) / 4 (the timestep diffusers' EDM schedulers pass). The plain MSE on F is the EDM loss
    with its weighting lambda(sigma) = 1 / c_out^2. The network's time input is ln(sigma) mapped linearly from
    [ln sigma_min, ln sigma_max] to [0, 1000], the range the U-Net's time embedding was made for.

    Args:
        sigma_data: standard deviation of the data (sd).
        p_mean: mean of ln(sigma) in training.
        p_std: standard deviation of ln(sigma) in training.
        sigma_min: lowest sigma of sampling.
        sigma_max: highest sigma of sampling (the starting noise).
        min_snr_gamma: must be None.
    """

    name = "edm"
    default_sampler = "edm_euler"
    prediction_type = "epsilon"  # diffusers' EDM schedulers: c_out = +sigma sd / sqrt(sigma^2 + sd^2)

    def __init__(
        self,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        min_snr_gamma: float | None = None,
    ) -> None:
        super().__init__(min_snr_gamma)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"objective.sigma_min must be in (0, sigma_max), got {sigma_min} and {sigma_max}")
        self.sigma_data = sigma_data
        self.p_mean = p_mean
        self.p_std = p_std
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def preconditioning(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in)`` at ``sigma``."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, c_in

    def _time_of_sigma(self, sigma: Tensor) -> Tensor:
        low, high = math.log(self.sigma_min), math.log(self.sigma_max)
        return 1000 * (sigma.log() - low) / (high - low)

    def sample_levels(self, num: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        return (self.p_mean + self.p_std * torch.randn(num, device=device, generator=generator)).exp()

    def training_batch(self, x0: Tensor, levels: Tensor, noise: Tensor) -> TrainingBatch:
        c_skip, c_out, c_in = (expand(c, x0) for c in self.preconditioning(levels))
        x = x0 + expand(levels, x0) * noise
        return TrainingBatch(c_in * x, self._time_of_sigma(levels), (x0 - c_skip * x) / c_out, levels.pow(-2))

    def network_time(self, timestep: Tensor) -> Tensor:
        return self._time_of_sigma(self.sigma(timestep))

    def sigma(self, timestep: Tensor) -> Tensor:
        return (4 * timestep.float()).exp()

    def add_noise(self, x0: Tensor, fraction: float, noise: Tensor) -> Tensor:
        """x_0 + sigma eps at sigma log-linearly between sigma_min and sigma_max, scaled by 1 / sqrt(1 + sigma^2)."""
        sigma = self.sigma_min ** (1 - fraction) * self.sigma_max**fraction if fraction > 0 else 0.0
        return (x0 + sigma * noise) / math.sqrt(1 + sigma**2)

    def scheduler_config(self, scheduler: type) -> dict[str, Any] | None:
        if not scheduler.__name__.startswith("EDM"):
            return None
        return {
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "sigma_data": self.sigma_data,
            "prediction_type": self.prediction_type,
        }
