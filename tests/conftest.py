"""Shared fixtures: the real config tree composed as the entry point composes it, and the real data."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion_lab.config import CONF_DIR, project_root
from diffusion_lab.data.datamodule import MNISTDataModule
from diffusion_lab.data.styles import StyleStats
from diffusion_lab.evaluation.classifier import ReferenceClassifier, load_classifier
from diffusion_lab.models.checkpoints import CONFIG_KEY, STYLE_STATS_KEY
from tests.helpers import TINY_CLIP

DATA_DIR = project_root() / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs one worker per core, up to 4), give each worker its share of the
    cores as torch threads, also for the entry points the tests start as subprocesses: workers that each use
    every core run far slower than one."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = max(1, (os.cpu_count() or 1) // int(workers))
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the test files longest first; skip the ``gpu`` tests on a machine without a CUDA GPU, saying so.

    pytest-xdist runs each file on one worker (``--dist loadfile``: a file's shared runs are made once) and hands
    out files in this order, so that the last ones are short and no worker is left alone with a long one. A
    file's length is guessed by its number of ``slow`` test functions (end-to-end runs).
    """
    slow: dict[str, set[str]] = {}
    for item in items:
        names = slow.setdefault(item.nodeid.split("::")[0], set())
        if item.get_closest_marker("slow") is not None:
            names.add(getattr(item, "originalname", item.name))
    items.sort(key=lambda item: -len(slow[item.nodeid.split("::")[0]]))  # stable: a file's order is kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (the gpu marker)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def compose_train(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose ``src/diffusion_lab/conf/train.yaml`` with overrides, with ``paths.output_dir`` set to a temp folder."""

    def _compose(*overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", return_hydra_config=True, overrides=list(overrides))
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg.hydra  # the entry point's config has no `hydra` key; ${hydra:...} reads HydraConfig
            cfg.paths.output_dir = str(tmp_path)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The prepared data of the checkout (``make data``)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def style_stats(data_dir: Path) -> Callable[[str], StyleStats]:
    """The training split's style distribution of a dataset, as a styled training run records it (cached)."""
    cache: dict[str, StyleStats] = {}

    def _stats(name: str) -> StyleStats:
        if name not in cache:
            data = MNISTDataModule(name, data_dir, styles=True)
            data.setup()
            cache[name] = data.style_stats
        return cache[name]

    return _stats


@pytest.fixture
def make_checkpoint(
    compose_train: Callable[..., DictConfig], tmp_path: Path, style_stats: Callable[[str], StyleStats]
) -> Callable[..., Path]:
    """Write an untrained checkpoint as training writes it (weights + resolved config) for a small U-Net.

    It has the eps objective, which every sampler but flow and EDM Euler fits (``objective=flow`` overrides it).

    With ``model.style_conditioning=true`` it also holds the dataset's style distribution.
    """

    def _make(*overrides: str, name: str = "model.ckpt") -> Path:
        cfg = compose_train("objective=eps", "model.unet.down_chs=[8,16]", "diffusion.timesteps=100", *overrides)
        torch.manual_seed(0)
        model = instantiate(cfg.model, objective=instantiate(cfg.objective))
        checkpoint = {"state_dict": model.state_dict(), CONFIG_KEY: OmegaConf.to_container(cfg, resolve=True)}
        if cfg.model.style_conditioning:
            checkpoint[STYLE_STATS_KEY] = style_stats(cfg.data.name).to_dict()
        path = tmp_path / name
        torch.save(checkpoint, path)
        return path

    return _make


@pytest.fixture(scope="session", autouse=True)
def _fashion_classifier_first(request: pytest.FixtureRequest, data_dir: Path) -> None:
    """Under pytest-xdist, the first worker trains the Fashion-MNIST reference classifier (twice MNIST's steps)
    before its first test on a fresh checkout, when a collected test needs it, while another worker trains the
    MNIST one on first use: the two run at once and the MNIST tests never wait for Fashion-MNIST's."""
    if os.environ.get("PYTEST_XDIST_WORKER") != "gw0" or int(os.environ["PYTEST_XDIST_WORKER_COUNT"]) < 2:
        return
    if any("reference_classifiers" in getattr(item, "fixturenames", ()) for item in request.session.items):
        load_classifier("fashion_mnist", data_dir, progress=False)


@pytest.fixture(scope="session")
def mnist_classifier(data_dir: Path) -> tuple[ReferenceClassifier, float]:
    """The MNIST reference classifier, trained once into ``data/classifiers`` (a cache) for the tests whose runs and
    evaluations score MNIST samples.

    Training runs with sample quality, the evaluation and its command all read this cache; training it
    up front, in the tests that use it, keeps the minute-long first use out of the timed subprocess tests.
    Processes that need it at once train it once (``load_classifier`` makes the others wait, then read it).
    """
    return load_classifier("mnist", data_dir, progress=False)


@pytest.fixture(scope="session")
def reference_classifiers(
    data_dir: Path, mnist_classifier: tuple[ReferenceClassifier, float]
) -> dict[str, tuple[ReferenceClassifier, float]]:
    """Both reference classifiers (see :func:`mnist_classifier`), for the tests that also score Fashion-MNIST."""
    return {"mnist": mnist_classifier, "fashion_mnist": load_classifier("fashion_mnist", data_dir, progress=False)}


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as open_clip saves a model (``open_clip_config.json`` + weights) with a random tiny CLIP.

    Use it as ``clip.model_name=local-dir:FOLDER``; ``FOLDER/open_clip_pytorch_model.bin`` is the
    weights file on its own.
    """
    import open_clip

    folder = tmp_path_factory.mktemp("tiny_clip")
    config = {"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder
