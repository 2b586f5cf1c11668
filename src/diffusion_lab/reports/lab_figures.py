"""The lab figures: the forward process, the noise schedules, the reverse process, guidance and styles.

In a notebook::

    from diffusion_lab import load_model, plot_schedules, guidance_sweep, save_figure
    save_figure(plot_schedules(), "schedules.png")
    model = load_model("outputs/train/.../checkpoints/last.ckpt")
    guidance_sweep(model)           # a matplotlib Figure; shows itself in Jupyter

From the command line, ``diffusion-lab-figures ckpt=PATH output=DIR`` writes every figure as a PNG
(see ``conf/figures.yaml``). Figures are plain :class:`matplotlib.figure.Figure` objects drawn
without pyplot, so nothing global is opened or needs closing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from diffusion_lab.data.labels import Label, label_index
from diffusion_lab.data.styles import LEVEL_PERCENTILES, STYLE_NAMES, STYLE_UNITS, StyleStats, measure
from diffusion_lab.diffusion.objectives import Objective
from diffusion_lab.diffusion.reverse_process import DEFAULT_GUIDANCE, Interval, check_guidance, noise_levels
from diffusion_lab.diffusion.samplers import Sampler
from diffusion_lab.diffusion.schedules import NoiseSchedule, cosine, linear, quadratic
from diffusion_lab.pipeline import ClassConditionalPipeline
from diffusion_lab.reports.images import image_grid
from diffusion_lab.rules import is_int

#: Width and height, in inches, of one 28x28 image cell in the image-grid figures.
CELL_INCHES = 1.15
#: The lab's default noise-progression columns, as fractions of T.
FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
#: Guidance weights of the default guidance sweep.
GUIDANCE_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)


def default_schedules(timesteps: int = 1000) -> list[NoiseSchedule]:
    """The three schedules of the project, each built for ``timesteps`` steps: linear, quadratic, cosine."""
    return [linear(timesteps), quadratic(timesteps), cosine(timesteps)]


def _image_grid(
    rows: int, cols: int, row_labels: Sequence[str], col_titles: Sequence[str], suptitle: str
) -> tuple[Figure, np.ndarray]:
    """An empty figure of ``rows x cols`` image axes with a label left of each row and a title over each column."""
    label_width = 0.25 + 0.07 * max((len(label) for label in row_labels), default=0)
    fig = Figure(figsize=(label_width + CELL_INCHES * cols, 0.6 + CELL_INCHES * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for (r, c), ax in np.ndenumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if r == 0:
            ax.set_title(col_titles[c], fontsize=9)
        if c == 0:
            ax.set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(suptitle, fontsize=11)
    return fig, axes


def _show(ax: Axes, image: Tensor, value_range: tuple[float, float]) -> None:
    """Draw one ``[C, H, W]`` image (C = 1: grayscale over ``value_range``; C = 3: RGB mapped to [0, 1])."""
    image = image.detach().float().cpu()
    low, high = value_range
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    else:
        rgb = ((image - low) / (high - low)).clamp(0, 1).permute(1, 2, 0)
        ax.imshow(rgb.numpy(), interpolation="nearest")


def _as_chw(image: Tensor) -> Tensor:
    """``[H, W]``, ``[C, H, W]`` or ``[1, C, H, W]`` -> ``[C, H, W]`` float."""
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be [1, H, W] or [3, H, W], got shape {list(image.shape)}")
    return image.float()


def show_noise_progression(
    image: Tensor,
    schedules: Sequence[NoiseSchedule] | None = None,
    fractions: Sequence[float] = FRACTIONS,
    seed: int = 0,
    objectives: Sequence[Objective] = (),
) -> Figure:
    """How the forward process q(x_t | x_0) destroys one image under each schedule (and objective).

    One row per schedule, one column per fraction f of T: f = 0 is the clean x_0, f > 0 is x_t at
    ``t = round(f T) - 1``. Every row and column uses the same noise (from ``seed``), so the rows
    differ only by the schedule. Grayscale images are drawn raw on a [-1, 1] gray scale (values
    beyond it saturate), so each panel's array is x_t itself.

    Args:
        image: ``[1, 28, 28]`` (or ``[C, H, W]``) image in [-1, 1].
        schedules: schedules sharing one T (default: linear, quadratic, cosine with T = 1000).
        fractions: fractions of T, each in [0, 1].
        seed: seed of the noise.
        objectives: more rows, each the forward process of an objective at the same fractions of its
            noise range (flow: (1 - f) x_0 + f eps; EDM: log-linear sigma, scaled to unit variance).
    """
    x0 = _as_chw(image)
    schedules = list(schedules) if schedules is not None else default_schedules(1000)
    if not schedules:
        raise ValueError("show_noise_progression needs at least one schedule")
    total = schedules[0].timesteps
    if any(s.timesteps != total for s in schedules):
        raise ValueError(f"schedules must share one T, got {[s.timesteps for s in schedules]}")
    if not fractions or any(not 0 <= f <= 1 for f in fractions):
        raise ValueError(f"fractions must be a non-empty list of numbers in [0, 1], got {list(fractions)}")
    steps = [None if f == 0 else max(round(f * total) - 1, 0) for f in fractions]
    titles = [f"t = {0 if t is None else t} ({f:.0%})" for t, f in zip(steps, fractions, strict=True)]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    fig, axes = _image_grid(
        len(schedules) + len(objectives),
        len(fractions),
        [s.name for s in schedules] + [f"objective\n{o.name}" for o in objectives],
        titles,
        f"Forward process q(x_t | x_0): one image, the same noise, {len(schedules)} schedules (T = {total})",
    )
    for r, schedule in enumerate(schedules):
        schedule = schedule.cpu()
        for c, t in enumerate(steps):
            x_t = x0 if t is None else schedule.q_sample(x0[None], torch.tensor([t]), noise[None])[0]
            _show(axes[r, c], x_t, (-1.0, 1.0))
    for r, objective in enumerate(objectives, start=len(schedules)):
        for c, f in enumerate(fractions):
            _show(axes[r, c], objective.add_noise(x0, f, noise), (-1.0, 1.0))
    return fig


def plot_schedules(timesteps: int = 1000, schedules: Sequence[NoiseSchedule] | None = None) -> Figure:
    """alpha_bar_t and log-SNR log(alpha_bar_t / (1 - alpha_bar_t)) against t, one line per schedule.

    Args:
        timesteps: T of the default schedules (linear, quadratic, cosine); unused when ``schedules`` is given.
        schedules: the schedules to compare, each plotted over its own ``[0, T-1]``.
    """
    schedules = list(schedules) if schedules is not None else default_schedules(timesteps)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_bar, ax_snr = fig.subplots(1, 2)
    for schedule in schedules:
        t = np.arange(schedule.timesteps)
        ax_bar.plot(t, schedule.alphas_cumprod.detach().cpu().numpy(), label=schedule.name)
        ax_snr.plot(t, schedule.log_snr().detach().cpu().numpy(), label=schedule.name)
    ax_bar.set(title="Signal kept: alpha_bar_t", xlabel="timestep t", ylabel="alpha_bar_t", ylim=(-0.02, 1.02))
    ax_snr.set(title="Log signal-to-noise ratio", xlabel="timestep t", ylabel="log(alpha_bar_t / (1 - alpha_bar_t))")
    ax_snr.axhline(0.0, color="0.6", linewidth=0.8, linestyle="--")
    for ax in (ax_bar, ax_snr):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Noise schedules")
    return fig


def _auto(autoguidance: float) -> str:
    """``, autoguidance 1`` for a figure's title; empty without autoguidance."""
    return f", autoguidance {autoguidance:g}" if autoguidance > 0 else ""


@torch.no_grad()
def visualize_generation_steps(
    pipe: ClassConditionalPipeline,
    labels: Tensor | Sequence[Label] | None = None,
    num_snapshots: int = 8,
    sampler: str | Sampler = "auto",
    steps: int | None = None,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int = 0,
    precision: str = "bf16",
    guidance_interval: Interval = None,
    guidance_rescale: float = 0.0,
    autoguidance: float = 0.0,
    **sampler_kwargs: object,
) -> Figure:
    """Snapshots of x_t along the reverse process, from pure noise x_T to the final x_0.

    One row per class, one column per snapshot, taken at evenly spaced points of the sampler's step
    sequence, always including the first (the starting noise) and the last (the sample). The
    starting noise is drawn as the pipeline draws it, so the last
    column is the image ``pipe(labels, seed=seed, ...)`` returns. Panels show x_t mapped
    from [-1, 1] to [0, 1] and clamped.

    Args:
        pipe: a trained model's pipeline (:func:`~diffusion_lab.pipeline.load_model`).
        labels: ``[N]`` class indices, or a list of indices / class names (default: every class once).
        num_snapshots: columns, at least 2 (at most the number of steps + 1 are shown).
        sampler: a sampler name (``auto``, ``ddim``, ``dpm_solver``... built with ``sampler_kwargs``), or a
            :class:`Sampler` fitted to the model's objective.
        steps: sampler steps (None: the sampler's default).
        guidance: classifier-free guidance weight w.
        seed: seed of the starting noise and of stochastic steps.
        precision: ``bf16`` or ``32``, as for :class:`~diffusion_lab.pipeline.ClassConditionalPipeline`.
        guidance_interval: ``(sigma_lo, sigma_hi)`` to guide in (None: every step; ``sigma_hi`` None: no upper end).
        guidance_rescale: guidance rescale phi (0: none).
        autoguidance: autoguidance weight w_a, guided by ``pipe.guide`` (0: none).
    """
    if not is_int(num_snapshots) or num_snapshots < 2:
        raise ValueError(f"num_snapshots must be an integer >= 2 (noise and sample), got {num_snapshots!r}")
    label_idx = pipe.label_tensor(torch.arange(pipe.num_classes) if labels is None else labels)
    built = pipe.sampler(sampler, steps, **sampler_kwargs)
    noise, _ = pipe.starting_noise(len(label_idx), seed)
    sigmas = noise_levels(pipe.model.objective, built)
    # Snapshot k is x after k evaluations (a second-order step's two count apart). A sampler that walks
    # x = x_0 + sigma eps (Euler, EDM: init_noise_sigma > 1) is shown scaled by 1 / sqrt(1 + sigma^2).
    scaled = built.init_noise_sigma > 1
    keep = sorted(
        {round(k) for k in np.linspace(0, built.num_evaluations, min(num_snapshots, built.num_evaluations + 1))}
    )
    snapshots: list[tuple[int, float, Tensor]] = []

    def snapshot(k: int, x: Tensor) -> None:
        if k in keep:
            shown = x.float().cpu() / (1 + sigmas[k] ** 2) ** 0.5 if scaled else x.float().cpu()
            snapshots.append((k, sigmas[k], ((shown + 1) / 2).clamp(0, 1)))

    def on_step_end(
        _: ClassConditionalPipeline, step: int, __: Tensor, tensors: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        snapshot(step + 1, tensors["latents"])
        return tensors

    snapshot(0, noise * built.init_noise_sigma)
    pipe(
        label_idx, seed=seed, sampler=built, guidance=guidance, batch_size=len(label_idx), precision=precision,
        noise=noise, guidance_interval=guidance_interval, guidance_rescale=guidance_rescale, autoguidance=autoguidance,
        callback_on_step_end=on_step_end,
    )  # fmt: skip
    total = built.num_evaluations
    titles = [
        f"sigma = {sigma:.3g}\nstep {k}/{total}" if sigma > 0 else f"x_0 (sample)\nstep {k}/{total}"
        for k, sigma, _ in snapshots
    ]
    names = pipe.class_names
    fig, axes = _image_grid(
        len(label_idx),
        len(snapshots),
        [names[i] for i in label_idx.tolist()],
        titles,
        f"Reverse process, noise to sample: {built.title}, guidance w = {guidance:g}{_auto(autoguidance)}, seed {seed}",
    )
    for c, (_, _, images) in enumerate(snapshots):
        for r in range(len(label_idx)):
            _show(axes[r, c], images[r], (0.0, 1.0))
    return fig


@torch.no_grad()
def guidance_sweep(
    pipe: ClassConditionalPipeline,
    weights: Sequence[float] = GUIDANCE_WEIGHTS,
    num_per_class: int = 4,
    seed: int = 0,
    sampler: str | Sampler = "auto",
    steps: int | None = None,
    precision: str = "bf16",
    guidance_interval: Interval = None,
    guidance_rescale: float = 0.0,
    autoguidance: float = 0.0,
    **sampler_kwargs: object,
) -> Figure:
    """Samples of every class at each classifier-free guidance weight w, from the same noise.

    One panel per weight (titled ``w = ...``), each a grid of every class (rows) x ``num_per_class``
    samples (columns) from the pipeline with the same ``seed``, so only
    w changes between panels. Each panel's array is the ``[H, W, 3]`` grid in [0, 1] with 2 px white padding.

    Args:
        pipe: a trained model's pipeline (:func:`~diffusion_lab.pipeline.load_model`).
        weights: guidance weights, each >= 0 (0 = the plain conditional model).
        num_per_class: samples per class.
        seed: seed of the starting noise (the same for every weight).
        sampler: a sampler name (``auto``, ``ddim``, ``dpm_solver``... built with ``sampler_kwargs``), or a
            :class:`Sampler` fitted to the model's objective.
        steps: sampler steps (None: the sampler's default).
        precision: ``bf16`` or ``32``, as for :class:`~diffusion_lab.pipeline.ClassConditionalPipeline`.
        guidance_interval: ``(sigma_lo, sigma_hi)`` to guide in (None: every step; ``sigma_hi`` None: no upper end).
        guidance_rescale: guidance rescale phi (0: none).
        autoguidance: autoguidance weight w_a of every panel, guided by ``pipe.guide`` (0: none).
    """
    weights = list(weights)
    if not weights:
        raise ValueError("guidance_sweep needs at least one guidance weight")
    for w in weights:
        check_guidance(w, guidance_interval, guidance_rescale, autoguidance)
    if not is_int(num_per_class) or num_per_class <= 0:
        raise ValueError(f"num_per_class must be a positive integer, got {num_per_class!r}")
    names = pipe.class_names
    num_classes = pipe.num_classes
    labels = torch.arange(num_classes).repeat_interleave(num_per_class)
    built = pipe.sampler(sampler, steps, **sampler_kwargs)
    panel_w = 0.35 * num_per_class + 0.2
    label_width = 0.25 + 0.07 * max(len(n) for n in names)
    fig = Figure(
        figsize=(label_width + (panel_w + 0.15) * len(weights), 0.35 * num_classes + 1.0), layout="constrained"
    )
    axes = fig.subplots(1, len(weights), squeeze=False)[0]
    size = pipe.image_shape[1]
    cell = size + 2
    for i, (ax, w) in enumerate(zip(axes, weights, strict=True)):
        images = pipe(
            labels, seed=seed, sampler=built, guidance=w, precision=precision,
            guidance_interval=guidance_interval, guidance_rescale=guidance_rescale, autoguidance=autoguidance,
        )  # fmt: skip
        grid = image_grid(images, num_per_class)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"w = {w:g}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([2 + size / 2 + cell * r for r in range(num_classes)])
        ax.set_yticklabels(names if i == 0 else [], fontsize=9)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle(
        f"Classifier-free guidance: {built.title}{_auto(autoguidance)}, the same noise for every w (seed {seed})",
        fontsize=11,
    )
    return fig


def style_distributions(styles: Tensor, stats: StyleStats, dataset: str) -> Figure:
    """Histograms of each style attribute over a training set ``[N, 2]``, with its named levels marked."""
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    axes = fig.subplots(1, len(STYLE_NAMES))
    for i, (ax, name) in enumerate(zip(axes, STYLE_NAMES, strict=True)):
        attribute = stats.attributes[name]
        values = styles[:, i].double().numpy()
        low, high = attribute.percentiles[1], attribute.percentiles[99]
        ax.hist(values, bins=80, range=(low - 0.1 * (high - low), high + 0.1 * (high - low)), color="0.6")
        for level, percentile in LEVEL_PERCENTILES.items():
            value = attribute.percentiles[percentile]
            ax.axvline(value, color="C3", lw=1)
            ax.annotate(f"{level}\n{value:.1f}", (value, 1.0), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom", fontsize=8, color="C3")  # fmt: skip
        ax.set_xlabel(f"{name} ({STYLE_UNITS[name]})")
        ax.set_ylabel("training images" if i == 0 else "")
        ax.set_title(f"mean {attribute.mean:.2f}, std {attribute.std:.2f}", fontsize=9, pad=22)
    fig.suptitle(f"Style attributes of the {dataset} training split ({len(styles):,} images)", fontsize=11)
    return fig


@torch.no_grad()
def style_grid(
    pipe: ClassConditionalPipeline,
    label: Label = 7,
    slants: Sequence[float | str] = (-30, -15, 0, 15, 30),
    thicknesses: Sequence[float | str] = ("thin", "regular", "bold"),
    seed: int = 0,
    sampler: str | Sampler = "auto",
    steps: int | None = None,
    guidance: float = DEFAULT_GUIDANCE,
    precision: str = "bf16",
    guidance_interval: Interval = None,
    guidance_rescale: float = 0.0,
    autoguidance: float = 0.0,
    **sampler_kwargs: object,
) -> Figure:
    """One class drawn at every slant (columns) and thickness (rows), all from the same starting noise.

    Under each image are its slant and thickness measured again (``diffusion_lab.data.styles``), so the
    figure shows how closely the model follows what was asked.

    Args:
        pipe: a style-conditioned model's pipeline (``model.style_conditioning=true``).
        label: the class, an index or a name.
        slants: degrees or named levels (``left``, ``upright``, ``right``, ``low``, ``medium``, ``high``).
        thicknesses: pixels or named levels (``thin``, ``regular``, ``bold``, ``low``, ``medium``, ``high``).
        seed: seed of the starting noise, the same in every cell.
        sampler: a sampler name (``auto``, ``ddim``, ``dpm_solver``...), or a :class:`Sampler`.
        steps: sampler steps (None: the sampler's default).
        guidance: classifier-free guidance weight w.
        precision: ``bf16`` or ``32``, as for :class:`~diffusion_lab.pipeline.ClassConditionalPipeline`.
        guidance_interval: ``(sigma_lo, sigma_hi)`` to guide in (None: every step; ``sigma_hi`` None: no upper end).
        guidance_rescale: guidance rescale phi (0: none).
        autoguidance: autoguidance weight w_a, guided by ``pipe.guide`` (0: none).
    """
    stats = pipe.style_stats
    slants, thicknesses = list(slants), list(thicknesses)
    if not slants or not thicknesses:
        raise ValueError("style_grid needs at least one slant and one thickness")
    index = label_index(label, pipe.class_names)
    asked = torch.tensor([[stats.value("slant", s), stats.value("thickness", t)] for t in thicknesses for s in slants])
    built = pipe.sampler(sampler, steps, **sampler_kwargs)
    noise, _ = pipe.starting_noise(1, seed)
    images = pipe(
        [index] * len(asked), seed=seed, sampler=built, guidance=guidance, precision=precision,
        style=asked, noise=noise.expand(len(asked), -1, -1, -1), guidance_interval=guidance_interval,
        guidance_rescale=guidance_rescale, autoguidance=autoguidance,
    )  # fmt: skip
    measured = measure(images)
    name = pipe.class_names[index]
    fig, axes = _image_grid(
        len(thicknesses),
        len(slants),
        [f"thickness\n{t}" + ("" if isinstance(t, str) else " px") for t in thicknesses],
        [f"slant {s}" + ("" if isinstance(s, str) else "°") for s in slants],
        f"{name}: slant across, thickness down ({built.title}, w = {guidance:g}{_auto(autoguidance)}, seed {seed})",
    )
    for k, ax in enumerate(axes.flat):
        _show(ax, images[k], (0.0, 1.0))
        ax.set_xlabel(f"{measured[k, 0]:+.0f}°, {measured[k, 1]:.1f} px", fontsize=8)
    return fig
