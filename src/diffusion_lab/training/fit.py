"""Fit a class-conditioned diffusion model from a composed training config: what ``diffusion-lab-train`` runs.

:func:`train` is the whole run, as the command and the tests call it: refuse a run folder that already
holds a run, check the config, build data, model, callbacks, logger and trainer, check a checkpoint
to resume from against the model, and fit.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.config_schema import check_config
from diffusion_lab.training.callbacks import MetricsJson
from diffusion_lab.training.checkpointing import check_resumable, checkpoint_file

log = logging.getLogger(__name__)


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint ``fit`` continues from: ``ckpt_path``, or the run dir's ``last.ckpt`` with ``resume=true``.

    Refuses to start a fresh run in a folder that already holds one, which would overwrite its checkpoints.
    """
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if cfg.get("ckpt_path"):
        return str(checkpoint_file(cfg.ckpt_path, folders=False))
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
    check_config(cfg, "train")
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


def train(cfg: DictConfig) -> dict[str, float]:
    """The whole training run of ``cfg``; returns the final metrics.

    Refuses (``ValueError``, before anything is built) a run folder that already holds a run, and
    (before training starts) a checkpoint to resume from that holds another model.
    """
    ckpt_path = resume_checkpoint(cfg)
    parts = build(cfg)
    if ckpt_path is not None:
        check_resumable(ckpt_path, parts[1])
    return fit(*parts, ckpt_path=ckpt_path)
