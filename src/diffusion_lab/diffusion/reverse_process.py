"""The reverse-process loop p(x_{0:T}) with classifier-free guidance, shared by every sampler."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator

import torch
from torch import Tensor

from diffusion_lab.diffusion.samplers import SAMPLERS, Sampler
from diffusion_lab.diffusion.schedules import NoiseSchedule
from diffusion_lab.models.unet import ConditionalUNet


def guided_eps(
    unet: ConditionalUNet, x: Tensor, t: Tensor, labels: Tensor, guidance: float, styles: Tensor | None = None
) -> Tensor:
    """Classifier-free guided noise ``(1 + w) eps(x, y, s) - w eps(x, null, no style)`` in float32, in one batched pass.

    With ``guidance == 0`` this is the plain conditional prediction (one forward pass of ``[B]``);
    otherwise one pass of ``[2B]`` over the conditional and the unconditional halves. ``styles``
    (``[B, S]`` normalised, NaN = not given) is dropped in the unconditional half with the label,
    so guidance pushes towards the asked style as it does towards the class.
    """
    if guidance == 0:
        return (unet(x, t, labels) if styles is None else unet(x, t, labels, styles)).float()
    null = torch.full_like(labels, unet.null_class)
    x2, t2, labels2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])
    if styles is None:
        eps = unet(x2, t2, labels2)
    else:
        eps = unet(x2, t2, labels2, torch.cat([styles, torch.full_like(styles, float("nan"))]))
    eps_cond, eps_uncond = eps.float().chunk(2)
    return (1 + guidance) * eps_cond - guidance * eps_uncond


def make_sampler(sampler: str | Sampler, schedule: NoiseSchedule, **kwargs: object) -> Sampler:
    """A sampler by name (``ddpm``, ``ddim`` or ``dpm_solver``, built with ``kwargs``); a :class:`Sampler` as is."""
    if isinstance(sampler, Sampler):
        return sampler
    try:
        cls = SAMPLERS[sampler]
    except KeyError:
        raise ValueError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}") from None
    return cls(schedule, **kwargs)


def check_guidance(guidance: float) -> None:
    """Refuse a guidance weight that is not a finite number >= 0."""
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0 (0 = no guidance), got {guidance!r}")


@torch.no_grad()
def sample_progressive(
    unet: ConditionalUNet,
    sampler: Sampler,
    labels: Tensor,
    noise: Tensor,
    guidance: float = 0.0,
    generator: torch.Generator | None = None,
    styles: Tensor | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """Run the reverse process from ``noise``, yielding ``(t, x)`` before the first step and after each.

    ``t`` is the timestep of ``x`` (-1 for the final x_0). The sampler's ``timesteps`` must be set.

    Args:
        unet: the noise predictor (in eval mode).
        sampler: a sampler on the model's schedule, after ``set_timesteps``.
        labels: ``[N]`` class indices.
        noise: ``[N, C, H, W]`` the starting x_T.
        guidance: classifier-free guidance weight w (0 = conditional only).
        generator: RNG of stochastic samplers (on the model's device).
        styles: ``[N, S]`` normalised style conditions (NaN = not given) of a style-conditioned U-Net.
    """
    check_guidance(guidance)
    x = noise
    timesteps = sampler.timesteps.tolist()
    yield timesteps[0], x
    for t in timesteps:
        t_batch = torch.full((len(labels),), t, device=x.device, dtype=torch.long)
        eps = guided_eps(unet, x, t_batch, labels, guidance, styles)
        x = sampler.step(eps, t, x, generator=generator)
        yield sampler.prev_timestep[t], x


@torch.no_grad()
def sample(
    unet: ConditionalUNet,
    schedule: NoiseSchedule,
    labels: Tensor,
    sampler: str | Sampler = "ddim",
    steps: int | None = None,
    guidance: float = 0.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    image_shape: tuple[int, int, int] | None = None,
    styles: Tensor | None = None,
    **sampler_kwargs: object,
) -> Tensor:
    """Generate one image per label.

    Args:
        unet: the noise predictor (in eval mode).
        schedule: the schedule it was trained with.
        labels: ``[N]`` class indices.
        sampler: a sampler name (built with ``sampler_kwargs``) or a :class:`Sampler` on ``schedule``.
        steps: number of steps (the sampler's default when None: DDPM T, DDIM 50, DPM-Solver 20).
        guidance: classifier-free guidance weight w (0 = conditional only).
        noise: ``[N, C, H, W]`` starting noise x_T; drawn from ``generator`` if None.
        image_shape: ``(C, H, W)`` of the noise drawn when ``noise`` is None.
        generator: RNG for x_T and stochastic steps, for reproducible samples.
        styles: ``[N, S]`` normalised style conditions (NaN = not given) of a style-conditioned U-Net.

    Returns:
        ``[N, C, H, W]`` images in [-1, 1].
    """
    device = schedule.betas.device
    built = make_sampler(sampler, schedule, **sampler_kwargs)
    built.set_timesteps(steps)
    labels = labels.to(device)
    if noise is None:
        if image_shape is None:
            raise ValueError("sample needs the starting noise or the image_shape to draw it in")
        noise = torch.randn((len(labels), *image_shape), generator=generator, device=device)
    styles = None if styles is None else styles.to(device)
    steps_taken = sample_progressive(
        unet, built, labels, noise.to(device), guidance=guidance, generator=generator, styles=styles
    )
    _, x = deque(steps_taken, maxlen=1)[0]
    return x.clamp(-1, 1)
