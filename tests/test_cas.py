"""Classification Accuracy Score: a classifier trained on a set, scored on the real test set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion_lab.data.sources import load_arrays
from diffusion_lab.evaluation import cas as cas_module
from diffusion_lab.evaluation.cas import cas_metrics, classification_accuracy_score
from diffusion_lab.evaluation.classifier import load_classifier, split_images
from diffusion_lab.evaluation.evaluator import balanced_subset


def score_on_fewer_test_images(monkeypatch: pytest.MonkeyPatch, count: int = 1000) -> None:
    """Let CAS measure its classifiers on the first ``count`` real test images, not all 10,000: the mechanism."""

    def first_test_images(arrays: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = split_images(arrays, split)
        return (images[:count], labels[:count]) if split == "test" else (images, labels)

    monkeypatch.setattr(cas_module, "split_images", first_test_images)


@pytest.mark.slow
def test_real_training_images_score_within_a_point_of_the_reference_classifier(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, reference_accuracy = load_classifier("mnist", data_dir, progress=False)
    # A fifth of the reference's steps on 1,000 images a class already lands within half a point of it.
    monkeypatch.setattr(cas_module, "reference_steps", lambda dataset: 300)
    real = balanced_subset(*split_images(load_arrays("mnist", data_dir), "train"), 1000, seed=1)
    score = classification_accuracy_score(*real, "mnist", str(data_dir), progress=False)
    assert score == pytest.approx(reference_accuracy, abs=0.01)


def test_images_with_the_wrong_labels_teach_nothing(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cas_module, "reference_steps", lambda dataset: 40)  # the mechanism, not the recipe
    score_on_fewer_test_images(monkeypatch)
    images, labels = balanced_subset(*split_images(load_arrays("mnist", data_dir), "train"), 100, seed=1)
    right = classification_accuracy_score(images, labels, "mnist", str(data_dir), progress=False)
    wrong = classification_accuracy_score(images, (labels + 1) % 10, "mnist", str(data_dir), progress=False)
    assert right > 0.8 and wrong < 0.05, (right, wrong)


def test_cas_metrics_use_the_first_images_of_each_class_and_name_a_short_class(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(cas_module, "reference_steps", lambda dataset: 5)
    score_on_fewer_test_images(monkeypatch, 100)
    seen = []
    real_score = cas_module.classification_accuracy_score

    def spy(images: torch.Tensor, labels: torch.Tensor, *args, **kwargs) -> float:
        seen.append(labels.tolist())
        return real_score(images, labels, *args, **kwargs)

    monkeypatch.setattr(cas_module, "classification_accuracy_score", spy)
    labels = torch.arange(10).repeat_interleave(5)
    metrics = cas_metrics(torch.rand(50, 1, 28, 28), labels, "mnist", str(data_dir), per_class=3)
    assert set(metrics) == {"generated/cas", "real/cas"}
    assert seen == [[c for c in range(10) for _ in range(3)]] * 2, "3 generated and 3 real images per class"
    assert "CAS: classifier on 30 generated images" in capsys.readouterr().err, "a progress bar"
    with pytest.raises(ValueError, match="cas_per_class=6 but class 0 has 5 generated images: lower cas_per_class"):
        cas_metrics(torch.rand(50, 1, 28, 28), labels, "mnist", str(data_dir), per_class=6)
