"""What the command-line entry points share: a bad input ends the run with one line, not a traceback.

Hydra reports a bad command line (an unknown group option such as ``data=cifar``, a misspelt key,
broken override syntax, an experiment of another command) in several lines; :func:`hydra_app` turns
those into one ``error:`` line as well. In a ``-m`` sweep a failing job does not end the sweep: it
fails alone (:func:`fail`), the other jobs run, and the sweep exits 1 at the end. ``HYDRA_FULL_ERROR=1``
still gives the full traceback of anything.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, HydraException, InstantiationException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from diffusion_lab.checkpointing import atomic_write_text
from diffusion_lab.config import CONF_DIR

log = logging.getLogger(__name__)

#: Set while :func:`hydra_app` asks Hydra to raise, so that the user's own HYDRA_FULL_ERROR=1 stays
#: distinguishable (also in the processes DDP starts, which inherit the environment).
_RAISING = "DIFFUSION_LAB_HYDRA_RAISES"


def full_error_requested() -> bool:
    """True when the user set ``HYDRA_FULL_ERROR=1`` and wants tracebacks."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(_RAISING) != "1"


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line; a Hydra command-line error says what to type instead."""
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, ValueError):
        err = err.__cause__  # our own checks name the config key and the fix
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return f"{group}={name} is not an option: use one of {', '.join(sorted(err.options))}"
    text = str(err).split("Config search path")[0]
    if isinstance(err, HydraException) and isinstance(err.__cause__, OmegaConfBaseException):
        text += f" ({str(err.__cause__).splitlines()[0]})"
    return " ".join(text.split())


def exit_with(err: BaseException) -> NoReturn:
    """Print ``err`` as one ``error: ...`` line and exit 1 (``HYDRA_FULL_ERROR=1`` re-raises)."""
    if full_error_requested():
        raise err
    print(f"error: {one_line(err)}", file=sys.stderr)
    sys.exit(1)


class JobFailed(Exception):
    """One job of a ``-m`` sweep failed; its message is the one line that says why."""


#: Where a failed job of a sweep leaves its one-line reason (``diffusion-lab-report`` shows it).
ERROR_FILE = "error.txt"


def fail(err: BaseException) -> NoReturn:
    """End the task on ``err``: a single run prints one ``error:`` line and exits 1 (:func:`exit_with`).

    A job of a ``-m`` sweep logs that line, writes it to ``<job>/error.txt`` and raises :class:`JobFailed`,
    so Hydra goes on with the sweep's other jobs: the basic sweeper and the launchers run the whole
    batch and then end with the first failure, the Optuna sweeper counts a failed trial and goes on.
    """
    if full_error_requested() or not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        exit_with(err)
    job = HydraConfig.get().job
    message = f"job {job.num} ({job.override_dirname or 'no overrides'}) failed: {one_line(err)}"
    log.error(message)
    atomic_write_text(Path(HydraConfig.get().runtime.output_dir) / ERROR_FILE, one_line(err) + "\n")
    raise JobFailed(message) from err


def wrong_experiment(command: str, err: ConfigCompositionException, argv: list[str]) -> str | None:
    """For ``experiment=NAME`` of another command (it overrides a group this one lacks), a line naming its command."""
    match = re.search(r"Could not override '([^']+)'\. No match in the defaults list", str(err))
    names = [arg.split("=", 1)[1] for arg in argv if arg.startswith("experiment=")]
    if not match or not names:
        return None
    path = CONF_DIR / "experiment" / f"{names[-1]}.yaml"
    lines = (
        line.lstrip("#").split("#")[0].strip() for line in (path.read_text().splitlines() if path.is_file() else [])
    )
    usage = [
        line for line in lines if line.startswith("diffusion-lab-") and not line.startswith(f"diffusion-lab-{command} ")
    ]
    how = f"run {usage[0]}" if usage else f"see {path}"
    return (
        f"experiment={names[-1]} is not a diffusion-lab-{command} experiment (it sets {match[1]}, which "
        f"diffusion-lab-{command} has no group for): {how}"
    )


def hydra_app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``hydra.main`` on the project's config tree, with one-line errors for a bad command line."""

    def decorator(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(task)

        @functools.wraps(task)
        def main() -> Any:
            if full_error_requested():
                return hydra_main()
            saved = {key: os.environ.get(key) for key in ("HYDRA_FULL_ERROR", _RAISING)}
            os.environ.update({"HYDRA_FULL_ERROR": "1", _RAISING: "1"})  # Hydra raises; we print one line
            try:
                return hydra_main()
            except ConfigCompositionException as err:
                if (message := wrong_experiment(config_name, err, sys.argv[1:])) is None:
                    exit_with(err)
                print(f"error: {message}", file=sys.stderr)
                sys.exit(1)
            except (HydraException, OmegaConfBaseException, JobFailed) as err:
                exit_with(err)
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value

        return main

    return decorator


def resolve_device(device: str) -> torch.device:
    """``auto`` is the GPU when there is one, else the CPU; otherwise any torch device string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no GPU is visible: use device=cpu (or auto)")
    return resolved


def checkpoint_path(ckpt: str | None) -> Path:
    """The checkpoint file named by ``ckpt=``, or a one-line reason it cannot be used."""
    if not ckpt:
        raise ValueError("ckpt=PATH is required: a checkpoint of diffusion-lab-train (its checkpoints/last.ckpt)")
    path = Path(ckpt)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path} (pass ckpt=PATH to a .ckpt file written by training)")
    return path
