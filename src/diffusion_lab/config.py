"""Where the config tree and the project folder are, and the OmegaConf resolvers the configs use."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from diffusion_lab.data.sources import dataset_info
from diffusion_lab.data.styles import STYLE_NAMES

#: The config tree every command composes: the package ``diffusion_lab.conf``, shipped with the code.
CONF_MODULE = "diffusion_lab.conf"
#: Hydra's name for it, as a config source (``config_path`` of every command).
CONF_SOURCE = f"pkg://{CONF_MODULE}"
#: The same tree as a folder, to read single files of it (an installed package is a folder too).
CONF_DIR = Path(__file__).resolve().parent / "conf"


def project_root() -> Path:
    """Where ``data/`` and ``outputs/`` live: ``DIFFUSION_LAB_ROOT`` if set, else the checkout this package
    runs from (a source or editable install), else the current folder (an installed package)."""
    if "DIFFUSION_LAB_ROOT" in os.environ:
        return Path(os.environ["DIFFUSION_LAB_ROOT"]).resolve()
    package = Path(__file__).resolve().parent
    if package.parent.name == "src" and (package.parents[1] / "pyproject.toml").is_file():
        return package.parents[1]
    return Path.cwd()


def run_id(run_dir: str) -> str:
    """A logger run id that is the same for every start of the run in ``run_dir``, so a resume continues it."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


#: Set for the process that trains a DDP job of a sweep (:mod:`diffusion_lab.training.ddp`): the sweep's group.
SWEEP_GROUP_ENV = "DIFFUSION_LAB_SWEEP_GROUP"


def sweep_group() -> str | None:
    """``sweep-<date_time>`` (the sweep folder's name) in a job of a ``-m`` sweep, else None: a wandb group."""
    if SWEEP_GROUP_ENV in os.environ:
        return os.environ[SWEEP_GROUP_ENV]
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return f"sweep-{Path(HydraConfig.get().sweep.dir).name}"


def job_name() -> str | None:
    """The job's command-line overrides (``model=base,schedule=linear``), or None without any: a run name."""
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().job.override_dirname or None


def register_resolvers() -> None:
    """``${project_root:}``, ``${num_classes:NAME}``, ``${num_styles:ON}``, ``${run_id:DIR}``, ``${sweep_group:}``
    and ``${job_name:}`` for the config tree."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("num_classes"):
        OmegaConf.register_new_resolver("num_classes", lambda name: dataset_info(name).num_classes)
    if not OmegaConf.has_resolver("num_styles"):
        OmegaConf.register_new_resolver("num_styles", lambda on: len(STYLE_NAMES) if on else 0)
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id)
    if not OmegaConf.has_resolver("sweep_group"):
        OmegaConf.register_new_resolver("sweep_group", sweep_group)
    if not OmegaConf.has_resolver("job_name"):
        OmegaConf.register_new_resolver("job_name", job_name)


register_resolvers()
