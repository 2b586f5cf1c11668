"""v-prediction (Salimans & Ho 2022): the network predicts v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0."""

from __future__ import annotations

from torch import Tensor

from diffusion_lab.diffusion.objectives.base import DiscreteObjective, TrainingBatch


class VObjective(DiscreteObjective):
    """``target = v``; x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v. Min-SNR weight min(SNR, gamma) / (SNR + 1)."""

    name = "v"
    default_sampler = "ddim"
    prediction_type = "v_prediction"

    def training_batch(self, x0: Tensor, levels: Tensor, noise: Tensor) -> TrainingBatch:
        alpha, sigma = self._alpha_sigma(levels, x0)
        ab = self.schedule.alphas_cumprod[levels.long()]
        return TrainingBatch(alpha * x0 + sigma * noise, levels, alpha * noise - sigma * x0, ab / (1 - ab))

    def min_snr_weight(self, snr: Tensor) -> Tensor:
        return snr.clamp(max=self.min_snr_gamma) / (snr + 1)

    def predict_x0(self, output: Tensor, x_in: Tensor, timestep: Tensor) -> Tensor:
        alpha, sigma = self._alpha_sigma_at(timestep, x_in)
        return alpha * x_in - sigma * output
