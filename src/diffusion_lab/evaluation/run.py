"""Score a checkpoint's samples, each number beside the same number on real images: what ``diffusion-lab-evaluate``
runs.

Generates ``num_per_class`` images of every class (or reads them from ``samples``, a ``samples.npz``
written earlier), then writes into ``output``:

* ``metrics.json``: flat keys, ``generated/*`` and ``real/*`` (classifier accuracy, FID, KID,
  Inception FID, precision, recall, density, coverage, CLIP score, CLIP zero-shot accuracy, CLIP
  "good" fraction, and with ``cas=true`` the Classification Accuracy Score), per-class keys such
  as ``generated/classifier_accuracy/7`` or ``generated/recall/7``, the settings, ``clip/status`` and
  the time of each metric;
* ``report.md`` with the tables, the grids ``generated.png`` and ``real.png`` and the per-class
  bar chart ``per_class.png``;
* ``samples.npz``: every scored image (``images`` uint8 [N, 28, 28], ``labels`` int64 [N], and ``meta``:
  the dataset and the settings, which ``samples=`` checks).

A style-conditioned checkpoint is also asked for styles (``style_control``): as many images again, each
with a slant and a thickness drawn independently and uniformly between the training set's 10th and
90th percentiles; ``style/*`` then holds the correlation, mean absolute error and bias of the
attributes measured on the samples against the asked ones, and ``style/classifier_accuracy`` the class
accuracy of these styled samples (``generated/*`` are sampled without styles); ``style/class_aware/*``
the same for as many images again asked for styles between their own class's percentiles.

``ema_length=SIGMA_REL`` samples with the weights of that relative EMA length, synthesised from the run's
post-hoc EMA snapshots (``ema_length`` and ``ema_step`` in ``metrics.json``; null: the checkpoint's own EMA).

Every file is written whole or not at all (through a hidden partial file), and only after all metrics are
computed; ``metrics.json`` last.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from diffusion_lab.evaluation.cas import cas_metrics
from diffusion_lab.evaluation.clip import clip_from_config
from diffusion_lab.evaluation.evaluator import Evaluator, first_per_class
from diffusion_lab.evaluation.style_control import style_control
from diffusion_lab.models.checkpoints import checkpoint_file
from diffusion_lab.pipeline import ClassConditionalPipeline, load_model
from diffusion_lab.reports.evaluation_report import GRID_COLUMNS, per_class_chart, report_markdown
from diffusion_lab.reports.images import class_grid, load_samples, save_png, save_samples
from diffusion_lab.reports.render import save_figure
from diffusion_lab.sampling_settings import guidance_settings, resolve_device, settings_text
from diffusion_lab.utils.files import atomic_write_text, check_writable

log = logging.getLogger(__name__)


def _loaded(
    cfg: DictConfig, pipe: ClassConditionalPipeline, record: dict[str, Any]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The first ``num_per_class`` images and labels of each class of ``samples``, and the whole file's.

    ``record`` takes the settings the file records it was sampled with.
    """
    pool_images, pool_labels, meta = load_samples(cfg.samples, pipe.dataset)
    what = f"images in samples={cfg.samples}: lower num_per_class"
    chosen = first_per_class(pool_labels, cfg.num_per_class, pipe.num_classes, "num_per_class", what)
    record.update({key: meta[key] for key in record if key in meta})
    record["settings"] = f"samples {cfg.samples} ({record['settings']})"
    return pool_images[chosen], pool_labels[chosen], pool_images, pool_labels


def _cas(
    cfg: DictConfig, pipe: ClassConditionalPipeline, sampling: dict[str, Any], images: Tensor, labels: Tensor
) -> dict[str, float]:
    """``generated/cas`` and ``real/cas``: from the evaluated set when it has ``cas_per_class`` of each class,
    else from as many images sampled for it."""
    if int(torch.bincount(labels, minlength=pipe.num_classes).min()) < cfg.cas_per_class:
        log.info("CAS: sampling %d images per class to train on", cfg.cas_per_class)
        labels = torch.arange(pipe.num_classes).repeat_interleave(cfg.cas_per_class)
        images = pipe(labels, seed=cfg.seed, **sampling)
    return cas_metrics(images, labels, pipe.dataset, cfg.paths.data_dir, cfg.cas_per_class, seed=cfg.reference_seed)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Generate (or load), score and write the report; returns the metrics as written to ``metrics.json``."""
    started = time.perf_counter()
    output = check_writable(cfg.output)
    device = resolve_device(cfg.device)
    path = checkpoint_file(cfg.ckpt)
    pipe = load_model(path, device=device, guide=cfg.get("guide"), ema_length=cfg.get("ema_length"))
    dataset = pipe.dataset
    if dataset is None:
        raise ValueError(f"{path} does not record its dataset (data.name): it was not written by diffusion-lab-train")
    # Every setting is checked before the minutes of work below.
    sampler = pipe.sampler(instantiate(cfg.sampler)(objective=pipe.model.objective), cfg.steps)
    guidance = guidance_settings(cfg, pipe)
    pipe.check_settings(cfg.guidance, cfg.batch_size, str(cfg.precision), **guidance)
    record: dict[str, Any] = {
        "ckpt": str(path),
        "dataset": dataset,
        "objective": pipe.model.objective.name,
        "sampler": sampler.name,
        "steps": sampler.num_steps,
        "network_evaluations": sampler.num_evaluations,
        "guidance": float(cfg.guidance),
        "guidance_interval": guidance["guidance_interval"],
        "guidance_rescale": guidance["guidance_rescale"],
        "autoguidance": guidance["autoguidance"],
        "guide": pipe.guide.source if guidance["autoguidance"] > 0 else None,
        "seed": cfg.seed,
        "precision": str(cfg.precision),
        "ema_length": None if pipe.posthoc_ema is None else pipe.posthoc_ema.sigma_rel,
        "ema_step": None if pipe.posthoc_ema is None else pipe.posthoc_ema.step,
        "settings": settings_text(
            sampler, cfg.guidance, guidance["guidance_interval"], cfg.seed, guidance["autoguidance"]
        ),
    }
    if pipe.posthoc_ema is not None:
        record["settings"] += f", {pipe.posthoc_ema}"
    loaded = _loaded(cfg, pipe, record) if cfg.samples else None
    clip, clip_status = clip_from_config(cfg.clip, dataset, device)
    evaluator = Evaluator(
        dataset, cfg.paths.data_dir, cfg.num_per_class, clip=clip, inception=cfg.inception, device=device,
        seed=cfg.reference_seed,
    )  # fmt: skip

    sampling = {
        "sampler": sampler, "guidance": cfg.guidance, "batch_size": cfg.batch_size, "precision": str(cfg.precision),
        **guidance,
    }  # fmt: skip
    sampling_started = time.perf_counter()
    if loaded is None:
        labels = torch.arange(pipe.num_classes).repeat_interleave(cfg.num_per_class)
        images = pool_images = pipe(labels, seed=cfg.seed, **sampling)
        pool_labels = labels
    else:
        images, labels, pool_images, pool_labels = loaded
    sampling_s = time.perf_counter() - sampling_started
    metrics_started = time.perf_counter()
    scores = evaluator.score(images, labels, "generated")
    timings = dict(evaluator.timings)
    scores.update(evaluator.real_metrics())
    times = {f"time/{n}_s": timings.get(n, 0) + evaluator.timings.get(n, 0) for n in {**timings, **evaluator.timings}}
    if cfg.cas:
        cas_started = time.perf_counter()
        scores.update(_cas(cfg, pipe, sampling, pool_images, pool_labels))
        times["time/cas_s"] = time.perf_counter() - cas_started
    if cfg.style_control and pipe.model.style_conditioning:
        scores.update(style_control(pipe, evaluator, labels, cfg.paths.data_dir, seed=cfg.seed, **sampling))
    elif cfg.style_control:
        log.info("Style control skipped: the checkpoint was trained without styles (model.style_conditioning)")
    metrics: dict[str, Any] = {
        **record,
        "num_per_class": cfg.num_per_class,
        "reference_images": len(evaluator.reference[1]),
        "samples": str(cfg.samples) if cfg.samples else None,
        "classifier/test_accuracy": evaluator.classifier_test_accuracy,
        "clip/status": clip_status,
        **scores,
        "time/sampling_s": sampling_s,
        **times,
        "time/metrics_s": time.perf_counter() - metrics_started,
    }
    metrics["time/total_s"] = time.perf_counter() - started

    save_figure(per_class_chart(metrics, dataset), output / "per_class.png")
    save_png(class_grid(images, cfg.num_per_class, GRID_COLUMNS), output / "generated.png")
    columns = min(GRID_COLUMNS, cfg.num_per_class)
    shown = first_per_class(evaluator.reference[1], columns, pipe.num_classes, "num_per_class", "test images")
    save_png(class_grid(evaluator.reference[0][shown], columns, columns), output / "real.png")
    save_samples(images, labels, output / "samples", nrow=cfg.num_per_class, meta=record)
    atomic_write_text(output / "report.md", report_markdown(metrics, dataset))
    atomic_write_text(output / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    log.info(
        "generated: classifier accuracy %.2f%% (real %.2f%%), FID %.2f (floor %.2f), precision %.3f (%.3f), "
        "recall %.3f (%.3f)",
        100 * metrics["generated/classifier_accuracy"], 100 * metrics["real/classifier_accuracy"],
        metrics["generated/fid"], metrics["real/fid"], metrics["generated/precision"], metrics["real/precision"],
        metrics["generated/recall"], metrics["real/recall"],
    )  # fmt: skip
    log.info("Wrote %s and %s in %.0f s", output / "metrics.json", output / "report.md", metrics["time/total_s"])
    return metrics
