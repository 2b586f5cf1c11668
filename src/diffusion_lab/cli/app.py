"""The Hydra application every command runs as: the project's config tree, one-line errors, the right experiment.

Each experiment (``conf/experiment/NAME.yaml``) names the command it belongs to in its ``task_name`` key,
as every command's own config does (``conf/train.yaml``: ``task_name: train``). An experiment given to
another command is refused before Hydra composes anything or makes a run folder, with one line naming
the command to run instead. An argument given by an earlier name (:data:`RENAMED`) still works, with a
one-line notice.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import hydra
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffusion_lab.cli.errors import RAISING_ENV, JobFailed, exit_with, fail, full_error_requested
from diffusion_lab.config import CONF_DIR, CONF_MODULE, CONF_SOURCE
from diffusion_lab.config_schema import CKPT, SCHEMAS, ConfigError, check_config
from diffusion_lab.extras import MissingExtra, check_choices
from diffusion_lab.utils.files import OutputError, check_writable

#: Arguments renamed since an earlier version: earlier name -> name. The earlier one is still accepted.
RENAMED = {"ckpt_path": "ckpt"}


def renamed_arguments(argv: Sequence[str]) -> list[str]:
    """``argv`` with each argument given by an earlier name (:data:`RENAMED`) under its name, and one
    ``notice:`` line on stderr for each (``ckpt_path=X`` -> ``ckpt=X``; also ``+KEY=``, ``~KEY``)."""
    arguments = []
    for arg in argv:
        body = arg.lstrip("+~")
        key, sep, value = body.partition("=")
        if key in RENAMED:
            print(f"notice: {key}= is now {RENAMED[key]}=", file=sys.stderr)
            arg = f"{arg[: len(arg) - len(body)]}{RENAMED[key]}{sep}{value}"
        arguments.append(arg)
    return arguments


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
        # the checkpoint to pass, where the owner's schema requires one (training takes one only to resume)
        ckpt = f" ckpt={CKPT.example}" if SCHEMAS.get(owner, {}).get("ckpt") is CKPT else ""
        return (
            f"experiment={name} is not a diffusion-lab-{command} experiment (its task_name is {owner}): "
            f"run diffusion-lab-{owner}{sweep} experiment={name}{ckpt}"
        )
    return None


def folder_key(argv: Sequence[str]) -> str:
    """The setting of the command line ``argv`` that places its run or sweep folder: ``hydra.run.dir``
    (``hydra.sweep.dir`` for ``-m``) where it gives one, else ``paths.log_dir``, under which both go."""
    key = "hydra.sweep.dir" if {"-m", "--multirun"} & set(argv) else "hydra.run.dir"
    return key if any(arg.lstrip("+").startswith(f"{key}=") for arg in argv) else "paths.log_dir"


def check_run_folder(cfg: DictConfig, argv: Sequence[str]) -> None:
    """Refuse a run folder (``hydra.run.dir``, under ``paths.log_dir``) that cannot be written, with one line
    naming the setting the command line gave for it (a ``-m`` sweep's folder is refused when Hydra makes it)."""
    run_dir = cfg.hydra.run.dir
    key = folder_key(argv)
    try:
        check_writable(run_dir, key, run_dir if key == "hydra.run.dir" else cfg.paths.log_dir)
    except ValueError as err:
        raise ConfigError([str(err)]) from None


def precheck(config_name: str, argv: Sequence[str]) -> bool:
    """Compose the command line's config and check its values (:func:`check_config`, ``before_run``) and its run
    folder (:func:`check_run_folder`) before Hydra makes that folder; whether it did.

    So a bad value writes nothing, not even the run folder's ``.hydra/``. A ``-m`` sweep or any other
    Hydra flag is left to the check inside each job. Raises what composing raises, :class:`ConfigError`,
    or :class:`MissingExtra` for a chosen feature whose extra is not installed.
    """
    if config_name not in SCHEMAS or any(arg.startswith("-") for arg in argv):
        return False
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(argv), return_hydra_config=True)
    check_config(cfg, config_name, stage="before_run")
    check_choices(cfg.hydra.runtime.choices, argv)
    check_run_folder(cfg, argv)
    return True


def write_fix(cfg: DictConfig, err: OutputError) -> str:
    """What to do about a file that could not be written: pass another ``output=`` (``hydra.run.dir=`` for
    training) when it was the command's output, else make room where it was (a cache beside the data)."""
    if "output" in cfg:
        key, folder = "output", Path(cfg.output).parent
    else:
        key, folder = "hydra.run.dir", Path(HydraConfig.get().runtime.output_dir)
    if Path(str(err.filename)).absolute().is_relative_to(folder.absolute()):
        return f"pass {key}= a path you can write to"
    return "free space or make its folder writable"


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's pre-emption) ends the command as an exception does, exit 143.

    Python's default ends the process on the spot; this way the ``finally`` blocks of the writes remove their
    hidden partial files (:func:`diffusion_lab.utils.files.atomic_write`), so nothing is left behind.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals go to the main thread only
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def hydra_app(
    config_name: str, handle_sigterm: bool = True
) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``hydra.main`` on the package's config tree (``conf/CONFIG_NAME.yaml``), with one-line errors.

    The config is checked once per run: its values before Hydra makes the run folder (:func:`precheck`),
    the values only the run knows inside it; a job of a ``-m`` sweep checks all of its config in the job.
    A file that cannot be written (:class:`OutputError`) ends the run with one line naming the file and the fix
    (:func:`write_fix`); so does an ``OSError`` before the task starts (Hydra making the folder of a ``-m``
    sweep, which :func:`precheck` leaves). With ``handle_sigterm`` a SIGTERM ends the task cleanly
    (:func:`sigterm_exits`); training leaves SIGTERM to Lightning, which checkpoints first.
    """

    def decorator(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        prechecked = started = False

        @functools.wraps(task)
        def checked_task(cfg: DictConfig) -> Any:
            nonlocal started
            started = True
            hydra_cfg = HydraConfig.get()
            try:
                if config_name in SCHEMAS:
                    check_config(cfg, config_name, stage="in_run" if prechecked else "all")
                check_choices(hydra_cfg.runtime.choices, hydra_cfg.overrides.task)
            except (ConfigError, MissingExtra) as err:
                fail(err)
            try:
                with sigterm_exits() if handle_sigterm else contextlib.nullcontext():
                    return task(cfg)
            except OutputError as err:
                fail(ValueError(f"{err}: {write_fix(cfg, err)}"))

        hydra_main = hydra.main(version_base="1.3", config_path=CONF_SOURCE, config_name=config_name)(checked_task)

        @functools.wraps(task)
        def main() -> Any:
            nonlocal prechecked, started
            prechecked = started = False
            sys.argv[1:] = renamed_arguments(sys.argv[1:])
            if (message := wrong_experiment(config_name, sys.argv[1:])) is not None:
                exit_with(message)
            if full_error_requested():
                return hydra_main()
            saved = {key: os.environ.get(key) for key in ("HYDRA_FULL_ERROR", RAISING_ENV)}
            os.environ.update({"HYDRA_FULL_ERROR": "1", RAISING_ENV: "1"})  # Hydra raises; we print one line
            try:
                prechecked = precheck(config_name, sys.argv[1:])
                return hydra_main()
            except (HydraException, OmegaConfBaseException, JobFailed, ConfigError, MissingExtra) as err:
                exit_with(err)
            except OSError as err:
                if started:  # the task's own; its write errors are one line already
                    raise
                exit_with(f"cannot write {err.filename} ({err.strerror}): pass {folder_key(sys.argv[1:])}= a path "
                          "you can write to")  # fmt: skip
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value

        return main

    return decorator
