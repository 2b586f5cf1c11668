"""Classification Accuracy Score (Ravuri & Vinyals 2019): how well generated images teach a classifier.

A classifier with the reference classifier's architecture and recipe
(:func:`~diffusion_lab.evaluation.classifier.fit_classifier`) is trained on generated images only,
labelled with the class they were made for, and its accuracy is measured on the whole real test
set. Samples that look right but lack a class's variety train a classifier that fails on the real
images it never saw the like of, so CAS sees what class accuracy cannot. ``real/cas`` is the same
training on as many real training images: the score a perfect model's samples would reach.

Every classifier takes the reference classifier's number of optimizer steps whatever the set's
size (at 1,000 images a class, about 18 epochs): as long as the reference classifier's first-use training.
"""

from __future__ import annotations

import logging
import time

from torch import Tensor

from diffusion_lab.data.sources import dataset_info, load_arrays
from diffusion_lab.evaluation.classifier import accuracy, fit_classifier, reference_steps, split_images
from diffusion_lab.evaluation.evaluator import balanced_subset, first_per_class

log = logging.getLogger(__name__)


def classification_accuracy_score(
    images: Tensor, labels: Tensor, dataset: str, data_dir: str, seed: int = 0, progress: bool = True, what: str = ""
) -> float:
    """Real test-set accuracy of a classifier trained on ``images`` ``[N, 1, 28, 28]`` in [0, 1] made for ``labels``."""
    started = time.perf_counter()
    steps = reference_steps(dataset)
    desc = f"CAS: classifier on {len(labels)} {what or 'images'}"
    model = fit_classifier(images.float().cpu(), labels.cpu(), dataset, steps, seed=seed, progress=progress, desc=desc)
    score = accuracy(model, *split_images(load_arrays(dataset, data_dir), "test"))
    log.info(
        "CAS of %d %s: %.2f%% on the real test set (%.0f s)",
        len(labels),
        what,
        100 * score,
        time.perf_counter() - started,
    )
    return score


def cas_metrics(
    images: Tensor, labels: Tensor, dataset: str, data_dir: str, per_class: int, seed: int = 0, progress: bool = True
) -> dict[str, float]:
    """``generated/cas`` of the first ``per_class`` images of each class and ``real/cas`` of as many training images.

    Raises:
        ValueError: when a class has fewer than ``per_class`` generated images.
    """
    what = "generated images: lower cas_per_class or generate more"
    chosen = first_per_class(labels, per_class, dataset_info(dataset).num_classes, "cas_per_class", what)
    real = balanced_subset(*split_images(load_arrays(dataset, data_dir), "train"), per_class, seed)
    return {
        "generated/cas": classification_accuracy_score(
            images[chosen], labels[chosen], dataset, data_dir, seed, progress, "generated images"
        ),
        "real/cas": classification_accuracy_score(*real, dataset, data_dir, seed, progress, "real training images"),
    }
