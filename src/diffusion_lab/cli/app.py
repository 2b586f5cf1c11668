"""The Hydra application every command runs as: the project's config tree, one-line errors, the right experiment.

Each experiment (``conf/experiment/NAME.yaml``) names the command it belongs to in its ``task_name`` key,
as every command's own config does (``conf/train.yaml``: ``task_name: train``). An experiment given to
another command is refused before Hydra composes anything or makes a run folder, with one line naming
the command to run instead.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import hydra
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffusion_lab.cli.errors import RAISING_ENV, JobFailed, exit_with, fail, full_error_requested
from diffusion_lab.config import CONF_DIR, CONF_MODULE, CONF_SOURCE
from diffusion_lab.config_schema import SCHEMAS, ConfigError, check_config
from diffusion_lab.extras import MissingExtra, check_choices

#: A hint at what to pass for ``ckpt=``, in the line that names another command's experiment.
CKPT_HINT = "ckpt=outputs/train/<run>/checkpoints/last.ckpt"


def experiment_names(argv: Sequence[str]) -> list[str]:
    """The experiments a command line asks for (``experiment=a,b`` in a sweep gives both)."""
    values = [arg.split("=", 1)[1] for arg in argv if arg.lstrip("+").startswith("experiment=")]
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def wrong_experiment(command: str, argv: Sequence[str]) -> str | None:
    """For ``experiment=NAME`` whose ``task_name`` is another command, a line naming that command; else None."""
    for name in experiment_names(argv):
        path = CONF_DIR / "experiment" / f"{name}.yaml"
        if not path.is_file():
            continue  # Hydra names the options
        experiment = OmegaConf.load(path)
        owner = experiment.get("task_name")
        if owner in (None, command):
            continue
        sweep = " -m" if OmegaConf.select(experiment, "hydra.sweeper.params") else ""
        owner_config = CONF_DIR / f"{owner}.yaml"
        ckpt = f" {CKPT_HINT}" if owner_config.is_file() and "ckpt" in OmegaConf.load(owner_config) else ""
        return (
            f"experiment={name} is not a diffusion-lab-{command} experiment (its task_name is {owner}): "
            f"run diffusion-lab-{owner}{sweep} experiment={name}{ckpt}"
        )
    return None


def precheck(config_name: str, argv: Sequence[str]) -> None:
    """Compose the command line's config and check it (:func:`check_config`) before Hydra makes a run folder.

    So a bad value writes nothing, not even the run folder's ``.hydra/``. A ``-m`` sweep or any other
    Hydra flag is left to the check inside each job. Raises what composing raises, :class:`ConfigError`,
    or :class:`MissingExtra` for a chosen feature whose extra is not installed.
    """
    if config_name not in SCHEMAS or any(arg.startswith("-") for arg in argv):
        return
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(argv), return_hydra_config=True)
    check_config(cfg, config_name, resolve_runtime=False)
    check_choices(cfg.hydra.runtime.choices, argv)


def hydra_app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``hydra.main`` on the package's config tree (``conf/CONFIG_NAME.yaml``), with one-line errors."""

    def decorator(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def checked_task(cfg: DictConfig) -> Any:
            hydra_cfg = HydraConfig.get()
            try:
                if config_name in SCHEMAS:
                    check_config(cfg, config_name)
                check_choices(hydra_cfg.runtime.choices, hydra_cfg.overrides.task)
            except (ConfigError, MissingExtra) as err:
                fail(err)
            return task(cfg)

        hydra_main = hydra.main(version_base="1.3", config_path=CONF_SOURCE, config_name=config_name)(checked_task)

        @functools.wraps(task)
        def main() -> Any:
            if (message := wrong_experiment(config_name, sys.argv[1:])) is not None:
                exit_with(message)
            if full_error_requested():
                return hydra_main()
            saved = {key: os.environ.get(key) for key in ("HYDRA_FULL_ERROR", RAISING_ENV)}
            os.environ.update({"HYDRA_FULL_ERROR": "1", RAISING_ENV: "1"})  # Hydra raises; we print one line
            try:
                precheck(config_name, sys.argv[1:])
                return hydra_main()
            except (HydraException, OmegaConfBaseException, JobFailed, ConfigError, MissingExtra) as err:
                exit_with(err)
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value

        return main

    return decorator
