"""Where the project's config tree lives, and the OmegaConf resolvers the configs use."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from diffusion_lab.datasets import dataset_info


def project_root() -> Path:
    """The checkout that holds ``conf/`` (``DIFFUSION_LAB_ROOT`` overrides; else the current folder)."""
    if "DIFFUSION_LAB_ROOT" in os.environ:
        return Path(os.environ["DIFFUSION_LAB_ROOT"]).resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "conf" / "train.yaml").is_file():
        return checkout
    return Path.cwd()


CONF_DIR = project_root() / "conf"


def register_resolvers() -> None:
    """``${project_root:}`` and ``${num_classes:NAME}`` for the config tree."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("num_classes"):
        OmegaConf.register_new_resolver("num_classes", lambda name: dataset_info(name).num_classes)


register_resolvers()
