"""Sample-quality metrics of generated images, each beside the same metric on real images.

An :class:`Evaluator` holds, for one dataset, a class-balanced *reference* sample of real test
images (all of a class the test set has too few of) and a class-balanced sample of real training
images, and scores any set of images of requested classes with:

* ``classifier_accuracy``: the fraction the held-out reference classifier
  (:mod:`diffusion_lab.evaluation.classifier`) reads as the requested class, overall and per class;
* ``fid`` and ``kid`` (torchmetrics) against the reference, in that classifier's 128-d
  penultimate feature space;
* ``precision``, ``recall``, ``density`` and ``coverage`` in the same features
  (:mod:`diffusion_lab.evaluation.fidelity_variety`), overall and per class: fidelity and variety apart;
* ``inception_fid``: the standard FID with InceptionV3 pool features (offline weights, see
  :mod:`diffusion_lab.evaluation.inception`);
* the CLIP metrics of :mod:`diffusion_lab.evaluation.clip`, when a CLIP model is given.

:meth:`Evaluator.real_metrics` scores real images the same way: accuracy and CLIP on the held-out
reference images, and FID/KID/precision/recall/density/coverage of the training sample against the
reference, the floor that two independent real samples of this size reach. Distances depend on the
sample size, so compare numbers only at equal ``num_per_class``.
"""

from __future__ import annotations

import functools
import logging
import pickle
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from diffusion_lab.data.labels import class_keys
from diffusion_lab.data.sources import load_arrays
from diffusion_lab.evaluation.classifier import ReferenceClassifier, load_classifier, split_images
from diffusion_lab.evaluation.clip import ClipScorer
from diffusion_lab.evaluation.clip import summarize as summarize_clip
from diffusion_lab.evaluation.fidelity_variety import K, fidelity_variety
from diffusion_lab.evaluation.inception import inception_weights
from diffusion_lab.rules import FID_PER_CLASS
from diffusion_lab.utils.files import atomic_write

log = logging.getLogger(__name__)
# KID keeps every feature (128-d, a few thousand images here), and the Inception FID's cached
# reference statistics are loaded rather than updated: both warnings are expected.
warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")

#: Bumped when the cached Inception statistics would change.
CACHE_VERSION = 1


def balanced_subset(
    images: Tensor, labels: Tensor, per_class: int, seed: int = 0, whole_short_classes: bool = False
) -> tuple[Tensor, Tensor]:
    """``per_class`` random images of every class, class by class (the order generated sets come in).

    A class with fewer images is refused, or with ``whole_short_classes`` taken whole (MNIST's test
    set has 892 fives: a reference of 1,000 per class holds all of them).
    """
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for index in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == index).squeeze(1)
        if len(members) < per_class and not whole_short_classes:
            raise ValueError(f"num_per_class={per_class} but class {index} has {len(members)} real images")
        picks.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    chosen = torch.cat(picks)
    return images[chosen], labels[chosen]


def first_per_class(labels: Tensor, per_class: int, num_classes: int, key: str, what: str) -> Tensor:
    """Indices of the first ``per_class`` entries of every class, class by class.

    Raises:
        ValueError: naming ``key=per_class`` and the first class with fewer ``what`` (e.g. "generated images").
    """
    picks = []
    for index in range(num_classes):
        members = torch.nonzero(labels == index).squeeze(1)
        if len(members) < per_class:
            raise ValueError(f"{key}={per_class} but class {index} has {len(members)} {what}")
        picks.append(members[:per_class])
    return torch.cat(picks)


class _GivenFeatures(nn.Identity):
    """The feature "extractor" of the FID and KID metrics: the evaluator computes the classifier's features of a set
    once and passes them as the metrics' images, as it passes them to the accuracy and precision/recall."""

    num_features = ReferenceClassifier.FEATURE_DIM  # read by torchmetrics instead of a dummy forward pass


def _stats(metric: FrechetInceptionDistance, which: str) -> dict[str, Tensor]:
    """The running feature statistics of one side (``real`` or ``fake``) of a FID metric."""
    return {k: getattr(metric, f"{which}_features_{k}").clone() for k in ("sum", "cov_sum", "num_samples")}


def _set_stats(metric: FrechetInceptionDistance, which: str, stats: dict[str, Tensor]) -> None:
    for key, value in stats.items():
        setattr(metric, f"{which}_features_{key}", value.to(metric.device))
    metric.orig_dtype = torch.float32  # compute() casts to the dtype update() saw; the features are float32


def _rgb_uint8(images: Tensor) -> Tensor:
    """``[N, 1, H, W]`` in [0, 1] -> ``[N, 3, H, W]`` uint8, as torch-fidelity's Inception takes them."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)


class Evaluator:
    """Scores sets of images of requested classes against one dataset's real images.

    Args:
        dataset: ``mnist`` or ``fashion_mnist``.
        data_dir: prepared data, the classifier cache and the Inception weights.
        num_per_class: size of the real reference (and training) sample per class; a class the test set
            has fewer of is in the reference whole, with a warning.
        clip: a :class:`ClipScorer` for the dataset, or None to skip the CLIP metrics.
        inception: also compute the standard Inception FID (slower: 299 x 299 inputs).
        device: where the classifier and Inception run.
        seed: which real images make up the samples.
        progress: show a progress bar while the classifier trains on first use.
    """

    def __init__(
        self,
        dataset: str,
        data_dir: str,
        num_per_class: int,
        clip: ClipScorer | None = None,
        inception: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        FID_PER_CLASS.check("num_per_class", num_per_class)
        self.dataset = dataset
        self.keys = class_keys(dataset)
        self.clip = clip
        self.device = torch.device(device)
        arrays = load_arrays(dataset, data_dir)

        self.num_per_class = num_per_class
        #: The held-out test images everything is compared with: ``num_per_class`` of each class, or
        #: all of a class the test set has fewer of.
        self.reference = balanced_subset(*split_images(arrays, "test"), num_per_class, seed, whole_short_classes=True)
        counts = torch.bincount(self.reference[1], minlength=len(self.keys))
        if short := [f"{key} ({int(n)})" for key, n in zip(self.keys, counts, strict=True) if n < num_per_class]:
            log.warning(
                "The test set has fewer than %d images of class %s: the reference holds all of them, %d images in all",
                num_per_class, ", ".join(short), len(self.reference[1]),
            )  # fmt: skip
        self.train_sample = balanced_subset(*split_images(arrays, "train"), num_per_class, seed + 1)
        self.classifier, self.classifier_test_accuracy = load_classifier(dataset, data_dir, self.device, progress)
        features = _GivenFeatures()
        n = len(self.reference[1])
        # The evaluation runs on one process (rank 0 under DDP): no metric may wait for the others.
        local = {"sync_on_compute": False}
        self.fid = FrechetInceptionDistance(feature=features, reset_real_features=False, **local).to(self.device)
        # Every KID subset draws half the images, so kid_std says how much the estimate varies.
        self.kid = KernelInceptionDistance(
            feature=features, reset_real_features=False, subset_size=min(1000, n // 2), subsets=50, **local
        ).to(self.device)
        started = time.perf_counter()
        #: The classifier's features of the reference and of the training sample, computed once.
        self.reference_features = self.features(self.reference[0])
        self.train_sample_features = self.features(self.train_sample[0])
        self._update(self.reference_features, real=True)
        #: Seconds each metric group took in the last :meth:`score` or :meth:`real_metrics` call.
        self.timings: dict[str, float] = {}
        self.inception_fid: FrechetInceptionDistance | None = None
        if inception:
            self.inception_fid = FrechetInceptionDistance(
                feature=2048, feature_extractor_weights_path=str(inception_weights(data_dir)),
                reset_real_features=False, antialias=False, **local,
            ).to(self.device)  # fmt: skip
            self._inception_train_stats = self._inception_reference(Path(data_dir), seed)
        log.info("Real reference features of %d images in %.1f s", n, time.perf_counter() - started)

    def _inception_reference(self, data_dir: Path, seed: int) -> dict[str, Tensor]:
        """Load the reference's Inception statistics into the metric; return the training sample's.

        Both are cached under ``<data_dir>/eval_cache/``: they cost two Inception passes over the
        real samples, the larger part of an evaluation on a CPU.
        """
        assert self.inception_fid is not None
        n = self.num_per_class
        path = data_dir / "eval_cache" / f"inception_{self.dataset}_{n}per_class_seed{seed}_v{CACHE_VERSION}.pt"
        if path.is_file():
            try:
                cached = torch.load(path, map_location=self.device, weights_only=True)
                _set_stats(self.inception_fid, "real", cached["reference"])
                return cached["train"]
            except (OSError, RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as err:
                log.warning("Ignoring the unreadable Inception cache %s (%s)", path, err)
        self._inception_update(self.reference[0], real=True)
        self._inception_update(self.train_sample[0], real=False)
        stats = {"reference": _stats(self.inception_fid, "real"), "train": _stats(self.inception_fid, "fake")}
        cpu_stats = {side: {k: t.cpu() for k, t in v.items()} for side, v in stats.items()}
        atomic_write(path, functools.partial(torch.save, cpu_stats))
        return stats["train"]

    @torch.no_grad()
    def _inception_update(self, images: Tensor, real: bool, batch_size: int = 250) -> None:
        assert self.inception_fid is not None
        for chunk in images.split(batch_size):
            self.inception_fid.update(_rgb_uint8(chunk.to(self.device)), real=real)

    def features(self, images: Tensor) -> Tensor:
        """``[N, 128]`` reference-classifier features of ``[N, 1, 28, 28]`` images, on the CPU."""
        return self.classifier.features_of(images)

    @torch.no_grad()
    def _update(self, features: Tensor, real: bool, batch_size: int = 250) -> None:
        """Add ``[N, 128]`` features to one side of FID and KID, 250 at a time (FID sums them batch by batch)."""
        for chunk in features.split(batch_size):
            chunk = chunk.to(self.device)
            self.fid.update(chunk, real=real)
            self.kid.update(chunk, real=real)

    @torch.no_grad()
    def score(self, images: Tensor, labels: Tensor, prefix: str = "generated") -> dict[str, float]:
        """All metrics of ``[N, 1, 28, 28]`` images in [0, 1] made for ``labels`` ``[N]``, as ``PREFIX/NAME``."""
        if images.ndim != 4 or images.shape[1:] != self.reference[0].shape[1:]:
            expected = ", ".join(map(str, self.reference[0].shape[1:]))
            raise ValueError(f"expected images of shape [N, {expected}], got {list(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not bool(torch.isfinite(images).all()):
            raise ValueError("the generated images hold NaN or infinite values: the model has diverged")
        images, labels = images.float().cpu(), labels.cpu()
        # One classifier pass serves accuracy, FID/KID and precision/recall; its time counts in the accuracy's.
        features = functools.cache(lambda: self.features(images))
        return self._timed(
            accuracy=lambda: self._accuracy(features(), labels, prefix),
            fid_kid=lambda: self._distances(features(), prefix),
            inception_fid=lambda: self.inception_distance(images, prefix),
            precision_recall=lambda: self._precision_recall(features(), labels, prefix),
            clip=lambda: self.clip_metrics(images, labels, prefix),
        )

    def _timed(self, **metrics: Callable[[], dict[str, float]]) -> dict[str, float]:
        """Run each metric group, recording the seconds of those that gave values in :attr:`timings`; their results."""
        out: dict[str, float] = {}
        self.timings = {}
        for name, compute in metrics.items():
            started = time.perf_counter()
            if values := compute():
                out.update(values)
                self.timings[name] = time.perf_counter() - started
        return out

    def accuracy(self, images: Tensor, labels: Tensor, prefix: str) -> dict[str, float]:
        """``PREFIX/classifier_accuracy`` overall and per class (``PREFIX/classifier_accuracy/KEY``)."""
        return self._accuracy(self.features(images), labels, prefix)

    def _accuracy(self, features: Tensor, labels: Tensor, prefix: str) -> dict[str, float]:
        correct = (self.classifier.predict_features(features) == labels).float()
        out = {f"{prefix}/classifier_accuracy": float(correct.mean())}
        for index, key in enumerate(self.keys):
            mask = labels == index
            if mask.any():
                out[f"{prefix}/classifier_accuracy/{key}"] = float(correct[mask].mean())
        return out

    @torch.no_grad()
    def distances(self, images: Tensor | None, prefix: str) -> dict[str, float]:
        """``PREFIX/fid`` and ``PREFIX/kid`` (+ ``kid_std``) against the reference.

        ``images=None`` measures the real training sample (the floor).
        """
        return self._distances(self.train_sample_features if images is None else self.features(images), prefix)

    @torch.no_grad()
    def _distances(self, features: Tensor, prefix: str) -> dict[str, float]:
        self.fid.reset()  # keeps the reference's features
        self.kid.reset()
        self._update(features, real=False)
        kid_mean, kid_std = self.kid.compute()
        out = {f"{prefix}/fid": float(self.fid.compute()), f"{prefix}/kid": float(kid_mean)}
        out[f"{prefix}/kid_std"] = float(kid_std)
        return out

    @torch.no_grad()
    def inception_distance(self, images: Tensor | None, prefix: str) -> dict[str, float]:
        """``PREFIX/inception_fid`` against the reference (``images=None``: the training sample); empty when off."""
        if self.inception_fid is None:
            return {}
        self.inception_fid.reset()
        if images is None:
            _set_stats(self.inception_fid, "fake", self._inception_train_stats)
        else:
            self._inception_update(images, real=False)
        return {f"{prefix}/inception_fid": float(self.inception_fid.compute())}

    def precision_recall(self, images: Tensor | None, labels: Tensor | None, prefix: str) -> dict[str, float]:
        """``PREFIX/precision``, ``recall``, ``density`` and ``coverage`` against the reference, overall and per class.

        ``images=None`` measures the real training sample (the floor). A set of at most ``K`` images
        (or a class with that few) has no ``K``-th neighbour and gets no value.
        """
        if images is None:
            return self._precision_recall(self.train_sample_features, self.train_sample[1], prefix)
        assert labels is not None
        return self._precision_recall(self.features(images), labels, prefix)

    def _precision_recall(self, features: Tensor, labels: Tensor, prefix: str) -> dict[str, float]:
        if len(features) <= K:
            return {}
        out = {f"{prefix}/{name}": value for name, value in fidelity_variety(features, self.reference_features).items()}
        for index, key in enumerate(self.keys):
            mask, real_mask = labels == index, self.reference[1] == index
            if int(mask.sum()) > K:
                per_class = fidelity_variety(features[mask], self.reference_features[real_mask])
                out.update({f"{prefix}/{name}/{key}": value for name, value in per_class.items()})
        return out

    def clip_metrics(self, images: Tensor, labels: Tensor, prefix: str) -> dict[str, float]:
        """The CLIP metrics, overall and per class; empty without a CLIP model."""
        if self.clip is None:
            return {}
        return summarize_clip(self.clip.score(images, labels), labels, self.keys, prefix)

    def real_metrics(self) -> dict[str, float]:
        """The ``real/*`` floor: accuracy and CLIP of held-out test images, distances of a training sample."""
        return self._timed(
            accuracy=lambda: self._accuracy(self.reference_features, self.reference[1], prefix="real"),
            fid_kid=lambda: self._distances(self.train_sample_features, prefix="real"),
            inception_fid=lambda: self.inception_distance(None, prefix="real"),
            precision_recall=lambda: self._precision_recall(self.train_sample_features, self.train_sample[1], "real"),
            clip=lambda: self.clip_metrics(*self.reference, prefix="real"),
        )
