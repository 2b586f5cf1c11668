"""Rectified flow / flow matching (Liu et al. 2022, Lipman et al. 2022; SD3): a straight path from data to noise."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diffusion_lab.diffusion.objectives.base import NOT_SAMPLERS, Objective, TrainingBatch, expand, init_parameters
from diffusion_lab.rules import TIME_DISTRIBUTION

#: How training flow times t are drawn.
#: diffusers' flow schedulers run on ``t * NUM_TRAIN_TIMESTEPS``, which is also the network's time input.
NUM_TRAIN_TIMESTEPS = 1000


class FlowObjective(Objective):
    """``x_t = (1 - t) x_0 + t eps`` for t in [0, 1]; the network predicts the velocity ``eps - x_0``.

    x_0 = x_t - t v; sigma = t / (1 - t). Min-SNR is not defined here: the loss is the plain
    velocity error, as in SD3.

    Args:
        time_distribution: ``logit_normal`` (t = sigmoid(N(logit_mean, logit_std^2)), SD3's choice: more
            training at the middle times) or ``uniform``.
        logit_mean: mean of the logit-normal.
        logit_std: standard deviation of the logit-normal.
        shift: diffusers' timestep shift of the flow schedulers at sampling (1: none).
        min_snr_gamma: must be None.
    """

    name = "flow"
    default_sampler = "flow_euler"
    prediction_type = "flow_prediction"

    def __init__(
        self,
        time_distribution: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        shift: float = 1.0,
        min_snr_gamma: float | None = None,
    ) -> None:
        super().__init__(min_snr_gamma)
        TIME_DISTRIBUTION.check("objective.time_distribution", time_distribution)
        self.time_distribution = time_distribution
        self.logit_mean = logit_mean
        self.logit_std = logit_std
        self.shift = shift

    def sample_levels(self, num: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        if self.time_distribution == "uniform":
            return torch.rand(num, device=device, generator=generator)
        z = torch.randn(num, device=device, generator=generator)
        return torch.sigmoid(self.logit_mean + self.logit_std * z)

    def training_batch(self, x0: Tensor, levels: Tensor, noise: Tensor) -> TrainingBatch:
        t = expand(levels, x0)
        x_t = (1 - t) * x0 + t * noise
        return TrainingBatch(x_t, levels * NUM_TRAIN_TIMESTEPS, noise - x0, ((1 - levels) / levels).square())

    def network_time(self, timestep: Tensor) -> Tensor:
        return timestep.float()

    def sigma(self, timestep: Tensor) -> Tensor:
        t = timestep.float() / NUM_TRAIN_TIMESTEPS
        return t / (1 - t)

    def add_noise(self, x0: Tensor, fraction: float, noise: Tensor) -> Tensor:
        return (1 - fraction) * x0 + fraction * noise

    def scheduler_config(self, scheduler: type) -> dict[str, Any] | None:
        if any(n in scheduler.__name__ for n in NOT_SAMPLERS):
            return None
        base = {"num_train_timesteps": NUM_TRAIN_TIMESTEPS}
        if scheduler.__name__.startswith("FlowMatch"):
            return {**base, "shift": self.shift}
        if {"use_flow_sigmas", "flow_shift", "prediction_type"} <= init_parameters(scheduler):
            return {**base, "use_flow_sigmas": True, "flow_shift": self.shift, "prediction_type": self.prediction_type}
        return None
