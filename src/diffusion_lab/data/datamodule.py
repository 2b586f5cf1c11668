"""LightningDataModule for MNIST and Fashion-MNIST, held as tensors on the training device.

The splits are small (54,000 training images are 170 MB as float32), so each lives as one tensor on
the device the Trainer trains on, and a batch is one indexing operation there: no DataLoader, no
worker processes, no host-to-device copy per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffusion_lab.data.labels import Label, label_index
from diffusion_lab.data.sources import dataset_info, load_arrays, prepare
from diffusion_lab.data.styles import StyleStats, measure
from diffusion_lab.rules import VAL_FRACTION

#: A batch: images ``[B, 1, 28, 28]`` and labels ``[B]``, then raw style attributes ``[B, 2]`` when the data has them.
Batch = tuple[Tensor, ...]


class InMemoryDataset(Dataset):
    """Images in [-1, 1] as ``[N, 1, 28, 28]`` float32 and labels ``[N]`` int64, on one device.

    ``styles`` (optional) holds each image's raw style attributes ``[N, 2]`` (``diffusion_lab.data.styles``).
    """

    def __init__(self, images: Tensor, labels: Tensor, styles: Tensor | None = None) -> None:
        self.images = images
        self.labels = labels
        self.styles = styles

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Batch:
        return self.select(index)

    def select(self, index: int | Tensor) -> Batch:
        """``(images, labels)``, with ``styles`` last when the split has them, at ``index``."""
        if self.styles is None:
            return self.images[index], self.labels[index]
        return self.images[index], self.labels[index], self.styles[index]

    def to(self, device: torch.device) -> InMemoryDataset:
        """The same split on ``device`` (itself when it is there already)."""
        if self.labels.device == device:
            return self
        styles = None if self.styles is None else self.styles.to(device)
        return InMemoryDataset(self.images.to(device), self.labels.to(device), styles)


class EpochOrder:
    """Which samples one rank sees in one epoch, like ``DistributedSampler``.

    With ``shuffle`` the order is a permutation seeded by ``seed + epoch``, the same on every rank,
    and rank r takes every ``world_size``-th sample from position r; every rank gets the same
    number of samples (a few are left out when the split does not divide). Without it, rank r takes
    samples r, r + world_size, ... in order, and none is left out. Lightning calls
    :meth:`set_epoch` at the start of each epoch, also after a resume.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.shuffle:
            return self.size // self.world_size
        return len(range(self.rank, self.size, self.world_size))

    def indices(self) -> Tensor:
        """``[len(self)]`` sample indices of this rank for the current epoch."""
        if not self.shuffle:
            return torch.arange(self.rank, self.size, self.world_size)
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return order[self.rank : len(self) * self.world_size : self.world_size]


class TensorBatches:
    """Batches ``(images [B, 1, 28, 28], labels [B])``, plus ``styles [B, 2]`` when the split has them,
    indexed straight out of an :class:`InMemoryDataset`.

    An iterable Lightning accepts in place of a DataLoader. Like a DataLoader it has a ``sampler``
    (the :class:`EpochOrder`, which Lightning reshuffles each epoch) and a ``batch_sampler`` (None).

    It is stateful the way Lightning's fit loop expects: :meth:`state_dict` is the position in the
    epoch's order (the epoch and the batches handed out in it), which Lightning stores in every
    checkpoint; after :meth:`load_state_dict` the next pass over that epoch continues after those
    batches, so a run resumed mid-epoch trains on the batches an uninterrupted run trains on.
    """

    def __init__(self, dataset: InMemoryDataset, batch_size: int, order: EpochOrder, drop_last: bool) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = order
        self.batch_sampler = None
        self.drop_last = drop_last
        self._position = (order.epoch, 0)  # (epoch, batches of it handed out)
        self._resuming = False

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def __iter__(self) -> Iterator[Batch]:
        indices = self.sampler.indices().to(self.dataset.labels.device)
        epoch, handed_out = self._position
        skip = handed_out if self._resuming and epoch == self.sampler.epoch else 0
        self._resuming = False
        for batch in range(skip, len(self)):
            self._position = (self.sampler.epoch, batch + 1)
            start = batch * self.batch_size
            yield self.dataset.select(indices[start : start + self.batch_size])

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: the epoch of the order and how many of its batches were handed out."""
        epoch, handed_out = self._position
        return {"epoch": self.sampler.epoch, "batches": handed_out if epoch == self.sampler.epoch else 0}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue the next pass over epoch ``state_dict["epoch"]`` after its first ``state_dict["batches"]``."""
        self._position = (int(state_dict["epoch"]), int(state_dict["batches"]))
        self._resuming = True


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 ``[N, 28, 28]`` -> float32 ``[N, 1, 28, 28]`` in [-1, 1]."""
    return (images.float().div_(127.5).sub_(1.0)).unsqueeze(1)


class MNISTDataModule(L.LightningDataModule):
    """Train/val split of the official 60,000 training images, plus the official 10,000 test images.

    Args:
        name: ``mnist`` or ``fashion_mnist``.
        data_dir: where prepared arrays (and downloaded sources) live.
        batch_size: images per training batch.
        val_fraction: share of the training images held out for validation.
        split_seed: seed of the train/val permutation, fixed so runs compare.
        eval_batch_size: images per validation/test batch (defaults to ``batch_size``).
        shuffle: draw the training batches in a new order each epoch; off, every epoch walks the split in the
            same order (``debug=overfit`` trains on its first batch only).
        shuffle_seed: seed of the per-epoch training order (None: the run's seed, ``torch.initial_seed()``).
        styles: also give every image's style attributes (slant, thickness), measured once in
            :meth:`setup`, with their training-set distribution in :attr:`style_stats`.
        download: fall back to torchvision's download when no offline source is present.
    """

    def __init__(
        self,
        name: str = "mnist",
        data_dir: str | Path = "data",
        batch_size: int = 128,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        eval_batch_size: int | None = None,
        shuffle: bool = True,
        shuffle_seed: int | None = None,
        styles: bool = False,
        download: bool = False,
    ) -> None:
        super().__init__()
        self.info = dataset_info(name)
        VAL_FRACTION.check("data.val_fraction", val_fraction)
        self.name = name
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.shuffle = shuffle
        self.shuffle_seed = shuffle_seed
        self.styles = styles
        self.style_stats: StyleStats | None = None
        self.download = download
        self.data_train: InMemoryDataset | None = None
        self.data_val: InMemoryDataset | None = None
        self.data_test: InMemoryDataset | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return self.info.image_shape

    def prepare_data(self) -> None:
        prepare(self.name, self.data_dir, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits onto the Trainer's device (the CPU without a Trainer); they are read once."""
        if self.data_train is None:
            arrays = load_arrays(self.name, self.data_dir)
            images = to_unit_range(torch.from_numpy(arrays["train_images"]))
            labels = torch.from_numpy(arrays["train_labels"])
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
            num_val = round(len(labels) * self.val_fraction)
            val_idx, train_idx = order[:num_val], order[num_val:]
            test_images = to_unit_range(torch.from_numpy(arrays["test_images"]))
            styles = test_styles = None
            if self.styles:
                styles, test_styles = measure((images + 1) / 2), measure((test_images + 1) / 2)
                self.style_stats = StyleStats.from_values(styles[train_idx])
            everything = InMemoryDataset(images, labels, styles)
            self.data_train = InMemoryDataset(*everything.select(train_idx))
            self.data_val = InMemoryDataset(*everything.select(val_idx))
            self.data_test = InMemoryDataset(test_images, torch.from_numpy(arrays["test_labels"]), test_styles)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.data_train, self.data_val, self.data_test = (split.to(device) for split in self.splits())

    def splits(self) -> tuple[InMemoryDataset, InMemoryDataset, InMemoryDataset]:
        """``(train, val, test)`` after :meth:`setup`."""
        if self.data_train is None or self.data_val is None or self.data_test is None:
            raise RuntimeError("call setup() before asking for the splits")
        return self.data_train, self.data_val, self.data_test

    def _batches(self, dataset: InMemoryDataset, batch_size: int, train: bool) -> TensorBatches:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        seed = torch.initial_seed() if self.shuffle_seed is None else self.shuffle_seed
        order = EpochOrder(len(dataset), shuffle=train and self.shuffle, seed=seed, rank=rank, world_size=world)
        if train and len(order) < batch_size:  # drop_last would leave no batch at all
            per_rank = f" per process ({world} processes)" if world > 1 else ""
            raise ValueError(
                f"data.batch_size={batch_size} is larger than the {len(order)} training images of {self.name}"
                f"{per_rank}: use at most {len(order)}, e.g. data.batch_size=128"
            )
        return TensorBatches(dataset, batch_size, order, drop_last=train)

    def train_dataloader(self) -> TensorBatches:
        return self._batches(self.splits()[0], self.batch_size, train=True)

    def val_dataloader(self) -> TensorBatches:
        return self._batches(self.splits()[1], self.eval_batch_size, train=False)

    def test_dataloader(self) -> TensorBatches:
        return self._batches(self.splits()[2], self.eval_batch_size, train=False)


def first_test_image(dataset: str, label: Label, data_dir: str | Path) -> Tensor:
    """``[C, H, W]`` in [-1, 1]: the first test image of class ``label`` (an index or a name) of ``dataset``."""
    index = label_index(label, dataset_info(dataset).class_names)
    arrays = load_arrays(dataset, data_dir)
    (positions,) = np.nonzero(arrays["test_labels"] == index)
    return to_unit_range(torch.from_numpy(arrays["test_images"][positions[:1]]))[0]
