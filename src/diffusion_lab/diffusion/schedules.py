"""Noise schedules and the forward (noising) process q(x_t | x_0).

Timesteps are integer indices ``t`` in ``[0, T-1]``; ``alphas_cumprod[t]`` is alpha_bar of
x_t, so x_0 is noised once at ``t = 0`` and almost fully at ``t = T-1``.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from diffusion_lab.rules import TIMESTEPS

log = logging.getLogger(__name__)

#: A schedule whose alpha_bar_T stays above this leaves visible signal at t = T-1, so sampling
#: that starts from pure N(0, I) noise starts off-distribution.
ALPHA_BAR_T_WARN = 1e-3


class NoiseSchedule(nn.Module):
    """Betas of a DDPM and the quantities derived from them, as float32 buffers.

    Args:
        betas: ``[T]`` noise variances, each in (0, 1).
        name: schedule name, for logs and figures.
    """

    def __init__(self, betas: Tensor, name: str = "custom") -> None:
        super().__init__()
        betas = betas.to(torch.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError("diffusion.timesteps must be a positive integer")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"{name} schedule: every beta must lie in (0, 1); lower beta_end or raise timesteps")
        self.name = name
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        }
        for key, value in buffers.items():
            self.register_buffer(key, value.to(torch.float32), persistent=False)
        final = float(alphas_cumprod[-1])
        if final > ALPHA_BAR_T_WARN:
            log.warning(
                "%s schedule with T=%d ends at alpha_bar_T=%.3g (> %.0e): x_T keeps signal, so sampling "
                "from pure noise starts off-distribution; use more timesteps or a cosine schedule",
                name,
                len(betas),
                final,
                ALPHA_BAR_T_WARN,
            )

    @property
    def timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return len(self.betas)

    def log_snr(self) -> Tensor:
        """``[T]`` log signal-to-noise ratio log(alpha_bar / (1 - alpha_bar))."""
        return torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod)

    def scales(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``sqrt(alpha_bar_t)`` and ``sqrt(1 - alpha_bar_t)`` at integer timesteps ``t`` ``[B]``, shaped
        ``[B, 1, ...]`` in ``like``'s dtype to scale images like ``like``."""
        shape = (-1,) + (1,) * (like.ndim - 1)
        t = t.long()
        return (
            self.sqrt_alphas_cumprod[t].view(shape).to(like.dtype),
            self.sqrt_one_minus_alphas_cumprod[t].view(shape).to(like.dtype),
        )

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I): the forward process of the
        eps and v objectives, in training and in figures.

        Args:
            x0: ``[B, C, H, W]`` clean images.
            t: ``[B]`` integer timesteps in ``[0, T-1]``.
            noise: ``[B, C, H, W]`` standard normal noise.
        """
        alpha, sigma = self.scales(t, x0)
        return alpha * x0 + sigma * noise

    def extra_repr(self) -> str:
        return f"name={self.name}, T={self.timesteps}, alpha_bar_T={float(self.alphas_cumprod[-1]):.3g}"


def _check_timesteps(timesteps: int) -> None:
    TIMESTEPS.check("diffusion.timesteps", timesteps)


def linear(
    timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, scale_to_timesteps: bool = True
) -> NoiseSchedule:
    """Linear betas (Ho et al.). With ``scale_to_timesteps`` the 1000-step range is scaled by 1000/T."""
    _check_timesteps(timesteps)
    scale = 1000.0 / timesteps if scale_to_timesteps else 1.0
    betas = torch.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=torch.float64)
    return NoiseSchedule(betas, name="linear")


def quadratic(
    timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, scale_to_timesteps: bool = True
) -> NoiseSchedule:
    """Betas ``linspace(sqrt(b0), sqrt(b1), T) ** 2``, with b0, b1 scaled by 1000/T as for ``linear``."""
    _check_timesteps(timesteps)
    scale = 1000.0 / timesteps if scale_to_timesteps else 1.0
    betas = torch.linspace(math.sqrt(scale * beta_start), math.sqrt(scale * beta_end), timesteps, dtype=torch.float64)
    return NoiseSchedule(betas**2, name="quadratic")


def cosine(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Cosine schedule of Nichol & Dhariwal: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2)."""
    _check_timesteps(timesteps)
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
    return NoiseSchedule(betas, name="cosine")
