"""``diffusion-lab-train``: fit a class-conditioned DDPM from the composed Hydra config."""

from __future__ import annotations

import logging

import hydra
import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.cli import exit_with
from diffusion_lab.config import CONF_DIR
from diffusion_lab.datasets import DataError

log = logging.getLogger(__name__)


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate data, model, callbacks, logger and trainer from ``cfg``; nothing is written yet."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    schedule = instantiate(cfg.schedule)
    model = instantiate(cfg.model, schedule=schedule)
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    logger_cfg = cfg.get("logger")
    logger = instantiate(logger_cfg) if logger_cfg and "_target_" in logger_cfg else False
    if not logger:  # `logger=none`: the learning rate has nowhere to go, and Lightning refuses the monitor
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    return datamodule, model, trainer


def fit(
    cfg: DictConfig, datamodule: L.LightningDataModule, model: L.LightningModule, trainer: L.Trainer
) -> dict[str, float]:
    """Fit, say where the checkpoints are, and return the final metrics."""
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and trainer.is_global_zero:
        log.info("Checkpoints: best %s, last %s/last.ckpt", ckpt.best_model_path or "-", ckpt.dirpath)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def train(cfg: DictConfig) -> dict[str, float]:
    """Build everything from ``cfg`` and fit; returns the final metrics."""
    return fit(cfg, *build(cfg))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``val/loss`` for sweepers.

    A bad config value or missing data ends the run with one line that names the problem.
    """
    try:
        parts = build(cfg)
    except (InstantiationException, ValueError) as err:
        exit_with(err)
    try:
        metrics = fit(cfg, *parts)
    except DataError as err:
        exit_with(err)
    return metrics.get("val/loss")


if __name__ == "__main__":
    main()
