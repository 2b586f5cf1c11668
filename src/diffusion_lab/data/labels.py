"""Class labels as people write them: an index, a class name in any case, or ``all``."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

from diffusion_lab.data.sources import dataset_info
from diffusion_lab.rules import is_int

#: A class as a caller names it: an index (``7``) or a class name (``"trouser"``, ``"Ankle boot"``).
Label = int | str


def slug(name: str) -> str:
    """``Ankle boot`` -> ``ankle_boot``: a class name as a key, a file name or a command-line label."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def label_index(label: Label, names: Sequence[str]) -> int:
    """A class index from an index or a class name (any case; ``ankle_boot``, ``Ankle boot``, ``t_shirt``).

    Raises:
        ValueError: naming the valid labels, for an unknown name or an index out of range.
    """
    if isinstance(label, bool):
        raise ValueError(f"label must be a class index or name, got {label!r}")
    if isinstance(label, int) or (isinstance(label, str) and label.strip().isdigit()):
        index = int(label)
        if 0 <= index < len(names):
            return index
        raise ValueError(f"label {index} is out of range: use 0..{len(names) - 1} or a class name")
    aliases: dict[str, int] = {}
    for i, name in enumerate(names):
        aliases[slug(name)] = i
        for part in name.split("/"):  # "T-shirt/top" also answers to "t_shirt" and "top"
            aliases.setdefault(slug(part), i)
    key = slug(str(label))
    if key in aliases:
        return aliases[key]
    choices = ", ".join(slug(n) for n in names)
    raise ValueError(f"unknown label {label!r}: use a class index 0..{len(names) - 1}, a name ({choices}) or all")


def resolve_labels(label: Label | Sequence[Label], num_samples: int, names: Sequence[str]) -> Tensor:
    """``[N]`` class indices: ``num_samples`` of one class, of each listed class, or of every class (``all``)."""
    if not is_int(num_samples) or num_samples <= 0:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if isinstance(label, str) and label.strip().lower() == "all":
        indices = list(range(len(names)))
    elif isinstance(label, (str, int)):
        indices = [label_index(label, names)]
    else:
        indices = [label_index(item, names) for item in label]
        if not indices:
            raise ValueError("label must name at least one class")
    return torch.tensor(indices, dtype=torch.long).repeat_interleave(num_samples)


def class_keys(dataset: str) -> tuple[str, ...]:
    """Metric-key names of the classes: ``0``..``9`` for MNIST, ``t_shirt_top``, ``trouser``... for Fashion."""
    return tuple(slug(name) for name in dataset_info(dataset).class_names)
