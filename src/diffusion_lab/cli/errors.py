"""One-line errors: a bad input ends a command with one ``error:`` line, not a traceback.

Hydra reports a bad command line (an unknown group option such as ``data=cifar``, a misspelt key,
broken override syntax) in several lines; :func:`one_line` makes one line of it. In a ``-m`` sweep a
failing job does not end the sweep: it fails alone (:func:`fail`), the other jobs run, and the sweep
exits 1 at the end. ``HYDRA_FULL_ERROR=1`` still gives the full traceback of anything.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException, MissingConfigException
from hydra.types import RunMode
from omegaconf.errors import OmegaConfBaseException

from diffusion_lab.config_schema import ConfigError
from diffusion_lab.extras import missing_plugin
from diffusion_lab.utils.files import JOB_ERROR_FILE, atomic_write_text

log = logging.getLogger(__name__)

#: Set while :func:`diffusion_lab.cli.app.hydra_app` asks Hydra to raise, so that the user's own
#: HYDRA_FULL_ERROR=1 stays distinguishable (also in the processes DDP starts, which inherit the environment).
RAISING_ENV = "DIFFUSION_LAB_HYDRA_RAISES"


def full_error_requested() -> bool:
    """True when the user set ``HYDRA_FULL_ERROR=1`` and wants tracebacks."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(RAISING_ENV) != "1"


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line; a Hydra command-line error says what to type instead."""
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, ValueError):
        err = err.__cause__  # our own checks name the config key and the fix
    if isinstance(err, ConfigError):
        return "; ".join(err.lines)
    if isinstance(err, MissingConfigException) and (extra := missing_plugin(err.missing_cfg_file)) is not None:
        return str(extra)  # a launcher or sweeper whose plugin the base install leaves out
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return f"{group}={name} is not an option: use one of {', '.join(sorted(err.options))}"
    text = str(err).split("Config search path")[0]
    if isinstance(err, HydraException) and isinstance(err.__cause__, OmegaConfBaseException):
        text += f" ({str(err.__cause__).splitlines()[0]})"
    return " ".join(text.split())


def exit_with(err: BaseException | str) -> NoReturn:
    """Print ``err`` as one ``error: ...`` line (a :class:`ConfigError`: one per bad value) and exit 1.

    ``HYDRA_FULL_ERROR=1`` re-raises an exception instead.
    """
    if isinstance(err, BaseException) and full_error_requested():
        raise err
    lines = err.lines if isinstance(err, ConfigError) else [err if isinstance(err, str) else one_line(err)]
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    sys.exit(1)


class JobFailed(Exception):
    """One job of a ``-m`` sweep failed; its message is the one line that says why."""


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
    atomic_write_text(Path(HydraConfig.get().runtime.output_dir) / JOB_ERROR_FILE, one_line(err) + "\n")
    raise JobFailed(message) from err
