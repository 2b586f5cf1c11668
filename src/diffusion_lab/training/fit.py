"""Fit a class-conditioned diffusion model from a composed training config: what ``diffusion-lab-train`` runs.

:func:`train` is the whole run, as the command and the tests call it: refuse a run folder that already
holds a run, build data, model, callbacks, loggers and trainer, check a checkpoint to resume from against
the model, and fit. The command checks the config's values before (:mod:`diffusion_lab.config_schema`);
the components check theirs again when built, with the same rules (:mod:`diffusion_lab.rules`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.models.checkpoints import checkpoint_file
from diffusion_lab.training.callbacks import MetricsJson
from diffusion_lab.training.checkpointing import check_resumable, load_initial_weights
from diffusion_lab.training.loggers import instantiate_loggers

log = logging.getLogger(__name__)

#: The file in a run folder that a training process holds while it runs (:func:`run_folder_lock`).
LOCK_FILE = ".train.lock"


def requeued() -> bool:
    """True in a SLURM job that was requeued (preempted, or past its time limit): ``SLURM_RESTART_COUNT`` >= 1."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint ``fit`` continues from: ``ckpt``, or the run dir's ``last.ckpt`` with ``resume=true``.

    A requeued SLURM job continues its own ``last.ckpt`` as with ``resume=true`` (its command line is the
    first run's). Refuses to start a fresh run in a folder that already holds one, which would overwrite
    its checkpoints.
    """
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if requeued() and last.is_file():
        log.info("Requeued SLURM job (restart %s): resuming from %s", os.environ["SLURM_RESTART_COUNT"], last)
        return str(last)
    if cfg.get("ckpt"):
        return str(checkpoint_file(cfg.ckpt, folders=False))
    if cfg.get("resume"):
        if last.is_file():
            log.info("Resuming from %s", last)
            return str(last)
        log.info("resume=true but %s does not exist yet: starting fresh", last)
        return None
    if last.is_file():
        raise ValueError(
            f"{last.parent.parent} already holds a run: pass resume=true to continue it, or another hydra.run.dir"
        )
    return None


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate data, model, callbacks, loggers and trainer of ``cfg``; no checkpoint is written yet."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, objective=instantiate(cfg.objective))
    if cfg.get("sampler"):  # the callbacks' sampler must fit the objective: say so now, not after an epoch
        instantiate(cfg.sampler)(objective=model.objective)
    model.configure_optimizers()  # Lightning builds these lazily; build them once now so their settings fail early
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    loggers = instantiate_loggers(cfg.get("logger"))
    if not loggers:  # `logger=none`: the learning rate has nowhere to go, and Lightning refuses the monitor
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    for logger in loggers:  # the whole resolved config, not just the module's arguments (wandb, hparams.yaml)
        logger.log_hyperparams(model.run_config)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def fit(
    datamodule: L.LightningDataModule, model: L.LightningModule, trainer: L.Trainer, ckpt_path: str | None = None
) -> dict[str, float]:
    """Fit (continuing from ``ckpt_path``), say where the checkpoints are, and return the final metrics
    (the logged ones, and what ``metrics.json`` records).

    Checkpoints are loaded with ``weights_only=True``: resuming never unpickles code.
    """
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except Exception:
        print(file=sys.stderr)  # end the progress bar's line before the error is reported
        raise
    finally:
        # Close the wandb run, so the next job of a -m sweep (same process) starts its own.
        if trainer.is_global_zero and any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
            import wandb

            wandb.finish()
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and trainer.is_global_zero:
        log.info("Checkpoints: best %s, last %s/last.ckpt", ckpt.best_model_path or "-", ckpt.dirpath)
    metrics: dict[str, float] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    for callback in trainer.callbacks:  # what metrics.json records besides them (best/val/loss, time/fit_s...)
        if isinstance(callback, MetricsJson):
            metrics.update({k: v for k, v in callback.written.items() if isinstance(v, (int, float))})
    return metrics


@contextlib.contextmanager
def run_folder_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``RUN_DIR/.train.lock`` while training, so that a second process on the same folder is refused.

    An advisory ``flock``, which the system drops when the process ends, however it ends: a killed run
    never leaves the folder locked. Only the first process of a run takes it (DDP's other ranks join it).
    """
    if rank_zero_only.rank != 0:
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise ValueError(
                f"{Path(run_dir)} is in use by another training run ({holder}): wait for it to end, or pass "
                "another hydra.run.dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def train(cfg: DictConfig) -> dict[str, float]:
    """The whole training run of ``cfg``; returns the final metrics.

    Refuses (``ValueError``, before anything is built) a run folder that already holds a run or that
    another training process is using, and (before training starts) a checkpoint to resume from that
    was trained on other data or holds another model. ``init_from=PATH`` starts from that checkpoint's
    weights, with fresh counters, optimizer and best-checkpoint record.
    """
    with run_folder_lock(cfg.paths.output_dir):
        ckpt_path = resume_checkpoint(cfg)
        init_from = cfg.get("init_from") if ckpt_path is None else None
        init_from = checkpoint_file(init_from, folders=False) if init_from else None
        parts = build(cfg)
        if ckpt_path is not None:
            check_resumable(ckpt_path, parts[1])
        elif init_from is not None:
            load_initial_weights(init_from, parts[1])
            log.info("Starting from the weights of %s (fresh optimizer and counters)", init_from)
        return fit(*parts, ckpt_path=ckpt_path)
