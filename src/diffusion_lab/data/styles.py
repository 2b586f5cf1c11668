"""Handwriting style attributes measured on the images themselves: slant and stroke thickness.

No labels are needed: both are computed from pixels, for training images (the conditions a styled
model learns from) and for generated ones (to check the model follows the conditions it was given).

* **slant**, degrees: the shear of the ink's second-order central moments,
  ``atan(-mu11 / mu02)``; 0 is upright, positive leans right (the top to the right, as italics).
* **thickness**, pixels: the mean stroke width, from the ink's area and outline length (the width
  of a straight stroke with the same area and perimeter; see :func:`thickness`). Both count grey
  levels in proportion, so it needs no threshold and no skeleton, and it changes smoothly with the
  image, which the correlation between asked and measured thickness relies on.

:class:`StyleStats` holds each attribute's distribution over a training set: the mean and standard
deviation that normalise it for the network, and the percentiles behind the named levels
(``low`` / ``medium`` / ``high`` = 10th / 50th / 90th percentile; ``thin`` / ``bold`` and
``left`` / ``right`` are their aliases, ``upright`` is 0 degrees).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion_lab.rules import is_number

#: Attribute names, in the order of the last dimension of every style tensor.
STYLE_NAMES = ("slant", "thickness")
#: Unit of each attribute.
STYLE_UNITS = {"slant": "degrees", "thickness": "pixels"}
#: Percentiles kept per attribute: the named levels and the range the network was trained on.
PERCENTILES = (1, 10, 50, 90, 99)
#: Named level -> the percentile it stands for.
LEVEL_PERCENTILES = {"low": 10, "medium": 50, "high": 90}
#: Aliases of the named levels per attribute; ``upright`` is a fixed value (0 degrees), not a percentile.
LEVEL_ALIASES = {
    "slant": {"left": "low", "right": "high"},
    "thickness": {"thin": "low", "regular": "medium", "bold": "high", "thick": "high"},
}
FIXED_LEVELS = {"slant": {"upright": 0.0}, "thickness": {}}
#: Requests further than this many standard deviations from the training mean are refused.
MAX_DEVIATIONS = 4.0


def _ink(images: Tensor) -> Tensor:
    """``[N, 1, H, W]`` or ``[N, H, W]`` images in [0, 1] -> ``[N, H, W]`` float32 ink."""
    if images.ndim == 4:
        if images.shape[1] != 1:
            raise ValueError(f"style attributes need one-channel images, got {images.shape[1]} channels")
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"expected images [N, 1, H, W] or [N, H, W], got shape {tuple(images.shape)}")
    return images.float().clamp(0, 1)


def slant(images: Tensor) -> Tensor:
    """``[N]`` slant in degrees of images in [0, 1] (ink bright): positive leans right, 0 is upright.

    A stroke drawn at angle a from the vertical gives ``x - x_c = -tan(a) (y - y_c)`` (rows grow
    downwards), so the moments' shear ``mu11 / mu02`` is ``-tan(a)``. An empty image has slant 0.
    """
    ink = _ink(images)
    height, width = ink.shape[-2:]
    ys = torch.arange(height, dtype=ink.dtype, device=ink.device)[:, None]
    xs = torch.arange(width, dtype=ink.dtype, device=ink.device)[None, :]
    mass = ink.sum(dim=(1, 2)).clamp_min(1e-6)
    yc = (ink * ys).sum(dim=(1, 2)) / mass
    xc = (ink * xs).sum(dim=(1, 2)) / mass
    dy = ys[None] - yc[:, None, None]
    dx = xs[None] - xc[:, None, None]
    mu11 = (ink * dx * dy).sum(dim=(1, 2))
    mu02 = (ink * dy * dy).sum(dim=(1, 2)).clamp_min(1e-6)
    return torch.rad2deg(torch.atan(-mu11 / mu02))


def perimeter(images: Tensor) -> Tensor:
    """``[N]`` length of the ink's outline in pixels: the summed magnitude of its central-difference gradient.

    On a shape drawn with anti-aliasing this is its perimeter (within a few percent, at any angle);
    grey levels count in proportion, so no threshold is involved.
    """
    ink = F.pad(_ink(images), (1, 1, 1, 1))
    gx = (ink[:, 1:-1, 2:] - ink[:, 1:-1, :-2]) / 2
    gy = (ink[:, 2:, 1:-1] - ink[:, :-2, 1:-1]) / 2
    return (gx.square() + gy.square()).sqrt().sum(dim=(1, 2))


def thickness(images: Tensor) -> Tensor:
    """``[N]`` mean stroke width in pixels of images in [0, 1]: that of a stadium of the same area and perimeter.

    A straight stroke of width w and length L with round ends (a stadium) has area ``A = w L + pi w^2 / 4``
    and perimeter ``P = 2 L + pi w``, so ``w = (P - sqrt(P^2 - 4 pi A)) / pi``. Applied to any drawing,
    this is its ink area over (half) its outline length with the ends accounted for: the width of straight
    strokes exactly, of curved ones and loops within a few percent, and of a disc its diameter.
    An empty image has thickness 0.
    """
    area = _ink(images).sum(dim=(1, 2))
    outline = perimeter(images)
    return (outline - (outline.square() - 4 * math.pi * area).clamp_min(0).sqrt()) / math.pi


def measure(images: Tensor) -> Tensor:
    """``[N, 2]`` raw style attributes (slant in degrees, thickness in pixels) of images in [0, 1]."""
    return torch.stack([slant(images), thickness(images)], dim=-1)


@dataclass(frozen=True)
class AttributeStats:
    """One attribute's distribution over a training set."""

    mean: float
    std: float
    #: percentile (as in :data:`PERCENTILES`) -> value
    percentiles: dict[int, float]


@dataclass(frozen=True)
class StyleStats:
    """Per-dataset distribution of every style attribute: normalises them and names their levels."""

    attributes: dict[str, AttributeStats]

    @classmethod
    def from_values(cls, values: Tensor) -> StyleStats:
        """Statistics of raw attributes ``[N, 2]`` (as :func:`measure` returns them)."""
        values = values.double()
        quantiles = torch.tensor([p / 100 for p in PERCENTILES], dtype=values.dtype)
        attributes = {}
        for i, name in enumerate(STYLE_NAMES):
            column = values[:, i]
            q = torch.quantile(column, quantiles).tolist()
            attributes[name] = AttributeStats(
                mean=float(column.mean()), std=float(column.std()), percentiles=dict(zip(PERCENTILES, q, strict=True))
            )
        return cls(attributes)

    def to_dict(self) -> dict[str, dict]:
        """Plain containers, for a checkpoint."""
        return {name: asdict(stats) for name, stats in self.attributes.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping]) -> StyleStats:
        """Inverse of :meth:`to_dict`."""
        return cls(
            {
                name: AttributeStats(
                    mean=float(d["mean"]),
                    std=float(d["std"]),
                    percentiles={int(k): float(v) for k, v in d["percentiles"].items()},
                )
                for name, d in data.items()
            }
        )

    def normalize(self, values: Tensor) -> Tensor:
        """Raw ``[..., 2]`` -> zero-mean unit-variance values, NaN (an attribute not asked for) kept."""
        mean = values.new_tensor([self.attributes[n].mean for n in STYLE_NAMES])
        std = values.new_tensor([self.attributes[n].std for n in STYLE_NAMES])
        return (values - mean) / std

    def levels(self, name: str) -> dict[str, float]:
        """Every named level of attribute ``name`` and its value in the attribute's unit."""
        stats = self.attributes[name]
        named = {level: stats.percentiles[p] for level, p in LEVEL_PERCENTILES.items()}
        named.update({alias: named[level] for alias, level in LEVEL_ALIASES[name].items()})
        named.update(FIXED_LEVELS[name])
        return named

    def value(self, name: str, request: float | int | str) -> float:
        """A requested value of attribute ``name`` (a number in its unit, or a named level) in its unit.

        Raises:
            ValueError: one line naming the valid levels and range, for an unknown level, a value that
                is not a finite number, or one further than :data:`MAX_DEVIATIONS` deviations from the mean.
        """
        if name not in self.attributes:
            raise ValueError(f"unknown style attribute {name!r}: use one of {', '.join(STYLE_NAMES)}")
        levels = self.levels(name)
        unit = STYLE_UNITS[name]
        stats = self.attributes[name]
        low, high = stats.mean - MAX_DEVIATIONS * stats.std, stats.mean + MAX_DEVIATIONS * stats.std
        hint = f"a number of {unit} in {low:.1f}..{high:.1f} or a level ({', '.join(levels)})"
        if isinstance(request, str):
            key = request.strip().lower()
            if key in levels:
                return levels[key]
            try:
                request = float(key)
            except ValueError:
                raise ValueError(f"{name}={request!r} is not a style value: use {hint}") from None
        if not is_number(request):
            raise ValueError(f"{name}={request!r} is not a style value: use {hint}")
        if not low <= request <= high:
            raise ValueError(f"{name}={request:g} is outside what the model was trained on: use {hint}")
        return float(request)

    def request(self, n: int, **requests: float | int | str | None) -> Tensor:
        """``[n, 2]`` raw attributes for ``n`` images from ``slant=``/``thickness=`` requests; NaN where None."""
        unknown = sorted(set(requests) - set(STYLE_NAMES))
        if unknown:
            raise ValueError(f"unknown style attribute {unknown[0]!r}: use one of {', '.join(STYLE_NAMES)}")
        row = [math.nan if requests.get(name) is None else self.value(name, requests[name]) for name in STYLE_NAMES]
        return torch.tensor(row, dtype=torch.float32).expand(n, -1).clone()


#: Percentiles between which :func:`uniform_requests` draws the asked-for values.
REQUEST_RANGE = (10, 90)


def _draw(stats: StyleStats, n: int, generator: torch.Generator) -> Tensor:
    """``[n, 2]`` float64 values, each attribute uniform between its :data:`REQUEST_RANGE` percentiles in ``stats``."""
    columns = []
    for name in STYLE_NAMES:
        low, high = (stats.attributes[name].percentiles[p] for p in REQUEST_RANGE)
        columns.append(low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64))
    return torch.stack(columns, dim=-1)


def uniform_requests(stats: StyleStats, n: int, seed: int = 0) -> Tensor:
    """``[n, 2]`` raw requests, each attribute drawn independently and uniformly between its 10th and 90th percentile.

    Independent of the class and of each other, so measuring how samples follow them tests control
    of any combination, not the styles a class happens to have.
    """
    return _draw(stats, n, torch.Generator().manual_seed(seed)).float()


def class_requests(values: Tensor, value_labels: Tensor, labels: Tensor, seed: int = 0) -> Tensor:
    """``[len(labels), 2]`` raw requests, each drawn between the 10th and 90th percentile of its own class.

    ``values`` ``[M, 2]`` are the attributes of training images of classes ``value_labels`` ``[M]``. Unlike
    :func:`uniform_requests` these ask only for styles the class has (no slanted shirts), so their control
    says what a model can learn where a class's styles are narrow.
    """
    generator = torch.Generator().manual_seed(seed)
    requests = torch.empty(len(labels), len(STYLE_NAMES), dtype=torch.float64)
    for index in labels.unique().tolist():
        rows = labels == index
        requests[rows] = _draw(StyleStats.from_values(values[value_labels == index]), int(rows.sum()), generator)
    return requests.float()


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two ``[N]`` tensors (NaN when either is constant)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.square().sum() * b.square().sum()).sqrt())


def control_metrics(requested: Tensor, measured: Tensor, prefix: str = "style") -> dict[str, float]:
    """How well measured attributes ``[N, 2]`` follow the requested ones ``[N, 2]``, per attribute.

    ``{prefix}/{name}_correlation`` (Pearson, asked vs measured), ``{prefix}/{name}_mae`` (mean absolute
    error in the attribute's unit) and ``{prefix}/{name}_bias`` (mean measured minus asked).
    """
    metrics = {}
    for i, name in enumerate(STYLE_NAMES):
        asked, got = requested[:, i].double(), measured[:, i].double()
        metrics[f"{prefix}/{name}_correlation"] = pearson(asked, got)
        metrics[f"{prefix}/{name}_mae"] = float((got - asked).abs().mean())
        metrics[f"{prefix}/{name}_bias"] = float((got - asked).mean())
    return metrics
