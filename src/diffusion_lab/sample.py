"""``diffusion-lab-sample``: draw images of chosen classes from a checkpoint into a PNG grid and an NPZ."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.cli import checkpoint_path, exit_with, hydra_app, resolve_device
from diffusion_lab.datasets import DataError
from diffusion_lab.generation import class_names, generate, load_model, resolve_labels, save_samples

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> tuple[Path, Path]:
    """Load the checkpoint, generate ``num_samples`` per requested class and write PNG + NPZ."""
    path = checkpoint_path(cfg.ckpt)
    model = load_model(path, device=resolve_device(cfg.device))
    names = class_names(model)
    label = OmegaConf.to_object(cfg.label) if OmegaConf.is_config(cfg.label) else cfg.label
    labels = resolve_labels(label, cfg.num_samples, names)
    sampler = instantiate(cfg.sampler, schedule=model.schedule)
    images = generate(
        model, labels, seed=cfg.seed, sampler=sampler, steps=cfg.steps, guidance=cfg.guidance,
        batch_size=cfg.batch_size, precision=str(cfg.precision),
    )  # fmt: skip
    classes = len(labels) // cfg.num_samples
    nrow = cfg.num_samples if classes > 1 else math.ceil(math.sqrt(len(labels)))
    png, npz = save_samples(images, labels, cfg.output, nrow=nrow)
    drawn = ", ".join(names[i] for i in labels.unique_consecutive().tolist())
    log.info("%d images of %s (%s, %d steps, w=%g, seed %d)", len(labels), drawn, type(sampler).__name__,
             sampler.num_steps, cfg.guidance, cfg.seed)  # fmt: skip
    log.info("Wrote %s and %s", png, npz)
    return png, npz


@hydra_app("sample")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a bad label, setting or checkpoint ends the run with one line."""
    try:
        run(cfg)
    except (InstantiationException, ValueError, DataError) as err:
        exit_with(err)


if __name__ == "__main__":
    main()
