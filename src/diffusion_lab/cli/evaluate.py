"""``diffusion-lab-evaluate``: score a checkpoint's samples, each number beside the same number on real images.

Generates ``num_per_class`` images of every class, then writes into ``output``:

* ``metrics.json``: flat keys, ``generated/*`` and ``real/*`` (classifier accuracy, FID, KID,
  Inception FID, CLIP score, CLIP zero-shot accuracy, CLIP "good" fraction), per-class keys such
  as ``generated/classifier_accuracy/7``, the settings, ``clip/status`` and timings;
* ``report.md`` with the tables, the grids ``generated.png`` and ``real.png`` and the per-class
  bar chart ``per_class.png``;
* ``samples.npz``: every generated image (``images`` uint8 [N, 28, 28], ``labels`` int64 [N]).

A style-conditioned checkpoint is also asked for styles (``style_control``): as many images again, each
with a slant and a thickness drawn independently and uniformly between the training set's 10th and
90th percentiles; ``style/*`` then holds the correlation, mean absolute error and bias of the
attributes measured on the samples against the asked ones, and ``style/classifier_accuracy`` the class
accuracy of these styled samples (``generated/*`` are sampled without styles).

Every file is written through a temporary name, and only after all metrics are computed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import Tensor
from torchvision.utils import make_grid

from diffusion_lab.checkpointing import atomic_write_text
from diffusion_lab.classifier import ClassifierError
from diffusion_lab.cli import checkpoint_path, fail, hydra_app, resolve_device
from diffusion_lab.clip_score import clip_from_config
from diffusion_lab.datasets import DataError, dataset_info
from diffusion_lab.diffusion_module import DiffusionModule
from diffusion_lab.evaluation import Evaluator, class_keys, per_class
from diffusion_lab.figures import save_figure
from diffusion_lab.generation import check_settings, generate, load_model, save_png, save_samples, trained_dataset
from diffusion_lab.inception import InceptionWeightsError
from diffusion_lab.samplers import Sampler
from diffusion_lab.styles import STYLE_NAMES, STYLE_UNITS, control_metrics, measure, uniform_requests

log = logging.getLogger(__name__)

#: Images per class in the report's grids.
GRID_COLUMNS = 10
#: The overall metrics of the report's main table, in order, with their direction.
SUMMARY = (
    ("classifier_accuracy", "higher is better"),
    ("fid", "lower is better (classifier features)"),
    ("kid", "lower is better (classifier features)"),
    ("inception_fid", "lower is better (InceptionV3 pool features)"),
    ("clip_score", "higher is better"),
    ("clip_zero_shot_accuracy", "higher is better"),
    ("clip_good_fraction", "higher is better"),
)


def per_class_chart(metrics: dict[str, float], dataset: str) -> Figure:
    """Bars of per-class classifier accuracy (and CLIP zero-shot accuracy when scored), generated vs real."""
    keys, names = class_keys(dataset), dataset_info(dataset).class_names
    panels = [("classifier_accuracy", "classifier accuracy")]
    if "generated/clip_zero_shot_accuracy" in metrics:
        panels.append(("clip_zero_shot_accuracy", "CLIP zero-shot accuracy"))
    fig = Figure(figsize=(10, 3.2 * len(panels)), layout="constrained")
    x = np.arange(len(keys))
    for ax, (name, title) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels, strict=True):
        for offset, prefix, color in ((-0.2, "generated", "tab:blue"), (0.2, "real", "tab:gray")):
            values = [v if v is not None else np.nan for v in per_class(metrics, prefix, name, keys)]
            ax.bar(x + offset, values, width=0.4, label=f"{prefix} ({metrics[f'{prefix}/{name}']:.1%})", color=color)
        ax.set_xticks(x, names, rotation=30 if dataset != "mnist" else 0)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Per class: generated ({metrics['settings']}) vs real test images")
    return fig


def _grid(images: Tensor, per_class_count: int) -> Tensor:
    """The first ``GRID_COLUMNS`` images of each class, one class a row."""
    columns = min(GRID_COLUMNS, per_class_count)
    rows = images.view(-1, per_class_count, *images.shape[1:])[:, :columns]
    return make_grid(rows.flatten(0, 1), nrow=columns, padding=2, pad_value=1.0)


def _fmt(value: float | None, name: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if name.endswith(("accuracy", "fraction")) else f"{value:.3g}"


def report_markdown(metrics: dict[str, Any], dataset: str) -> str:
    """``report.md``: settings, the overall table, the per-class table and the figures."""
    lines = [
        f"# Evaluation of {metrics['ckpt']}",
        "",
        f"{dataset}, {metrics['num_per_class']} images per class; {metrics['settings']}.",
        f"Reference classifier: {metrics['classifier/test_accuracy']:.2%} on the full test set. "
        f"CLIP: {metrics['clip/status']}.",
        "`real` scores real images the same way: accuracy and CLIP on held-out test images, distances of "
        "as many training images against the same test reference (the floor a perfect model would reach).",
        "",
        "| metric | generated | real | |",
        "|---|---|---|---|",
    ]
    for name, direction in SUMMARY:
        if f"generated/{name}" in metrics:
            gen, real = metrics[f"generated/{name}"], metrics.get(f"real/{name}")
            lines.append(f"| {name} | {_fmt(gen, name)} | {_fmt(real, name)} | {direction} |")
    keys, names = class_keys(dataset), dataset_info(dataset).class_names
    shown = ("classifier_accuracy", "clip_score", "clip_zero_shot_accuracy")
    columns = [c for c in shown if f"generated/{c}" in metrics]
    header = " | ".join(f"{c} gen | {c} real" for c in columns)
    lines += ["", "## Per class", "", f"| class | {header} |", "|---" * (1 + 2 * len(columns)) + "|"]
    for key, name in zip(keys, names, strict=True):
        cells = " | ".join(
            f"{_fmt(metrics.get(f'generated/{c}/{key}'), c)} | {_fmt(metrics.get(f'real/{c}/{key}'), c)}"
            for c in columns
        )
        lines.append(f"| {name} | {cells} |")
    if "style/classifier_accuracy" in metrics:
        lines += [
            "",
            "## Style control",
            "",
            "Each styled sample asked for a slant and a thickness drawn uniformly between the training set's "
            "10th and 90th percentiles; both are measured again on the sample.",
            "",
            "| attribute | correlation (asked, measured) | mean abs. error | bias |",
            "|---|---|---|---|",
        ]
        for name in STYLE_NAMES:
            unit = STYLE_UNITS[name]
            lines.append(
                f"| {name} | {metrics[f'style/{name}_correlation']:.3f} | {metrics[f'style/{name}_mae']:.2f} {unit} "
                f"| {metrics[f'style/{name}_bias']:+.2f} {unit} |"
            )
        lines += [
            "",
            f"Class accuracy with styles asked for: {metrics['style/classifier_accuracy']:.2%}; "
            f"without: {metrics['generated/classifier_accuracy']:.2%}.",
        ]
    lines += [
        "",
        "![per-class accuracy](per_class.png)",
        "",
        "## Generated (first 10 per class)",
        "",
        "![generated](generated.png)",
        "",
        "## Real test images",
        "",
        "![real](real.png)",
        "",
        f"Sampling took {metrics['time/sampling_s']:.1f} s, the metrics {metrics['time/metrics_s']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Generate, score and write the report; returns the metrics as written to ``metrics.json``."""
    started = time.perf_counter()
    if cfg.num_per_class < 2:
        raise ValueError(f"num_per_class must be at least 2 (FID needs two images a class), got {cfg.num_per_class}")
    if not isinstance(cfg.style_control, bool):
        raise ValueError(f"style_control must be true or false, got {cfg.style_control!r}")
    device = resolve_device(cfg.device)
    path = checkpoint_path(cfg.ckpt)
    model = load_model(path, device=device)
    dataset = trained_dataset(model)
    if dataset is None:
        raise ValueError(f"{path} does not record its dataset (data.name): it was not written by diffusion-lab-train")
    # Every setting is checked before the minutes of work below.
    sampler = instantiate(cfg.sampler, schedule=model.schedule)
    sampler.set_timesteps(cfg.steps)
    check_settings(device, cfg.guidance, cfg.batch_size, str(cfg.precision))
    clip, clip_status = clip_from_config(cfg.clip, dataset, device)
    evaluator = Evaluator(
        dataset, cfg.paths.data_dir, cfg.num_per_class, clip=clip, inception=cfg.inception, device=device,
        seed=cfg.reference_seed,
    )  # fmt: skip

    labels = torch.arange(model.unet.num_classes).repeat_interleave(cfg.num_per_class)
    sampling_started = time.perf_counter()
    images = generate(
        model, labels, seed=cfg.seed, sampler=sampler, steps=cfg.steps, guidance=cfg.guidance,
        batch_size=cfg.batch_size, precision=str(cfg.precision),
    )  # fmt: skip
    sampling_s = time.perf_counter() - sampling_started
    metrics_started = time.perf_counter()
    scores = {**evaluator.score(images, labels, "generated"), **evaluator.real_metrics()}
    if cfg.style_control and model.style_conditioning:
        scores.update(style_control(model, evaluator, labels, sampler, cfg))
    elif cfg.style_control:
        log.info("Style control skipped: the checkpoint was trained without styles (model.style_conditioning)")
    metrics: dict[str, Any] = {
        "ckpt": str(path),
        "dataset": dataset,
        "num_per_class": cfg.num_per_class,
        "sampler": type(sampler).__name__,
        "steps": sampler.num_steps,
        "guidance": float(cfg.guidance),
        "seed": cfg.seed,
        "precision": str(cfg.precision),
        "settings": f"{type(sampler).__name__} {sampler.num_steps} steps, w={cfg.guidance:g}, seed {cfg.seed}",
        "classifier/test_accuracy": evaluator.classifier_test_accuracy,
        "clip/status": clip_status,
        **scores,
        "time/sampling_s": sampling_s,
        "time/metrics_s": time.perf_counter() - metrics_started,
    }
    metrics["time/total_s"] = time.perf_counter() - started

    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    save_figure(per_class_chart(metrics, dataset), output / "per_class.png")
    save_png(_grid(images, cfg.num_per_class), output / "generated.png")
    save_png(_grid(evaluator.reference[0], cfg.num_per_class), output / "real.png")
    save_samples(images, labels, output / "samples", nrow=cfg.num_per_class)
    atomic_write_text(output / "report.md", report_markdown(metrics, dataset))
    atomic_write_text(output / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    log.info(
        "generated: classifier accuracy %.2f%% (real %.2f%%), FID %.2f (floor %.2f)",
        100 * metrics["generated/classifier_accuracy"], 100 * metrics["real/classifier_accuracy"],
        metrics["generated/fid"], metrics["real/fid"],
    )  # fmt: skip
    log.info("Wrote %s and %s in %.0f s", output / "metrics.json", output / "report.md", metrics["time/total_s"])
    return metrics


def style_control(
    model: DiffusionModule, evaluator: Evaluator, labels: Tensor, sampler: Sampler, cfg: DictConfig
) -> dict[str, float]:
    """``style/*``: sample ``labels`` with uniformly drawn style requests, measure the styles, score the class."""
    requested = uniform_requests(model.require_style_stats(), len(labels), seed=cfg.seed)
    started = time.perf_counter()
    images = generate(
        model, labels, seed=cfg.seed, sampler=sampler, steps=cfg.steps, guidance=cfg.guidance,
        batch_size=cfg.batch_size, precision=str(cfg.precision), style=requested,
    )  # fmt: skip
    metrics = control_metrics(requested, measure(images))
    metrics["style/classifier_accuracy"] = evaluator.accuracy(images, labels, "style")["style/classifier_accuracy"]
    metrics["time/style_s"] = time.perf_counter() - started
    log.info(
        "style control: correlation asked/measured slant %.3f, thickness %.3f; class accuracy %.2f%% with styles",
        metrics["style/slant_correlation"], metrics["style/thickness_correlation"],
        100 * metrics["style/classifier_accuracy"],
    )  # fmt: skip
    return metrics


@hydra_app("evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a bad setting, checkpoint or missing data ends the run with one line."""
    try:
        run(cfg)
    except (InstantiationException, ValueError, DataError, InceptionWeightsError, ClassifierError) as err:
        fail(err)


if __name__ == "__main__":
    main()
