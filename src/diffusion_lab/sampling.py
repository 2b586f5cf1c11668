"""The reverse-process loop with classifier-free guidance, shared by every sampler."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.samplers import SAMPLERS
from diffusion_lab.schedules import NoiseSchedule
from diffusion_lab.unet import ConditionalUNet


def guided_eps(unet: ConditionalUNet, x: Tensor, t: Tensor, labels: Tensor, guidance: float) -> Tensor:
    """Classifier-free guided noise ``(1 + w) eps(x, y) - w eps(x, null)``, in one batched pass.

    With ``guidance == 0`` this is the plain conditional prediction (one forward pass).
    """
    if guidance == 0:
        return unet(x, t, labels)
    null = torch.full_like(labels, unet.null_class)
    eps_cond, eps_uncond = unet(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
    return (1 + guidance) * eps_cond - guidance * eps_uncond


def make_sampler(name: str, schedule: NoiseSchedule, **kwargs: object) -> object:
    """Build a sampler by name (``ddpm`` or ``ddim``)."""
    try:
        cls = SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}") from None
    return cls(schedule, **kwargs)


@torch.no_grad()
def sample(
    unet: ConditionalUNet,
    schedule: NoiseSchedule,
    labels: Tensor,
    sampler: str = "ddim",
    steps: int | None = 50,
    guidance: float = 0.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    **sampler_kwargs: object,
) -> Tensor:
    """Generate one image per label.

    Args:
        unet: the noise predictor (in eval mode).
        schedule: the schedule it was trained with.
        labels: ``[N]`` class indices.
        sampler: ``ddpm`` (all T steps) or ``ddim``.
        steps: DDIM steps (ignored by DDPM unless it differs from T).
        guidance: classifier-free guidance weight w (0 = conditional only).
        noise: ``[N, C, H, W]`` starting noise x_T; drawn from ``generator`` if None.
        generator: RNG for x_T and stochastic steps, for reproducible samples.

    Returns:
        ``[N, C, H, W]`` images in [-1, 1].
    """
    device = schedule.betas.device
    proc = make_sampler(sampler, schedule, **sampler_kwargs)
    proc.set_timesteps(steps if sampler == "ddim" else None)
    labels = labels.to(device)
    if noise is None:
        noise = torch.randn((len(labels), *image_shape), generator=generator, device=device)
    x = noise.to(device)
    for t in proc.timesteps.tolist():
        t_batch = torch.full((len(labels),), t, device=device, dtype=torch.long)
        eps = guided_eps(unet, x, t_batch, labels, guidance)
        x = proc.step(eps.float(), t, x, generator=generator)
    return x.clamp(-1, 1)
