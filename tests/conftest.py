"""Shared fixtures: the real config tree composed as the entry point composes it, and the real data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from diffusion_lab.config import CONF_DIR, project_root

DATA_DIR = project_root() / "data"


@pytest.fixture
def compose_train(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose ``conf/train.yaml`` with overrides, with ``paths.output_dir`` set to a temp folder."""

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
