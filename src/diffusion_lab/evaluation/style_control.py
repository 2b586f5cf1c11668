"""Style control: how closely a style-conditioned model draws the slant and thickness it is asked for."""

from __future__ import annotations

import logging
import time

from torch import Tensor

from diffusion_lab.data.sources import load_arrays
from diffusion_lab.data.styles import class_requests, control_metrics, measure, uniform_requests
from diffusion_lab.evaluation.classifier import split_images
from diffusion_lab.evaluation.evaluator import Evaluator
from diffusion_lab.pipeline import ClassConditionalPipeline

log = logging.getLogger(__name__)


def style_control(
    pipe: ClassConditionalPipeline,
    evaluator: Evaluator,
    labels: Tensor,
    data_dir: str,
    seed: int = 0,
    **sampling: object,
) -> dict[str, float]:
    """``style/*``: sample ``labels`` with drawn style requests, measure the styles, score the class.

    Each image asks for a slant and a thickness drawn independently and uniformly between the training
    set's 10th and 90th percentiles (seeded by ``seed``): ``style/slant_correlation``... Then as many
    again with class-aware requests, between the 10th and 90th percentiles of the image's own class in
    the training split: ``style/class_aware/slant_correlation``... ``sampling`` are the pipeline's other
    settings (sampler, steps, guidance, batch size, precision).
    """
    requested = uniform_requests(pipe.style_stats, len(labels), seed=seed)
    started = time.perf_counter()
    images = pipe(labels, seed=seed, style=requested, **sampling)
    metrics = control_metrics(requested, measure(images))
    metrics["style/classifier_accuracy"] = evaluator.accuracy(images, labels, "style")["style/classifier_accuracy"]
    train_images, train_labels = split_images(load_arrays(evaluator.dataset, data_dir), "train")
    aware = class_requests(measure(train_images), train_labels, labels, seed=seed)
    metrics.update(
        control_metrics(aware, measure(pipe(labels, seed=seed, style=aware, **sampling)), "style/class_aware")
    )
    metrics["time/style_s"] = time.perf_counter() - started
    log.info(
        "style control: correlation asked/measured slant %.3f (class-aware %.3f), thickness %.3f (%.3f); "
        "class accuracy %.2f%% with styles",
        metrics["style/slant_correlation"], metrics["style/class_aware/slant_correlation"],
        metrics["style/thickness_correlation"], metrics["style/class_aware/thickness_correlation"],
        100 * metrics["style/classifier_accuracy"],
    )  # fmt: skip
    return metrics
