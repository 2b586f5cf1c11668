"""What the command-line entry points share: a bad input ends the run with one line, not a traceback.

Hydra reports a bad command line (an unknown group option such as ``data=cifar``, a misspelt key,
broken override syntax) in several lines; :func:`hydra_app` turns those into one ``error:`` line as
well. ``HYDRA_FULL_ERROR=1`` still gives the full traceback of anything.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hydra
import torch
from hydra.errors import HydraException, InstantiationException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from diffusion_lab.config import CONF_DIR

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
            except (HydraException, OmegaConfBaseException) as err:
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
