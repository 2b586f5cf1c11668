"""Precision, recall, density and coverage: by hand on small point sets, and on real, noisy and collapsed images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion_lab.data.labels import class_keys
from diffusion_lab.data.sources import load_arrays
from diffusion_lab.evaluation.classifier import split_images
from diffusion_lab.evaluation.evaluator import Evaluator, balanced_subset
from diffusion_lab.evaluation.fidelity_variety import fidelity_variety, kth_neighbour_distance


def points(*values: float) -> torch.Tensor:
    """1-d points as an ``[N, 1]`` feature set."""
    return torch.tensor(values, dtype=torch.float32).unsqueeze(1)


def test_by_hand_on_a_line() -> None:
    # k=1. Real 0, 1, 2, 10, 12: ball radii 1, 1, 1, 2, 2. Generated 0.5, 2.1, 5, 20: radii 1.6, 1.6, 2.9, 15.
    real, generated = points(0, 1, 2, 10, 12), points(0.5, 2.1, 5, 20)
    assert kth_neighbour_distance(real, 1).tolist() == pytest.approx([1, 1, 1, 2, 2])
    got = fidelity_variety(generated, real, k=1)
    # Precision: 0.5 (in 0's ball) and 2.1 (in 2's) are inside the real manifold, 5 and 20 are not.
    assert got["precision"] == pytest.approx(2 / 4)
    # Recall: 0 and 1 lie in 0.5's ball, 2 in 2.1's, and the stray 20's ball (radius 15) swallows 10 and 12.
    assert got["recall"] == pytest.approx(5 / 5)
    # Density: 0.5 sits in two real balls (0's, 1's), 2.1 in one, 5 and 20 in none: (2 + 1) / 4 / k.
    assert got["density"] == pytest.approx(3 / 4)
    # Coverage: the balls of 0, 1 and 2 hold a sample, those of 10 and 12 none, whatever the stray does.
    assert got["coverage"] == pytest.approx(3 / 5)


def test_by_hand_with_k2_and_closed_balls() -> None:
    # k=2. Real 0, 1, 3: radii 3, 2, 3. Generated 3, 6, 9: radii 6, 3, 6 (a ball's edge counts).
    real, generated = points(0, 1, 3), points(3, 6, 9)
    got = fidelity_variety(generated, real, k=2)
    assert got["precision"] == pytest.approx(2 / 3)  # 3 (in every ball) and 6 (on the edge of 3's)
    assert got["recall"] == pytest.approx(3 / 3)  # 3's ball of radius 6 reaches 0 and 1
    assert got["density"] == pytest.approx((3 + 1 + 0) / 3 / 2)
    assert got["coverage"] == pytest.approx(3 / 3)


def test_needs_more_points_than_neighbours() -> None:
    with pytest.raises(ValueError, match="3 generated points are too few for k=3 nearest neighbours: need at least 4"):
        fidelity_variety(points(0, 1, 2), points(0, 1, 2, 3))


def test_matches_the_reference_prdc_package() -> None:
    prdc = pytest.importorskip("prdc")
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=generator)
    generated = 0.7 * torch.randn(250, 16, generator=generator) + 0.3
    expected = prdc.compute_prdc(real_features=real.numpy(), fake_features=generated.numpy(), nearest_k=5)
    got = fidelity_variety(generated, real, k=5)
    for name in ("precision", "recall", "density", "coverage"):
        assert got[name] == pytest.approx(float(expected[name]), abs=1e-6), name


@pytest.fixture(scope="module")
def evaluator(data_dir: Path, mnist_classifier) -> Evaluator:
    return Evaluator("mnist", str(data_dir), num_per_class=100, progress=False)


def test_real_images_land_on_the_floor(evaluator: Evaluator, data_dir: Path) -> None:
    floor = evaluator.real_metrics()
    assert {f"real/precision/{key}" for key in class_keys("mnist")} <= floor.keys()
    # Another real training sample (not the floor's) scored as if generated.
    other = balanced_subset(*split_images(load_arrays("mnist", data_dir), "train"), 100, seed=7)
    scored = evaluator.score(*other)
    for name in ("precision", "recall", "coverage"):
        assert 0.5 < floor[f"real/{name}"] < 1
        assert scored[f"generated/{name}"] == pytest.approx(floor[f"real/{name}"], abs=0.05), name
    assert scored["generated/density"] == pytest.approx(floor["real/density"], abs=0.15)


def test_noise_has_no_precision(evaluator: Evaluator) -> None:
    noise = torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    scored = evaluator.score(noise, torch.arange(10).repeat_interleave(100))
    assert scored["generated/precision"] < 0.05 and scored["generated/density"] < 0.05
    assert scored["generated/coverage"] < 0.05


def test_a_collapsed_set_keeps_precision_and_loses_recall_and_coverage(evaluator: Evaluator, data_dir: Path) -> None:
    train_images, train_labels = split_images(load_arrays("mnist", data_dir), "train")
    sample_images, sample_labels = balanced_subset(train_images, train_labels, 100, seed=7)
    features = evaluator.features(sample_images)
    typical = []  # per class, the training image closest to the class's mean reference feature
    for index in range(10):
        centre = evaluator.reference_features[evaluator.reference[1] == index].mean(0)
        members = torch.nonzero(sample_labels == index).squeeze(1)
        typical.append(members[(features[members] - centre).norm(dim=1).argmin()])
    collapsed = sample_images[torch.stack(typical)].repeat_interleave(100, dim=0)
    scored = evaluator.score(collapsed, torch.arange(10).repeat_interleave(100))
    assert scored["generated/precision"] >= 0.9
    assert scored["generated/recall"] < 0.05 and scored["generated/coverage"] < 0.1
    assert scored["generated/classifier_accuracy"] == 1.0, "accuracy cannot see the collapse"
