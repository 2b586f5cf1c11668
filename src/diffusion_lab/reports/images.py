"""Image files: grids as PNG, generated samples as PNG + NPZ, every file written atomically."""

from __future__ import annotations

import functools
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

from diffusion_lab.data.sources import dataset_info
from diffusion_lab.utils.files import atomic_write


def to_uint8(images: Tensor) -> np.ndarray:
    """``[N, C, H, W]`` floats in [0, 1] -> ``[N, H, W]`` (one channel) or ``[N, H, W, C]`` uint8 0..255."""
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return array[:, 0] if array.shape[1] == 1 else array.transpose(0, 2, 3, 1)


def image_grid(images: Tensor, nrow: int) -> Tensor:
    """``[C, H', W']`` grid of ``[N, C, H, W]`` images in [0, 1], ``nrow`` a row, 2 px white padding."""
    return make_grid(images, nrow=nrow, padding=2, pad_value=1.0)


def class_grid(images: Tensor, per_class: int, columns: int) -> Tensor:
    """The first ``columns`` images of each class of a class-by-class set, one class a row."""
    columns = min(columns, per_class)
    rows = images.view(-1, per_class, *images.shape[1:])[:, :columns]
    return image_grid(rows.flatten(0, 1), columns)


def save_png(grid: Tensor, path: str | Path) -> Path:
    """Write an image grid ``[C, H, W]`` in [0, 1] as a PNG (folders created)."""
    return atomic_write(path, functools.partial(save_image, grid, format="png"))


def save_samples(
    images: Tensor,
    labels: Tensor,
    output: str | Path,
    nrow: int | None = None,
    extra: dict[str, np.ndarray] | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``OUTPUT.png`` (a grid, ``nrow`` images a row) and ``OUTPUT.npz`` (``images`` uint8, ``labels`` int64).

    ``extra`` arrays (one value per image, e.g. ``clip_scores``) are stored in the NPZ as well, and
    ``meta`` (the dataset, the settings) as the JSON string ``meta``, which :func:`load_samples` checks.
    Each file is written atomically, so a crash never leaves half a file. A ``.png`` or ``.npz``
    suffix on ``output`` is dropped.
    """
    output = Path(output)
    if output.suffix in (".png", ".npz"):
        output = output.with_suffix("")
    arrays = {"images": to_uint8(images), "labels": labels.cpu().numpy().astype(np.int64), **(extra or {})}
    if meta is not None:
        arrays["meta"] = np.array(json.dumps(meta))
    png = save_png(image_grid(images, nrow or min(len(images), 16)), f"{output}.png")
    npz = atomic_write(f"{output}.npz", lambda file: np.savez_compressed(file, **arrays))
    return png, npz


def load_samples(path: str | Path, dataset: str) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """``[N, 1, H, W]`` images in [0, 1], ``[N]`` labels and ``meta`` of a samples NPZ of :func:`save_samples`.

    Raises:
        ValueError: one line, when the file is missing or unreadable, holds images of another shape than
            the dataset's (``[N, 28, 28]`` uint8) or labels outside its classes, or records another dataset.
    """
    path = Path(path)
    info = dataset_info(dataset)
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
            meta = json.loads(str(npz["meta"])) if "meta" in npz else {}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"samples={path} is not a samples.npz with images and labels ({err})") from None
    if meta.get("dataset", dataset) != dataset:
        raise ValueError(f"samples={path} holds {meta['dataset']} images but the checkpoint is a {dataset} model")
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != info.image_shape[1:]:
        raise ValueError(
            f"samples={path} holds images of shape {list(images.shape)} ({images.dtype}): expected [N, 28, 28] uint8"
        )
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"samples={path} holds {images.shape[0]} images but labels of shape {list(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise ValueError(f"samples={path} holds labels outside 0..{info.num_classes - 1}")
    tensor = torch.from_numpy(images).unsqueeze(1).float().div_(255)
    return tensor, torch.from_numpy(labels.astype(np.int64)), meta
