"""``diffusion-lab-train``: fit a class-conditioned DDPM from the composed Hydra config."""

from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.config import CONF_DIR
from diffusion_lab.datasets import DataError

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build data, model, callbacks, logger and trainer from ``cfg`` and fit; returns the final metrics."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    schedule = instantiate(cfg.schedule)
    model = instantiate(cfg.model, schedule=schedule)
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    logger_cfg = cfg.get("logger")
    logger = instantiate(logger_cfg) if logger_cfg and "_target_" in logger_cfg else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and trainer.is_global_zero:
        log.info("Checkpoints: best %s, last %s/last.ckpt", ckpt.best_model_path or "-", ckpt.dirpath)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``val/loss`` for sweepers."""
    try:
        metrics = train(cfg)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    return metrics.get("val/loss")


if __name__ == "__main__":
    main()
