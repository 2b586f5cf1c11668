"""LightningDataModule for MNIST and Fashion-MNIST, held in memory as tensors."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from diffusion_lab.datasets import dataset_info, load_arrays, prepare


class InMemoryDataset(Dataset):
    """Images in [-1, 1] as ``[N, 1, 28, 28]`` float32 and labels ``[N]`` int64.

    ``__getitems__`` returns a whole batch with one indexing operation, so a DataLoader over
    it costs no per-item Python work.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


def _batch_as_is(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate function for batches that ``__getitems__`` already stacked."""
    return batch


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
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
        download: bool = False,
    ) -> None:
        super().__init__()
        self.info = dataset_info(name)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.name = name
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction = val_fraction
        self.split_seed = split_seed
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

    def prepare_data(self) -> None:
        prepare(self.name, self.data_dir, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        arrays = load_arrays(self.name, self.data_dir)
        images = to_unit_range(torch.from_numpy(arrays["train_images"]))
        labels = torch.from_numpy(arrays["train_labels"])
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        num_val = round(len(labels) * self.val_fraction)
        val_idx, train_idx = order[:num_val], order[num_val:]
        self.data_train = InMemoryDataset(images[train_idx], labels[train_idx])
        self.data_val = InMemoryDataset(images[val_idx], labels[val_idx])
        self.data_test = InMemoryDataset(
            to_unit_range(torch.from_numpy(arrays["test_images"])), torch.from_numpy(arrays["test_labels"])
        )

    def _loader(self, dataset: InMemoryDataset | None, batch_size: int, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train, collate_fn=_batch_as_is)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, self.eval_batch_size, train=False)
