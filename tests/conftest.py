"""Shared fixtures: the real config tree composed as the entry point composes it, and the real data."""

from __future__ import annotations

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
from diffusion_lab.diffusion_module import CONFIG_KEY

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


@pytest.fixture
def make_checkpoint(compose_train: Callable[..., DictConfig], tmp_path: Path) -> Callable[..., Path]:
    """Write an untrained checkpoint as training writes it (weights + resolved config) for a small U-Net."""

    def _make(*overrides: str, name: str = "model.ckpt") -> Path:
        cfg = compose_train("model.unet.down_chs=[8,16]", "diffusion.timesteps=100", *overrides)
        torch.manual_seed(0)
        model = instantiate(cfg.model, schedule=instantiate(cfg.schedule))
        path = tmp_path / name
        torch.save({"state_dict": model.state_dict(), CONFIG_KEY: OmegaConf.to_container(cfg, resolve=True)}, path)
        return path

    return _make
