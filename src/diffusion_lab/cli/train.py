"""``diffusion-lab-train``: fit a class-conditioned DDPM from the composed Hydra config."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.callbacks import NonFiniteLossError
from diffusion_lab.checkpointing import check_resumable
from diffusion_lab.cli import checkpoint_path, fail, hydra_app
from diffusion_lab.datasets import DataError
from diffusion_lab.ddp import ChildFailed, needs_own_process, train_in_child
from diffusion_lab.validation import validate_train_config

log = logging.getLogger(__name__)


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint ``fit`` continues from: ``ckpt_path``, or the run dir's ``last.ckpt`` with ``resume=true``.

    Refuses to start a fresh run in a folder that already holds one, which would overwrite its checkpoints.
    """
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if cfg.get("ckpt_path"):
        return str(checkpoint_path(cfg.ckpt_path))
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
    """Check ``cfg``, then instantiate data, model, callbacks, logger and trainer; no checkpoint is written yet."""
    validate_train_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    schedule = instantiate(cfg.schedule)
    model = instantiate(cfg.model, schedule=schedule)
    model.configure_optimizers()  # Lightning builds these lazily; build them once now so their settings fail early
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    logger_cfg = cfg.get("logger")
    logger = instantiate(logger_cfg) if logger_cfg and "_target_" in logger_cfg else False
    if not logger:  # `logger=none`: the learning rate has nowhere to go, and Lightning refuses the monitor
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    else:  # the whole resolved config, not just the module's arguments (wandb config, hparams.yaml, TensorBoard)
        logger.log_hyperparams(model.run_config)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    return datamodule, model, trainer


def fit(
    datamodule: L.LightningDataModule, model: L.LightningModule, trainer: L.Trainer, ckpt_path: str | None = None
) -> dict[str, float]:
    """Fit (continuing from ``ckpt_path``), say where the checkpoints are, and return the final metrics.

    Checkpoints are loaded with ``weights_only=True``: resuming never unpickles code.
    """
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    finally:
        # Close the wandb run, so the next job of a -m sweep (same process) starts its own.
        if trainer.is_global_zero and any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
            import wandb

            wandb.finish()
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and trainer.is_global_zero:
        log.info("Checkpoints: best %s, last %s/last.ckpt", ckpt.best_model_path or "-", ckpt.dirpath)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def train(cfg: DictConfig) -> dict[str, float]:
    """Build everything from ``cfg`` and fit; returns the final metrics."""
    ckpt_path = resume_checkpoint(cfg)
    return fit(*build(cfg), ckpt_path=ckpt_path)


def share_cores() -> None:
    """Under the joblib launcher (``hydra/launcher=parallel``), give each of its n_jobs workers an equal
    share of the cores as torch threads; n_jobs processes each using every core run far slower than one."""
    if not HydraConfig.initialized():
        return
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return
    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs") or 1
    jobs = cores if n_jobs < 0 else min(n_jobs, cores)
    torch.set_num_threads(max(1, cores // jobs))
    log.info("joblib launcher: %d jobs at once, %d torch threads each", jobs, torch.get_num_threads())


@hydra_app("train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``val/loss`` for sweepers.

    A bad config value or missing data ends the run with one line that names the problem; in a ``-m``
    sweep the job fails alone (:func:`diffusion_lab.cli.fail`). A DDP job of a sweep trains in a
    process of its own (:mod:`diffusion_lab.ddp`).
    """
    share_cores()
    if needs_own_process(cfg):
        try:
            return train_in_child()
        except ChildFailed as err:
            fail(err)
    try:
        ckpt_path = resume_checkpoint(cfg)  # refuses to overwrite a run, before anything is built
        parts = build(cfg)
        if ckpt_path is not None:
            check_resumable(ckpt_path, parts[1])
    except (InstantiationException, ValueError) as err:
        fail(err)
    try:
        metrics = fit(*parts, ckpt_path=ckpt_path)
    except (DataError, NonFiniteLossError, MisconfigurationException, ValueError) as err:
        print(file=sys.stderr)  # end the progress bar's line
        fail(err)  # also Lightning's own late checks of trainer.* values
    return metrics.get("val/loss")


if __name__ == "__main__":
    main()
