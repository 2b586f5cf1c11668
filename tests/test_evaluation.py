"""The reference classifier and the Evaluator, on the real datasets."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from diffusion_lab.data.sources import load_arrays
from diffusion_lab.evaluation import classifier as classifier_module
from diffusion_lab.evaluation import evaluator as evaluator_module
from diffusion_lab.evaluation.classifier import (
    ClassifierError,
    MaxPool,
    ReferenceClassifier,
    accuracy,
    cache_path,
    load_classifier,
    split_images,
)
from diffusion_lab.evaluation.clip import ClipScorer
from diffusion_lab.evaluation.evaluator import Evaluator, balanced_subset, class_keys
from diffusion_lab.evaluation.fidelity_variety import fidelity_variety

#: Their runs and evaluations score MNIST samples with its reference classifier, trained once up front.
pytestmark = pytest.mark.usefixtures("mnist_classifier")


def scratch_data_dir(data_dir: Path, tmp_path: Path, *keep: str) -> Path:
    """A data folder with the prepared datasets (and the ``keep`` entries) linked from ``data_dir``."""
    scratch = tmp_path / "data"
    scratch.mkdir()
    for name in ("mnist", "fashion_mnist", *keep):
        (scratch / name).symlink_to(data_dir / name)
    return scratch


@pytest.mark.usefixtures("reference_classifiers")  # Fashion-MNIST too
@pytest.mark.parametrize(("name", "floor"), [("mnist", 0.99), ("fashion_mnist", 0.90)])
def test_cached_classifiers_clear_their_floor_on_the_test_set(name: str, floor: float, data_dir: Path) -> None:
    model, stored = load_classifier(name, data_dir)
    measured = accuracy(model, *split_images(load_arrays(name, data_dir), "test"))
    assert measured >= floor
    assert measured == pytest.approx(stored, abs=1e-6), "the cached accuracy is the model's"


def test_the_classifier_pools_as_torch_does_with_the_same_gradients() -> None:
    torch.manual_seed(0)
    images = torch.relu(torch.randn(8, 4, 7, 7)).round(decimals=1)  # ties in many windows; an odd size
    for dtype in (torch.float32, torch.bfloat16):
        ours, theirs = (images.to(dtype).clone().requires_grad_() for _ in range(2))
        pooled, expected = MaxPool()(ours), torch.nn.MaxPool2d(2)(theirs)
        grad = torch.randn_like(pooled)
        pooled.backward(grad)
        expected.backward(grad)
        assert torch.equal(pooled, expected) and torch.equal(ours.grad, theirs.grad)


def test_first_use_trains_caches_and_reuses(data_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    scratch = scratch_data_dir(data_dir, tmp_path)
    # The mechanism, not the recipe: 100 steps (a fifth of an epoch) clear a floor of 95%.
    monkeypatch.setattr(classifier_module, "reference_steps", lambda dataset, epochs=None: 100)
    monkeypatch.setitem(classifier_module.MIN_TEST_ACCURACY, "mnist", 0.95)
    model, acc = load_classifier("mnist", scratch)
    assert acc >= 0.95 and cache_path("mnist", scratch).is_file()
    assert "reference classifier (mnist, first use)" in capsys.readouterr().err, "a progress bar"

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    again, acc_again = load_classifier("mnist", scratch)
    assert acc_again == acc
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_below_the_floor_nothing_is_cached(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    scratch = scratch_data_dir(data_dir, tmp_path)
    monkeypatch.setattr(classifier_module, "train_classifier", lambda *a, **k: (ReferenceClassifier(10).eval(), 0.5))
    with pytest.raises(ClassifierError, match=r"reached 50.00% test accuracy, below 99%"):
        load_classifier("mnist", scratch, progress=False)
    assert not cache_path("mnist", scratch).exists()


def test_a_corrupt_cache_is_retrained(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    scratch = scratch_data_dir(data_dir, tmp_path)
    cache_path("mnist", scratch).parent.mkdir()
    cache_path("mnist", scratch).write_bytes(b"garbage")
    monkeypatch.setattr(classifier_module, "train_classifier", lambda *a, **k: (ReferenceClassifier(10).eval(), 0.995))
    assert load_classifier("mnist", scratch, progress=False)[1] == 0.995


def test_balanced_subset_is_per_class_and_deterministic() -> None:
    labels = torch.arange(10).repeat(50)
    images = torch.arange(500).float().view(-1, 1, 1, 1)
    a_images, a_labels = balanced_subset(images, labels, 7, seed=3)
    b_images, _ = balanced_subset(images, labels, 7, seed=3)
    assert a_labels.tolist() == [c for c in range(10) for _ in range(7)]
    assert torch.equal(a_images, b_images) and not torch.equal(a_images, balanced_subset(images, labels, 7, 4)[0])
    assert (labels[a_images.flatten().long()] == a_labels).all()
    with pytest.raises(ValueError, match="class 0 has 50 real images"):
        balanced_subset(images, labels, 51)
    # Class 3 has 20 images: taken whole, the others 30 each.
    short_labels = torch.arange(10).repeat_interleave(torch.tensor([50, 50, 50, 20, 50, 50, 50, 50, 50, 50]))
    short_images = torch.arange(len(short_labels)).float().view(-1, 1, 1, 1)
    picked_images, picked_labels = balanced_subset(short_images, short_labels, 30, whole_short_classes=True)
    assert picked_labels.tolist() == [c for c in range(10) for _ in range(20 if c == 3 else 30)]
    assert (short_labels[picked_images.flatten().long()] == picked_labels).all()


def test_a_reference_larger_than_a_test_class_holds_that_whole_class(data_dir: Path, caplog) -> None:
    """MNIST's test set has 892 fives: a 1,000-per-class evaluation compares with all of them."""
    test_counts = torch.bincount(split_images(load_arrays("mnist", data_dir), "test")[1])
    with caplog.at_level(logging.WARNING):
        evaluator = Evaluator("mnist", str(data_dir), num_per_class=1000, progress=False)
    assert torch.equal(torch.bincount(evaluator.reference[1]), test_counts.clamp(max=1000))
    assert torch.equal(torch.bincount(evaluator.train_sample[1]), torch.full((10,), 1000))
    assert "class 0 (980), 4 (982), 5 (892), 6 (958), 8 (974)" in caplog.text
    # The floor: a balanced training sample against that reference, as close as two real samples are.
    assert 0 < evaluator.distances(None, prefix="real")["real/fid"] < 2


@pytest.fixture(scope="module")
def evaluator(data_dir: Path) -> Evaluator:
    return Evaluator("mnist", str(data_dir), num_per_class=20, progress=False)


def test_real_images_score_like_real_images_and_noise_does_not(evaluator: Evaluator, data_dir: Path) -> None:
    real = evaluator.real_metrics()
    assert real["real/classifier_accuracy"] >= 0.97
    assert set(class_keys("mnist")) == {k.rsplit("/", 1)[1] for k in real if k.startswith("real/classifier_accuracy/")}
    noise = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(10).repeat_interleave(20)
    fake = evaluator.score(noise, labels)
    assert fake["generated/classifier_accuracy"] < 0.3
    assert fake["generated/fid"] > 20 * real["real/fid"] and fake["generated/kid"] > real["real/kid"]
    # The reference scored against itself: distance zero up to float error.
    same = evaluator.score(*evaluator.reference)
    assert same["generated/fid"] < 1e-2 and same["generated/classifier_accuracy"] == real["real/classifier_accuracy"]
    # Wrong labels on real images: the classifier notices, the label-blind distances do not.
    shifted = evaluator.score(evaluator.reference[0], (evaluator.reference[1] + 1) % 10)
    assert shifted["generated/classifier_accuracy"] < 0.05
    assert shifted["generated/fid"] == pytest.approx(same["generated/fid"], abs=1e-2)


class ImageFeatures(torch.nn.Module):
    """The classifier's features of images, as torchmetrics' FID and KID take a feature extractor."""

    num_features = 128

    def __init__(self, classifier: ReferenceClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


def test_one_classifier_pass_gives_the_metrics_each_computed_from_the_images(evaluator: Evaluator) -> None:
    """Accuracy, FID/KID and precision/recall share the classifier's features of a set: the same numbers."""
    generator = torch.Generator().manual_seed(0)
    images = (evaluator.train_sample[0] + 0.3 * torch.rand(evaluator.train_sample[0].shape, generator=generator)) / 1.3
    labels = evaluator.train_sample[1]
    torch.manual_seed(0)  # KID draws its subsets from the global generator
    scored = evaluator.score(images, labels)

    classifier = evaluator.classifier
    with torch.no_grad():
        correct = classifier(images).argmax(1) == labels
        metrics = {"fid": FrechetInceptionDistance(ImageFeatures(classifier)), "kid": KernelInceptionDistance(
            ImageFeatures(classifier), subset_size=len(evaluator.reference[1]) // 2, subsets=50)}  # fmt: skip
        for metric in metrics.values():
            metric.update(evaluator.reference[0], real=True)
            metric.update(images, real=False)
        torch.manual_seed(0)
        kid, kid_std = metrics["kid"].compute()
        expected = fidelity_variety(classifier.features(images), classifier.features(evaluator.reference[0]))
    assert scored["generated/classifier_accuracy"] == float(correct.float().mean())
    assert scored["generated/fid"] == pytest.approx(float(metrics["fid"].compute()), rel=1e-6)
    assert (scored["generated/kid"], scored["generated/kid_std"]) == pytest.approx((float(kid), float(kid_std)))
    assert {name: scored[f"generated/{name}"] for name in expected} == pytest.approx(expected)


def test_score_refuses_mismatched_input(evaluator: Evaluator) -> None:
    with pytest.raises(ValueError, match=r"shape \[N, 1, 28, 28\]"):
        evaluator.score(torch.rand(4, 3, 28, 28), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        evaluator.score(torch.rand(4, 1, 28, 28), torch.zeros(3, dtype=torch.long))
    diverged = torch.rand(20, 1, 28, 28)
    diverged[3, 0, 5, 5] = float("nan")  # a diverged model's samples: FID's eigen solver would crash on them
    with pytest.raises(ValueError, match="NaN or infinite values: the model has diverged"):
        evaluator.score(diverged, torch.arange(10).repeat(2))


@pytest.mark.slow
@pytest.mark.usefixtures("reference_classifiers")  # Fashion-MNIST too
def test_inception_reference_is_cached_with_the_same_result(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    scratch = scratch_data_dir(data_dir, tmp_path, "classifiers", "downloads", "inception")
    first = Evaluator("fashion_mnist", str(scratch), num_per_class=2, inception=True, progress=False)
    floor = first.real_metrics()["real/inception_fid"]
    assert len(list((scratch / "eval_cache").glob("inception_fashion_mnist_2per_class_seed0_*.pt"))) == 1
    calls = []
    monkeypatch.setattr(evaluator_module, "_rgb_uint8", lambda images: calls.append(1))
    second = Evaluator("fashion_mnist", str(scratch), num_per_class=2, inception=True, progress=False)
    assert second.real_metrics()["real/inception_fid"] == pytest.approx(floor, rel=1e-6)
    assert not calls, "the cached reference needs no Inception pass"
    assert np.isfinite(floor) and floor > 0


@pytest.mark.usefixtures("reference_classifiers")  # Fashion-MNIST too
def test_clip_metrics_join_the_others(data_dir: Path, tiny_clip_dir: Path) -> None:
    from diffusion_lab.evaluation.clip import load_clip_scorer
    from tests.test_clip_score import PROMPTS

    clip = load_clip_scorer(PROMPTS, "fashion_mnist", model_name=f"local-dir:{tiny_clip_dir}")
    assert isinstance(clip, ClipScorer)
    evaluator = Evaluator("fashion_mnist", str(data_dir), num_per_class=4, clip=clip, progress=False)
    real = evaluator.real_metrics()
    for key in ("clip_score", "clip_zero_shot_accuracy", "clip_good_fraction"):
        assert f"real/{key}" in real and f"real/{key}/ankle_boot" in real
    assert "real/classifier_accuracy/t_shirt_top" in real
