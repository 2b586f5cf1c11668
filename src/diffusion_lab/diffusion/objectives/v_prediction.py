"""v-prediction (Salimans & Ho 2022): the network predicts v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0."""

from __future__ import annotations

from torch import Tensor

from diffusion_lab.diffusion.objectives.base import DiscreteObjective


class VObjective(DiscreteObjective):
    """``target = v``; x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v. Min-SNR weight min(SNR, gamma) / (SNR + 1)."""

    name = "v"
    default_sampler = "ddim"
    prediction_type = "v_prediction"

    def target(self, x0: Tensor, levels: Tensor, noise: Tensor) -> Tensor:
        alpha, sigma = self.schedule.scales(levels, x0)
        return alpha * noise - sigma * x0

    def min_snr_weight(self, snr: Tensor) -> Tensor:
        return snr.clamp(max=self.min_snr_gamma) / (snr + 1)
