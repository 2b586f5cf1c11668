"""The held-out reference classifier: a small CNN that reads which class a generated image shows.

One per dataset, trained by the project on the real training split (never on generated images) and
cached as ``<data_dir>/classifiers/<dataset>.pt`` with its test accuracy. It serves two metrics:

* class-conditional accuracy: the fraction of images generated for class y that it reads as y;
* FID / KID in its penultimate feature space (:meth:`ReferenceClassifier.features`), which knows
  what digits and garments look like far better than ImageNet's Inception does at 28 x 28.

The first use trains it (with a progress bar; about a minute on a laptop CPU) and checks the
accuracy floor: 99.0 % on MNIST's test set, 90 % on Fashion-MNIST's.
"""

from __future__ import annotations

import functools
import logging
import math
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffusion_lab.data.sources import dataset_info, load_arrays
from diffusion_lab.utils.files import atomic_write, exclusive_lock

log = logging.getLogger(__name__)

#: Lowest test accuracy a cached or freshly trained classifier may have, per dataset.
MIN_TEST_ACCURACY = {"mnist": 0.99, "fashion_mnist": 0.90}
#: Training epochs per dataset (enough to clear the floor with a margin).
EPOCHS = {"mnist": 3, "fashion_mnist": 6}
#: Images per optimizer step.
BATCH_SIZE = 128
#: Images per inference batch on the CPU: 100 stay in its caches, 2-3 times faster than 1,000, the same numbers.
CPU_BATCH_SIZE = 100
#: Bumped whenever the architecture or recipe changes, so old cache files are retrained.
VERSION = 1


class ClassifierError(RuntimeError):
    """The reference classifier could not be trained to its accuracy floor."""


class _ChannelsLastMaxPool(torch.autograd.Function):
    """2 x 2 max pooling of a default-layout tensor, computed in channels-last layout."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, images: Tensor) -> Tensor:
        images = images.contiguous(memory_format=torch.channels_last)
        pooled, indices = torch.ops.aten.max_pool2d_with_indices(images, [2, 2], [2, 2])
        ctx.save_for_backward(images, indices)
        return pooled.contiguous()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        images, indices = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        args = [2, 2], [2, 2], [0, 0], [1, 1], False
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, images, *args, indices).contiguous()


class MaxPool(nn.Module):
    """``nn.MaxPool2d(2)`` computed in channels-last layout: on a CPU, in the default layout, it takes a third of
    the classifier's training time. The same values and the same chosen maxima (the first of a window, in both
    layouts), so the same gradients: the windows do not overlap."""

    def forward(self, images: Tensor) -> Tensor:
        return _ChannelsLastMaxPool.apply(images)


class ReferenceClassifier(nn.Module):
    """Three conv blocks and a 128-d penultimate layer.

    Input: ``[N, 1, 28, 28]`` images in [0, 1] (the range generated images come in).
    """

    FEATURE_DIM = 128

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), MaxPool()
            )

        self.body = nn.Sequential(block(1, 32), block(32, 64), block(64, 128), nn.Flatten())  # 28 -> 14 -> 7 -> 3
        self.embed = nn.Sequential(nn.Linear(128 * 3 * 3, self.FEATURE_DIM), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(self.FEATURE_DIM, num_classes)

    def features(self, images: Tensor) -> Tensor:
        """``[N, 128]`` penultimate activations of ``[N, 1, 28, 28]`` images in [0, 1]."""
        return self.embed(self.body((images - 0.5) / 0.5))

    def forward(self, images: Tensor) -> Tensor:
        """``[N, num_classes]`` logits."""
        return self.classify(self.features(images))

    def classify(self, features: Tensor) -> Tensor:
        """``[N, num_classes]`` logits of ``[N, 128]`` :meth:`features`."""
        return self.head(self.dropout(features))

    @torch.no_grad()
    def features_of(self, images: Tensor, batch_size: int | None = None) -> Tensor:
        """``[N, 128]`` float32 :meth:`features` of any number of images, batch by batch, on the CPU.

        Batches default to :data:`CPU_BATCH_SIZE` images on the CPU, 1,000 elsewhere.
        """
        device = next(self.parameters()).device
        size = batch_size or (CPU_BATCH_SIZE if device.type == "cpu" else 1000)
        return torch.cat([self.features(chunk.to(device)).float().cpu() for chunk in images.split(size)])

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int | None = None) -> Tensor:
        """``[N]`` predicted classes, in eval mode, batch by batch (see :meth:`features_of`)."""
        return self.predict_features(self.features_of(images, batch_size))

    @torch.no_grad()
    def predict_features(self, features: Tensor) -> Tensor:
        """``[N]`` predicted classes of ``[N, 128]`` :meth:`features_of`, on the CPU."""
        return self.classify(features.to(next(self.parameters()).device)).argmax(1).cpu()


def cache_path(dataset: str, data_dir: str | Path) -> Path:
    return Path(data_dir) / "classifiers" / f"{dataset}.pt"


def split_images(arrays: dict, split: str) -> tuple[Tensor, Tensor]:
    """``[N, 1, 28, 28]`` images in [0, 1] (the range generated images come in) and ``[N]`` labels of one
    split (``train`` or ``test``) of :func:`~diffusion_lab.data.sources.load_arrays`' arrays."""
    images = torch.from_numpy(arrays[f"{split}_images"]).unsqueeze(1).float().div_(255)
    return images, torch.from_numpy(arrays[f"{split}_labels"])


def accuracy(classifier: ReferenceClassifier, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` classified as ``labels``."""
    classifier.eval()
    return float((classifier.predict(images) == labels).float().mean())


def _shift(images: Tensor, generator: torch.Generator, max_shift: int = 2) -> Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill): cheap, label-preserving augmentation."""
    padded = F.pad(images, (max_shift,) * 4)
    h, w = images.shape[-2:]
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + h, dx : dx + w]


def reference_steps(dataset: str, epochs: int | None = None) -> int:
    """Optimizer steps of ``epochs`` (default :data:`EPOCHS`) over the full training split."""
    return (epochs or EPOCHS[dataset]) * math.ceil(sum(dataset_info(dataset).train_counts) / BATCH_SIZE)


def train_classifier(
    dataset: str, data_dir: str | Path, epochs: int | None = None, seed: int = 0, progress: bool = True
) -> tuple[ReferenceClassifier, float]:
    """Train a :class:`ReferenceClassifier` on the real training split; returns it and its test accuracy.

    Runs with gradients from any context, e.g. a callback inside Lightning's validation loop.
    """
    arrays = load_arrays(dataset, data_dir)
    train_x, train_y = split_images(arrays, "train")
    steps = reference_steps(dataset, epochs)
    desc = f"reference classifier ({dataset}, first use)"
    model = fit_classifier(train_x, train_y, dataset, steps, seed=seed, progress=progress, desc=desc)
    return model, accuracy(model, *split_images(arrays, "test"))


def fit_classifier(
    images: Tensor,
    labels: Tensor,
    dataset: str,
    steps: int,
    seed: int = 0,
    progress: bool = True,
    desc: str = "classifier",
) -> ReferenceClassifier:
    """A :class:`ReferenceClassifier` trained with the reference recipe for ``steps`` on any labelled images.

    The recipe (AdamW, one-cycle learning rate, batches of 128, shifts on MNIST and flips on
    Fashion-MNIST) is the reference classifier's whatever the images, so that classifiers trained on
    different sets (real, generated) differ only in their data. Runs with gradients from any context.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _fit(images, labels, dataset, steps, seed, progress, desc)


def _fit(
    train_x: Tensor, train_y: Tensor, dataset: str, steps: int, seed: int, progress: bool, desc: str
) -> ReferenceClassifier:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ReferenceClassifier(dataset_info(dataset).num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    bar = tqdm(total=steps, desc=desc, disable=not progress, unit="step")
    model.train()
    done = 0
    while done < steps:  # epochs over the images, the last one cut at ``steps``
        order = torch.randperm(len(train_y), generator=generator)
        for idx in order.split(BATCH_SIZE)[: steps - done]:
            images = _shift(train_x[idx], generator) if dataset == "mnist" else train_x[idx]
            if dataset == "fashion_mnist":
                flip = torch.rand(len(idx), generator=generator) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(images), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            done += 1
    bar.close()
    return model.eval()


def _save(model: ReferenceClassifier, test_accuracy: float, dataset: str, path: Path) -> None:
    payload = {"state_dict": model.state_dict(), "test_accuracy": test_accuracy, "dataset": dataset, "version": VERSION}
    atomic_write(path, functools.partial(torch.save, payload))


def _load_cached(dataset: str, path: Path) -> tuple[ReferenceClassifier, float] | None:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = ReferenceClassifier(dataset_info(dataset).num_classes)
        model.load_state_dict(payload["state_dict"])
        test_accuracy = float(payload["test_accuracy"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        log.warning("Reference classifier cache %s is unreadable (%s); retraining it", path, err)
        return None
    if payload.get("version") != VERSION or payload.get("dataset") != dataset:
        log.info("Reference classifier cache %s is from another version; retraining it", path)
        return None
    return model.eval(), test_accuracy


def _train_and_cache(
    dataset: str, data_dir: str | Path, path: Path, progress: bool
) -> tuple[ReferenceClassifier, float]:
    log.info("Training the %s reference classifier once; it is cached in %s", dataset, path)
    model, test_accuracy = train_classifier(dataset, data_dir, progress=progress)
    floor = MIN_TEST_ACCURACY[dataset]
    if test_accuracy < floor:
        raise ClassifierError(
            f"the {dataset} reference classifier reached {test_accuracy:.2%} test accuracy, below {floor:.0%}"
        )
    _save(model, test_accuracy, dataset, path)
    return model, test_accuracy


def load_classifier(
    dataset: str, data_dir: str | Path, device: str | torch.device = "cpu", progress: bool = True
) -> tuple[ReferenceClassifier, float]:
    """The reference classifier of ``dataset`` and its test accuracy, trained and cached on first use.

    Raises:
        ClassifierError: when training ends below :data:`MIN_TEST_ACCURACY` (nothing is cached then).
    """
    path = cache_path(dataset, data_dir)
    loaded = _load_cached(dataset, path) if path.is_file() else None
    if loaded is None:
        # Processes that start at once (parallel sweep jobs, test workers) train it once: the others wait, then read it.
        with exclusive_lock(path.with_name(f".{path.name}.lock")):
            loaded = _load_cached(dataset, path) if path.is_file() else None
            if loaded is None:
                loaded = _train_and_cache(dataset, data_dir, path, progress)
    model, test_accuracy = loaded
    model.requires_grad_(False)
    return model.to(device), test_accuracy
