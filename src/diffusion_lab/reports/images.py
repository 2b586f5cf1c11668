"""Image files: grids as PNG, generated samples as PNG + NPZ, every file written atomically."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

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
) -> tuple[Path, Path]:
    """Write ``OUTPUT.png`` (a grid, ``nrow`` images a row) and ``OUTPUT.npz`` (``images`` uint8, ``labels`` int64).

    ``extra`` arrays (one value per image, e.g. ``clip_scores``) are stored in the NPZ as well.
    Each file is written atomically, so a crash never leaves half a file. A ``.png`` or ``.npz``
    suffix on ``output`` is dropped.
    """
    output = Path(output)
    if output.suffix in (".png", ".npz"):
        output = output.with_suffix("")
    arrays = {"images": to_uint8(images), "labels": labels.cpu().numpy().astype(np.int64), **(extra or {})}
    png = save_png(image_grid(images, nrow or min(len(images), 16)), f"{output}.png")
    npz = atomic_write(f"{output}.npz", lambda file: np.savez_compressed(file, **arrays))
    return png, npz
