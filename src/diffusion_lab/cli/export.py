"""``diffusion-lab-export``: a training checkpoint as a model folder to share (:mod:`diffusion_lab.export`).

``diffusion-lab-export ckpt=PATH output=DIR`` writes a diffusers pipeline folder (``model_index.json``,
``pipeline.py``, ``unet/``, ``scheduler/``, and ``guide/``, autoguidance's guide, where there is one), the model
card ``README.md`` and ``samples.png``; see ``conf/export.yaml``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from diffusion_lab.cli.app import hydra_app
from diffusion_lab.cli.errors import fail
from diffusion_lab.data.sources import DataError
from diffusion_lab.export import evaluation_metrics, export_model
from diffusion_lab.models.checkpoints import checkpoint_file

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    """Export ``cfg.ckpt`` into ``cfg.output``; returns the folder."""
    started = time.perf_counter()
    ckpt = checkpoint_file(cfg.ckpt, folders=False)
    metrics, metrics_path = evaluation_metrics(cfg.metrics, ckpt, Path(cfg.paths.log_dir))
    output = Path(cfg.output)
    guide = Path(cfg.guide) if cfg.get("guide") else None
    config = export_model(
        ckpt, output, metrics, cfg.grid_per_class, cfg.seed, cfg.steps, cfg.guidance, cfg.repo_id, guide
    )
    if config.get("guide"):
        log.info("The folder carries the guide of autoguidance: %s", config["guide"]["source"])
    if metrics_path is not None:
        log.info("The card shows the evaluation in %s", metrics_path)
    log.info("Wrote the model folder %s in %.1f s", output, time.perf_counter() - started)
    return output


@hydra_app("export")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a bad checkpoint, metrics file or output folder ends the run with one line."""
    try:
        run(cfg)
    except (ValueError, DataError) as err:
        fail(err)


if __name__ == "__main__":
    main()
