"""Class labels as people write them: indices, class names in any case, ``all``."""

from __future__ import annotations

import pytest

from diffusion_lab.data.labels import label_index, resolve_labels
from diffusion_lab.data.sources import dataset_info

FASHION = dataset_info("fashion_mnist").class_names
DIGITS = dataset_info("mnist").class_names


@pytest.mark.parametrize(
    ("label", "index"),
    [("trouser", 1), ("Trouser", 1), ("ankle_boot", 9), ("Ankle boot", 9), ("ankle-boot", 9), ("T-shirt/top", 0),
     ("t_shirt", 0), ("top", 0), ("sneaker", 7), (3, 3), ("3", 3)],
)  # fmt: skip
def test_fashion_class_names_map_to_their_indices(label: int | str, index: int) -> None:
    assert label_index(label, FASHION) == index


@pytest.mark.parametrize("index", range(10))
def test_every_fashion_name_round_trips(index: int) -> None:
    assert label_index(FASHION[index], FASHION) == index


def test_digit_labels() -> None:
    assert [label_index(str(d), DIGITS) for d in range(10)] == list(range(10))
    assert label_index(7, DIGITS) == 7


@pytest.mark.parametrize(
    ("label", "message"),
    [("truck", "unknown label 'truck': use a class index 0..9, a name (t_shirt_top, trouser"),
     (10, "label 10 is out of range: use 0..9"), (-1, "label -1 is out of range"), (True, "class index or name")],
)  # fmt: skip
def test_bad_labels_refused(label: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        label_index(label, FASHION)


def test_resolve_labels() -> None:
    assert resolve_labels(7, 3, DIGITS).tolist() == [7, 7, 7]
    assert resolve_labels("all", 2, DIGITS).tolist() == [d for d in range(10) for _ in range(2)]
    assert resolve_labels(["bag", 0], 1, FASHION).tolist() == [8, 0]
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="num_samples must be a positive integer"):
            resolve_labels(7, bad, DIGITS)
