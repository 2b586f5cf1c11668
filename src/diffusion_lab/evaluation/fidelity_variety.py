"""Fidelity and variety apart: precision, recall, density and coverage of generated against real features.

Each real point ``r`` gets a ball reaching its ``k``-th nearest real neighbour, each generated point ``g``
one reaching its ``k``-th nearest generated neighbour; the union of a set's balls estimates its manifold.

* ``precision`` (Kynkaanniemi et al. 2019): the fraction of generated points inside the real manifold
  (how many samples look real); ``recall``: the fraction of real points inside the generated manifold
  (how much of the real variety the samples reach).
* ``density`` (Naeem et al. 2020): how many real balls hold a generated point, over ``k``, averaged over
  the generated points: about 1 when the two sets match, above 1 where samples crowd typical images;
  ``coverage``: the fraction of real points whose ball holds a generated point. Unlike recall, a few
  stray samples with big balls cannot inflate coverage.

Precision and recall are torch-fidelity's (``prc_features_to_metric``); density and coverage, which it
lacks, follow the reference ``prdc`` package (which needs scikit-learn) with torch-fidelity's closed balls
(``<=``), so a generated point counts for precision exactly when it lies in at least one real ball.
Distances are taken in chunks, so 10,000 points against 10,000 stay within a few hundred MB.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_fidelity.metric_prc import prc_features_to_metric

#: Neighbours per ball (the papers' and torch-fidelity's default).
K = 3
#: Rows of a distance matrix computed at a time.
CHUNK = 2000


def kth_neighbour_distance(features: Tensor, k: int = K) -> Tensor:
    """``[N]``: each point's distance to its ``k``-th nearest other point (its ball's radius)."""
    # The (k+1)-th smallest distance of a row skips the point itself (distance 0).
    return torch.cat([torch.cdist(chunk, features).kthvalue(k + 1, dim=1).values for chunk in features.split(CHUNK)])


def density_coverage(generated: Tensor, real: Tensor, k: int = K) -> tuple[float, float]:
    """Density and coverage of ``generated`` ``[G, D]`` against ``real`` ``[R, D]`` features."""
    radii = kth_neighbour_distance(real, k)
    balls_holding = torch.zeros(len(generated))
    nearest_generated = torch.full((len(real),), float("inf"))
    for start, chunk in zip(range(0, len(generated), CHUNK), generated.split(CHUNK), strict=True):
        distances = torch.cdist(chunk, real)  # [chunk, R]
        balls_holding[start : start + len(chunk)] = (distances <= radii).sum(1).float()
        nearest_generated = torch.minimum(nearest_generated, distances.min(0).values)
    density = float(balls_holding.mean()) / k
    coverage = float((nearest_generated <= radii).float().mean())
    return density, coverage


def fidelity_variety(generated: Tensor, real: Tensor, k: int = K) -> dict[str, float]:
    """``precision``, ``recall``, ``density`` and ``coverage`` of two ``[N, D]`` feature sets (each > ``k`` points)."""
    generated, real = generated.float().cpu(), real.float().cpu()
    for name, features in (("generated", generated), ("real", real)):
        if len(features) <= k:
            raise ValueError(
                f"{len(features)} {name} points are too few for k={k} nearest neighbours: need at least {k + 1}"
            )
    prc = prc_features_to_metric(
        generated, real, prc_neighborhood=k, prc_batch_size=CHUNK, save_cpu_ram=True, verbose=False
    )
    density, coverage = density_coverage(generated, real, k)
    return {"precision": prc["precision"], "recall": prc["recall"], "density": density, "coverage": coverage}
