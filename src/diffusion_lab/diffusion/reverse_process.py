"""The reverse-process loop p(x_{0:T}) with classifier-free guidance and autoguidance, shared by every sampler and
objective.

The loop runs any :class:`Denoiser`, the U-Net or anything called like it, as k-diffusion's samplers take
``model(x, sigma, **extra)``: :func:`denoise` walks one batch from its starting noise under a set
:class:`~diffusion_lab.diffusion.samplers.Sampler`, telling ``on_step`` after every step; :func:`sample` is the
same with the sampler built by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from diffusers.guiders.guider_utils import rescale_noise_cfg
from torch import Tensor

from diffusion_lab.diffusion.objectives import Objective
from diffusion_lab.diffusion.samplers import Sampler, make_sampler
from diffusion_lab.rules import AUTOGUIDANCE, GUIDANCE, GUIDANCE_INTERVAL, GUIDANCE_RESCALE


class Denoiser(Protocol):
    """What the reverse process runs: the network, or any callable with its contract.

    ``denoiser(x, time, labels, styles)`` is the objective's prediction ``[B, C, H, W]`` (noise, v, velocity
    or EDM's F) for inputs ``x`` ``[B, C, H, W]`` at network times ``time`` ``[B]`` of class indices ``labels``
    ``[B]``; ``styles`` ``[B, S]`` (normalised, NaN = not given) is passed only to a style-conditioned one.
    ``null_class`` is the label of classifier-free guidance's unconditional half.
    """

    null_class: int

    def __call__(self, x: Tensor, time: Tensor, labels: Tensor, styles: Tensor | None = None) -> Tensor: ...


#: Told after every step of :func:`denoise`: ``on_step(i, t, x)`` with the step's index, its scheduler timestep
#: and the new x; returns the x to go on with.
StepHook = Callable[[int, Tensor, Tensor], Tensor]

#: The guidance weight w of the sampling commands, the callbacks and the notebook API when none is given:
#: chosen by the objective sweep of the default recipe (docs/objectives.md).
DEFAULT_GUIDANCE = 0.3

#: A guidance interval ``(sigma_lo, sigma_hi)``: guide while sigma is in it; None guides every step. A
#: ``sigma_hi`` of None or infinity leaves it open above, so it also holds the flow objective's first step
#: (sigma = t / (1 - t) is infinite at t = 1).
Interval = Sequence[float | None] | None


def guided_output(
    denoiser: Denoiser,
    x: Tensor,
    time: Tensor,
    labels: Tensor,
    guidance: float,
    styles: Tensor | None = None,
    rescale: float = 0.0,
    guide: Denoiser | None = None,
    autoguidance: float = 0.0,
) -> Tensor:
    """The guided network output ``[B, C, H, W]`` in float32.

    ``F`` is the network's raw output (noise, v, velocity or EDM's F: a mix of outputs is the same mix of
    their x_0 predictions for each). With ``autoguidance == 0`` this is classifier-free guidance,
    ``(1 + w) F(x, y, s) - w F(x, null, no style)``: the plain conditional output (one pass of ``[B]``)
    when ``guidance == 0``, else one pass of ``[2B]`` over the conditional and unconditional halves.
    With ``autoguidance`` w_a > 0 (Karras et al. 2024) the ``guide`` network, a weaker version of the
    model, adds ``w_a (F(x, y, s) - G(x, y, s))``: ``F + w (F - F_uncond) + w_a (F - G)``, one more pass
    of ``[B]`` through the guide. ``styles`` (``[B, S]`` normalised, NaN = not given) is dropped in the
    unconditional half with the label. ``rescale`` (Lin et al. 2023, diffusers' ``guidance_rescale``)
    pulls the guided output's standard deviation back towards the conditional one's.
    """
    if autoguidance == 0:
        if guidance == 0:
            return _network(denoiser, x, time, labels, styles).float()
        cond, uncond = _cond_uncond(denoiser, x, time, labels, styles)
        guided = (1 + guidance) * cond - guidance * uncond
    else:
        if guide is None:
            raise ValueError("autoguidance needs a guide network: pass guide= (a weaker model of the same data)")
        if guidance == 0:
            cond = _network(denoiser, x, time, labels, styles).float()
            guided = cond
        else:
            cond, uncond = _cond_uncond(denoiser, x, time, labels, styles)
            guided = cond + guidance * (cond - uncond)
        guided = guided + autoguidance * (cond - _network(guide, x, time, labels, styles).float())
    return rescale_noise_cfg(guided, cond, rescale) if rescale > 0 else guided


def _network(denoiser: Denoiser, x: Tensor, time: Tensor, labels: Tensor, styles: Tensor | None) -> Tensor:
    """One pass of ``[B]``: the network's conditional output (with ``styles`` where given)."""
    return denoiser(x, time, labels) if styles is None else denoiser(x, time, labels, styles)


def _cond_uncond(
    denoiser: Denoiser, x: Tensor, time: Tensor, labels: Tensor, styles: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The conditional and unconditional outputs ``[B, C, H, W]`` in float32, from one pass of ``[2B]``."""
    null = torch.full_like(labels, denoiser.null_class)
    x2, t2, labels2 = torch.cat([x, x]), torch.cat([time, time]), torch.cat([labels, null])
    if styles is None:
        out = denoiser(x2, t2, labels2)
    else:
        out = denoiser(x2, t2, labels2, torch.cat([styles, torch.full_like(styles, float("nan"))]))
    cond, uncond = out.float().chunk(2)
    return cond, uncond


def check_guidance(guidance: float, interval: Interval = None, rescale: float = 0.0, autoguidance: float = 0.0) -> None:
    """Refuse a (auto)guidance weight that is not a finite number >= 0, a bad interval or rescale (one line, by the
    rules the commands' configs are checked with: :mod:`diffusion_lab.rules`)."""
    GUIDANCE.check("guidance", guidance)
    AUTOGUIDANCE.check("autoguidance", autoguidance)
    GUIDANCE_INTERVAL.check("guidance_interval", interval)
    GUIDANCE_RESCALE.check("guidance_rescale", rescale)


def interval_bounds(interval: Interval) -> tuple[float, float] | None:
    """``(sigma_lo, sigma_hi)`` of a guidance interval, an open upper end (None or infinity) as infinity.

    Raises:
        ValueError: one line, for anything but two numbers with 0 <= SIGMA_LO <= SIGMA_HI (SIGMA_HI may be null).
    """
    GUIDANCE_INTERVAL.check("guidance_interval", interval)
    if interval is None:
        return None
    low, high = interval
    return float(low), math.inf if high is None else float(high)


def in_interval(interval: Interval, sigma: float) -> bool:
    """Whether noise level ``sigma`` (infinity at the flow objective's first step) is in ``interval`` (None: always)."""
    bounds = interval_bounds(interval)
    return bounds is None or bounds[0] <= sigma <= bounds[1]


def step_guidance(guidance: float, interval: Interval, sigma: float) -> float:
    """The guidance weight at noise level ``sigma``: ``guidance`` inside ``interval`` (or with none), else 0."""
    return guidance if in_interval(interval, sigma) else 0.0


def noise_levels(objective: Objective, sampler: Sampler) -> list[float]:
    """The noise level sigma of x before each step of ``sampler`` (set), then 0 for the final x_0: ``[n + 1]``.

    sigma is infinite at the flow objective's first step (t = 1).
    """
    return [*objective.sigma(sampler.timesteps.float().cpu()).tolist(), 0.0]


@torch.no_grad()
def denoise(
    denoiser: Denoiser,
    objective: Objective,
    sampler: Sampler,
    labels: Tensor,
    noise: Tensor,
    guidance: float = 0.0,
    generator: torch.Generator | None = None,
    styles: Tensor | None = None,
    guidance_interval: Interval = None,
    guidance_rescale: float = 0.0,
    guide: Denoiser | None = None,
    autoguidance: float = 0.0,
    on_step: StepHook | None = None,
) -> Tensor:
    """Run the reverse process from ``noise`` to x_0 ``[N, C, H, W]``, in the objective's own space (not clamped).

    The steps walk a fresh copy of ``sampler`` (:meth:`~diffusion_lab.diffusion.samplers.Sampler.fresh`), so
    one set sampler serves any number of batches, each from an empty solver history.

    Args:
        denoiser: the network (in eval mode) or any :class:`Denoiser`.
        objective: the objective it was trained with.
        sampler: a sampler fitted to ``objective``, its steps set.
        labels: ``[N]`` class indices, on the device of ``noise``.
        noise: ``[N, C, H, W]`` standard normal starting noise (scaled by the sampler's ``init_noise_sigma``).
        guidance: classifier-free guidance weight w (0 = conditional only).
        generator: RNG of stochastic samplers (on the device of ``noise``).
        styles: ``[N, S]`` normalised style conditions (NaN = not given) of a style-conditioned denoiser.
        guidance_interval: ``(sigma_lo, sigma_hi)``: guide only there (Kynkaanniemi et al. 2024; both guidance
            kinds); None: always; ``sigma_hi`` None or infinity: no upper end.
        guidance_rescale: Lin et al.'s rescale phi in [0, 1] (0: none).
        guide: the guide of autoguidance (in eval mode; same classes, image shape and objective).
        autoguidance: autoguidance weight w_a (0 = none; then ``guide`` is not run).
        on_step: told ``(i, t, x)`` after step i (a second-order sampler's two evaluations of a step count
            apart); the x it returns is the one the loop goes on with.
    """
    check_guidance(guidance, guidance_interval, guidance_rescale, autoguidance)
    if autoguidance > 0 and guide is None:
        raise ValueError("autoguidance needs a guide network: pass guide= (a weaker model of the same data)")
    run = sampler.fresh()
    x = noise * run.init_noise_sigma
    sigmas = noise_levels(objective, run)
    for i, t in enumerate(run.timesteps):
        x_in = run.scale_model_input(x, t)
        time = objective.network_time(t.reshape(1).to(x.device)).expand(len(labels))
        inside = in_interval(guidance_interval, sigmas[i])
        w, w_auto = (guidance, autoguidance) if inside else (0.0, 0.0)
        output = guided_output(denoiser, x_in, time, labels, w, styles, guidance_rescale, guide, w_auto)
        x = run.step(output, t, x, generator=generator)
        if on_step is not None:
            x = on_step(i, t, x)
    return x


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    objective: Objective,
    labels: Tensor,
    sampler: str | Sampler = "auto",
    steps: int | None = None,
    guidance: float = 0.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    image_shape: tuple[int, int, int] | None = None,
    styles: Tensor | None = None,
    guidance_interval: Interval = None,
    guidance_rescale: float = 0.0,
    guide: Denoiser | None = None,
    autoguidance: float = 0.0,
    **sampler_options: object,
) -> Tensor:
    """Generate one image per label on the device of ``labels``: :func:`denoise` with a sampler built by name.

    Args:
        denoiser: the network (in eval mode) or any :class:`Denoiser`.
        objective: the objective it was trained with.
        labels: ``[N]`` class indices.
        sampler: a sampler name (built with ``sampler_options``) or a :class:`Sampler` fitted to ``objective``.
        steps: number of steps (None: the sampler's default, or the steps a given sampler was set to).
        guidance: classifier-free guidance weight w (0 = conditional only).
        noise: ``[N, C, H, W]`` standard normal starting noise; drawn from ``generator`` if None.
        image_shape: ``(C, H, W)`` of the noise drawn when ``noise`` is None.
        generator: RNG for the noise and stochastic steps, for reproducible samples.
        styles: ``[N, S]`` normalised style conditions (NaN = not given) of a style-conditioned denoiser.
        guidance_interval: ``(sigma_lo, sigma_hi)`` to guide in (None: every step; ``sigma_hi`` None: no upper end).
        guidance_rescale: Lin et al.'s guidance rescale phi (0: none).
        guide: the guide of autoguidance (a weaker version of ``denoiser``).
        autoguidance: autoguidance weight w_a (0: none).

    Returns:
        ``[N, C, H, W]`` images in [-1, 1].
    """
    device = labels.device
    built = make_sampler(sampler, objective, **sampler_options)
    built.reset(steps, device=device)
    if noise is None:
        if image_shape is None:
            raise ValueError("sample needs the starting noise or the image_shape to draw it in")
        noise = torch.randn((len(labels), *image_shape), generator=generator, device=device)
    styles = None if styles is None else styles.to(device)
    x = denoise(
        denoiser, objective, built, labels, noise.to(device), guidance=guidance, generator=generator, styles=styles,
        guidance_interval=guidance_interval, guidance_rescale=guidance_rescale, guide=guide, autoguidance=autoguidance,
    )  # fmt: skip
    return x.clamp(-1, 1)
