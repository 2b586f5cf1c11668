"""What every reverse-process sampler shares: the timestep sequence and the x_0 prediction."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from diffusion_lab.diffusion.schedules import NoiseSchedule

#: How inference timesteps are picked from the T training timesteps (diffusers' ``timestep_spacing``).
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def spaced_timesteps(total: int, num_steps: int, spacing: str) -> Tensor:
    """``[num_steps]`` distinct timesteps in ``[0, total-1]``, highest first.

    ``leading``: ``k * (T // n)`` (0, 20, ..., 980 for T=1000, n=50); ``trailing``: ``round(T - k T/n) - 1``
    (999, 979, ..., 19: starts at the last training step); ``linspace``: ``round(linspace(0, T-1, n+1))``
    without its first entry 0.
    """
    if not 0 < num_steps <= total:
        raise ValueError(f"steps must be in 1..{total} (the schedule's T), got {num_steps}")
    if spacing == "leading":
        return (torch.arange(num_steps) * (total // num_steps)).flip(0)
    if spacing == "trailing":
        return torch.arange(total, 0, -total / num_steps, dtype=torch.float64).round().long() - 1
    if spacing == "linspace":
        return torch.linspace(0, total - 1, num_steps + 1, dtype=torch.float64).round().long().flip(0)[:-1]
    raise ValueError(f"unknown timestep_spacing {spacing!r}: use one of {', '.join(TIMESTEP_SPACINGS)}")


class Sampler(ABC):
    """A reverse-process sampler in the style of diffusers' schedulers.

    Call :meth:`set_timesteps` once, then :meth:`step` once for each entry of ``timesteps`` in order,
    each time with the model's noise prediction at that timestep.

    Args:
        schedule: the noise schedule the model was trained with.
        timestep_spacing: one of ``leading``, ``trailing``, ``linspace`` (see :func:`spaced_timesteps`).
        clip_sample: clamp the predicted x_0 to [-1, 1], the data range.
    """

    #: Steps used when ``set_timesteps`` gets None (None: all T).
    default_steps: int | None = None

    def __init__(self, schedule: NoiseSchedule, timestep_spacing: str = "leading", clip_sample: bool = True) -> None:
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"unknown timestep_spacing {timestep_spacing!r}: use one of {', '.join(TIMESTEP_SPACINGS)}"
            )
        self.schedule = schedule
        self.timestep_spacing = timestep_spacing
        self.clip_sample = clip_sample
        self.set_timesteps(None)

    def set_timesteps(self, num_steps: int | None = None) -> None:
        """Walk ``num_steps`` timesteps (the sampler's default when None), and reset any solver state."""
        total = self.schedule.timesteps
        num_steps = num_steps if num_steps is not None else min(self.default_steps or total, total)
        self.timesteps = spaced_timesteps(total, num_steps, self.timestep_spacing)
        order = self.timesteps.tolist()
        #: timestep -> the one after it in the sequence (-1 after the last: x_0 itself).
        self.prev_timestep = dict(zip(order, [*order[1:], -1], strict=True))

    @property
    def num_steps(self) -> int:
        """Number of network evaluations per sample."""
        return len(self.timesteps)

    def alpha_bar(self, t: int) -> Tensor:
        """alpha_bar_t, with alpha_bar_{-1} = 1 (clean data)."""
        ab = self.schedule.alphas_cumprod
        return ab[t] if t >= 0 else ab.new_tensor(1.0)

    def predict_x0(self, eps: Tensor, t: int, x_t: Tensor) -> Tensor:
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), clamped when ``clip_sample``."""
        ab_t = self.alpha_bar(t)
        x0 = (x_t - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
        return x0.clamp(-1, 1) if self.clip_sample else x0

    @staticmethod
    def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Standard normal noise shaped like ``x``, from ``generator`` (on ``x``'s device)."""
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    @abstractmethod
    def step(self, eps: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One reverse step from ``x_t`` (``[B, C, H, W]``) at timestep ``t`` to the next timestep of the sequence.

        Args:
            eps: ``[B, C, H, W]`` the model's noise prediction at ``(x_t, t)``.
            t: the current timestep, an entry of ``timesteps``.
            x_t: ``[B, C, H, W]`` the current sample.
            generator: RNG of stochastic samplers.

        Returns:
            ``[B, C, H, W]`` the sample at ``prev_timestep[t]`` (x_0 after the last step).
        """


#: What a ``sampler`` config group instantiates to (``_partial_: true``): ``factory(schedule=...)`` builds the sampler.
SamplerFactory = Callable[..., Sampler]
