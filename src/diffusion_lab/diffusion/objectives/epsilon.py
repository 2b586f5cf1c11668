"""Noise prediction (Ho et al. 2020): the network predicts eps, the noise added to x_0."""

from __future__ import annotations

from torch import Tensor

from diffusion_lab.diffusion.objectives.base import DiscreteObjective


class EpsilonObjective(DiscreteObjective):
    """``target = eps``; x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar).

    Min-SNR weight: min(SNR, gamma) / SNR.
    """

    name = "eps"
    default_sampler = "ddim"
    prediction_type = "epsilon"

    def target(self, x0: Tensor, levels: Tensor, noise: Tensor) -> Tensor:
        return noise

    def min_snr_weight(self, snr: Tensor) -> Tensor:
        return snr.clamp(max=self.min_snr_gamma) / snr
