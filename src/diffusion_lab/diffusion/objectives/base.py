"""What every training objective shares: one U-Net, many parameterisations (k-diffusion's ``Denoiser``).

An objective says how a clean batch is noised for training, what the network is trained to output,
and how the timesteps a diffusers scheduler walks map to the network's time input and to the noise
level sigma. The network's raw output is the ``model_output`` the fitted scheduler expects (its
``prediction_type``), so sampling needs no conversion, and classifier-free guidance, an affine mix of
two outputs, is the same mix of the two x_0 predictions for every objective.

Noise levels are given as sigma, the standard deviation of the noise relative to the signal
(``x = x_0 + sigma * eps`` up to a scale): ``sqrt((1 - alpha_bar) / alpha_bar)`` of a DDPM schedule.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from diffusion_lab.diffusion.schedules import NoiseSchedule
from diffusion_lab.rules import MIN_SNR_GAMMA


@dataclass
class TrainingBatch:
    """One noised batch: what the network sees and what it should output.

    Attributes:
        x_in: ``[B, C, H, W]`` the network input.
        time: ``[B]`` the network's time input.
        target: ``[B, C, H, W]`` what the network is trained to output.
        snr: ``[B]`` signal-to-noise ratio ``1 / sigma^2`` of each image (for loss weightings).
    """

    x_in: Tensor
    time: Tensor
    target: Tensor
    snr: Tensor


def expand(values: Tensor, like: Tensor) -> Tensor:
    """``[B]`` per-image values -> ``[B, 1, 1, 1]`` in ``like``'s dtype, to scale images."""
    return values.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class Objective(nn.Module, ABC):
    """A parameterisation of the denoiser: the training pairs and the scheduler settings it fits.

    Args:
        min_snr_gamma: Min-SNR-gamma loss weighting (Hang et al. 2023), where the objective defines it;
            None for the objective's own loss.
    """

    #: Config group option (``objective=NAME``).
    name: str = ""
    #: The diffusers ``prediction_type`` of the network's output.
    prediction_type: str = ""
    #: The named sampler ``sampler=auto`` samples it with (``conf/sampler/NAME.yaml``).
    default_sampler: str = ""

    def __init__(self, min_snr_gamma: float | None = None) -> None:
        super().__init__()
        if min_snr_gamma is not None and not self.has_min_snr():
            raise ValueError(
                f"Min-SNR weighting is defined for objective=eps and v, not {self.name}: "
                "set objective.min_snr_gamma=null"
            )
        MIN_SNR_GAMMA.check("objective.min_snr_gamma", min_snr_gamma)
        self.min_snr_gamma = min_snr_gamma

    @classmethod
    def has_min_snr(cls) -> bool:
        """Whether Min-SNR weighting is defined for this objective."""
        return cls.min_snr_weight is not Objective.min_snr_weight

    def min_snr_weight(self, snr: Tensor) -> Tensor:
        """``[B]`` Min-SNR weights of the per-image errors (objectives that define it override this)."""
        raise NotImplementedError

    @abstractmethod
    def sample_levels(self, num: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """``[num]`` training noise levels, in the objective's own units (timesteps, flow times, sigmas)."""

    @abstractmethod
    def training_batch(self, x0: Tensor, levels: Tensor, noise: Tensor) -> TrainingBatch:
        """Noise ``x0`` (``[B, C, H, W]``) at ``levels`` (``[B]``) with ``noise``: the input and the target."""

    def loss(self, output: Tensor, batch: TrainingBatch, weighted: bool = False) -> Tensor:
        """Mean squared error of ``output`` against the target, Min-SNR weighted when ``weighted`` and set."""
        error = (output.float() - batch.target.float()).square().mean(dim=tuple(range(1, output.ndim)))
        if weighted and self.min_snr_gamma is not None:
            error = error * self.min_snr_weight(batch.snr)
        return error.mean()

    @abstractmethod
    def network_time(self, timestep: Tensor) -> Tensor:
        """A scheduler's timesteps ``[B]`` -> the network's time input ``[B]``."""

    @abstractmethod
    def sigma(self, timestep: Tensor) -> Tensor:
        """A scheduler's timesteps -> the noise level sigma there (for ``guidance_interval``)."""

    @abstractmethod
    def add_noise(self, x0: Tensor, fraction: float, noise: Tensor) -> Tensor:
        """The forward process at ``fraction`` of the way from clean (0) to pure noise (1), for figures."""

    @abstractmethod
    def scheduler_config(self, scheduler: type) -> dict[str, Any] | None:
        """The settings that fit a diffusers scheduler class to this model, or None when it does not fit."""

    def describe(self) -> str:
        """``eps`` or ``v (cosine schedule)``: for titles and logs."""
        return self.name


def init_parameters(scheduler: type) -> set[str]:
    """The constructor arguments of a diffusers scheduler class."""
    return set(inspect.signature(scheduler.__init__).parameters)


#: Scheduler classes that take betas and a prediction type but do not sample a trained model from noise:
#: inversions, distilled-model (consistency, LCM, TCD, DMD) samplers, inpainting and video variants.
NOT_SAMPLERS = ("Inverse", "LCM", "TCD", "RePaint", "CogVideoX", "Parallel", "Helios")


class DiscreteObjective(Objective):
    """The DDPM family (eps, v): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps on T integer timesteps.

    Args:
        schedule: the betas (``schedule`` config group).
        min_snr_gamma: Min-SNR-gamma weighting, or None for the plain loss.
    """

    def __init__(self, schedule: NoiseSchedule, min_snr_gamma: float | None = None) -> None:
        super().__init__(min_snr_gamma)
        self.schedule = schedule

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    def sample_levels(self, num: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, self.schedule.timesteps, (num,), device=device, generator=generator)

    def training_batch(self, x0: Tensor, levels: Tensor, noise: Tensor) -> TrainingBatch:
        """``x_in = NoiseSchedule.q_sample(x0, t, noise)`` at the integer timesteps ``levels``, and :meth:`target`."""
        ab = self.schedule.alphas_cumprod[levels.long()]
        x_in = self.schedule.q_sample(x0, levels, noise)
        return TrainingBatch(x_in, levels, self.target(x0, levels, noise), ab / (1 - ab))

    @abstractmethod
    def target(self, x0: Tensor, levels: Tensor, noise: Tensor) -> Tensor:
        """What the network is trained to output at ``q_sample(x0, levels, noise)``."""

    def _vp_sigmas(self) -> Tensor:
        """``[T]`` sigma of every training timestep."""
        ab = self.schedule.alphas_cumprod
        return ((1 - ab) / ab).sqrt()

    def network_time(self, timestep: Tensor) -> Tensor:
        return timestep.float()

    def sigma(self, timestep: Tensor) -> Tensor:
        """Linear interpolation of the training sigmas (diffusers' Euler schedulers pass fractional timesteps)."""
        sigmas = self._vp_sigmas()
        t = timestep.float().clamp(0, self.timesteps - 1).to(sigmas.device)
        low = t.floor().long()
        high = (low + 1).clamp(max=self.timesteps - 1)
        frac = t - low
        return sigmas[low] * (1 - frac) + sigmas[high] * frac

    def add_noise(self, x0: Tensor, fraction: float, noise: Tensor) -> Tensor:
        t = torch.tensor([round(fraction * (self.timesteps - 1))], device=x0.device)
        return self.schedule.q_sample(x0, t, noise)

    def scheduler_config(self, scheduler: type) -> dict[str, Any] | None:
        params = init_parameters(scheduler)
        if not {"trained_betas", "prediction_type"} <= params or any(n in scheduler.__name__ for n in NOT_SAMPLERS):
            return None
        return {
            "num_train_timesteps": self.timesteps,
            "trained_betas": self.schedule.betas.double().cpu().numpy().tolist(),
            "prediction_type": self.prediction_type,
        }

    def describe(self) -> str:
        return f"{self.name} ({self.schedule.name} schedule)"
