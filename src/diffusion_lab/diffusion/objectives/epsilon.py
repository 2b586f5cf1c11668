"""Noise prediction (Ho et al. 2020): the network predicts eps, the noise added to x_0."""

from __future__ import annotations

from torch import Tensor

from diffusion_lab.diffusion.objectives.base import DiscreteObjective, TrainingBatch


class EpsilonObjective(DiscreteObjective):
    """``target = eps``; x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar).

    Min-SNR weight: min(SNR, gamma) / SNR.
    """

    name = "eps"
    default_sampler = "ddim"
    prediction_type = "epsilon"

    def training_batch(self, x0: Tensor, levels: Tensor, noise: Tensor) -> TrainingBatch:
        alpha, sigma = self._alpha_sigma(levels, x0)
        ab = self.schedule.alphas_cumprod[levels.long()]
        return TrainingBatch(alpha * x0 + sigma * noise, levels, noise, ab / (1 - ab))

    def min_snr_weight(self, snr: Tensor) -> Tensor:
        return snr.clamp(max=self.min_snr_gamma) / snr

    def predict_x0(self, output: Tensor, x_in: Tensor, timestep: Tensor) -> Tensor:
        alpha, sigma = self._alpha_sigma_at(timestep, x_in)
        return (x_in - sigma * output) / alpha
