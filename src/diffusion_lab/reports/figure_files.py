"""Draw the lab figures a ``figures`` config asks for (:mod:`diffusion_lab.reports.lab_figures`) and write them as
PNGs: what ``diffusion-lab-figures`` runs.

See ``conf/figures.yaml`` for what is drawn; everything is drawn before the first file is written, so
a bad setting leaves no partial output.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from diffusion_lab.data.datamodule import MNISTDataModule, first_test_image
from diffusion_lab.models.checkpoints import checkpoint_file
from diffusion_lab.pipeline import load_model
from diffusion_lab.reports.lab_figures import (
    default_schedules,
    guidance_sweep,
    plot_schedules,
    show_noise_progression,
    style_distributions,
    style_grid,
    visualize_generation_steps,
)
from diffusion_lab.reports.render import save_figure
from diffusion_lab.sampling_settings import guidance_settings, resolve_device
from diffusion_lab.utils.files import check_writable

log = logging.getLogger(__name__)


def make_figures(cfg: DictConfig) -> list[Path]:
    """Draw the figures ``cfg`` asks for and write them into ``cfg.output``; returns the written paths."""
    output = check_writable(cfg.output)
    device = resolve_device(cfg.device)
    pipe = load_model(checkpoint_file(cfg.ckpt), device, guide=cfg.get("guide")) if cfg.ckpt else None
    if pipe is not None:
        pipe.check_settings(cfg.guidance, 1, str(cfg.precision), **guidance_settings(cfg, pipe))  # loads the guide
    # The checkpoint's own dataset when it records one, else data=NAME.
    dataset = (pipe.dataset if pipe is not None else None) or cfg.data.name
    image = first_test_image(dataset, cfg.image_label, cfg.paths.data_dir)
    schedules = default_schedules(cfg.timesteps)
    # A flow or EDM checkpoint's forward process is not one of the schedules: it gets a row of its own.
    objective = pipe.model.objective if pipe is not None else None
    extra_rows = [objective] if objective is not None and objective.name in ("flow", "edm") else []
    data = MNISTDataModule(dataset, cfg.paths.data_dir, styles=True)
    data.setup()
    figures = {
        "noise_progression.png": show_noise_progression(image, schedules, seed=cfg.seed, objectives=extra_rows),
        "schedules.png": plot_schedules(schedules=schedules),
        "style_distributions.png": style_distributions(data.splits()[0].styles, data.style_stats, dataset),
    }
    if pipe is None:
        log.info("generation_steps.png and guidance_sweep.png need a trained model: pass ckpt=PATH")
    else:
        sampling = {
            "sampler": instantiate(cfg.sampler)(objective=pipe.model.objective),
            "steps": cfg.steps,
            "seed": cfg.seed,
            "precision": str(cfg.precision),
            **guidance_settings(cfg, pipe),
        }
        figures["generation_steps.png"] = visualize_generation_steps(
            pipe, num_snapshots=cfg.num_snapshots, guidance=cfg.guidance, **sampling
        )
        weights = [float(w) for w in cfg.guidance_weights]
        figures["guidance_sweep.png"] = guidance_sweep(pipe, weights, num_per_class=cfg.num_per_class, **sampling)
        if pipe.model.style_conditioning:
            figures["style_grid.png"] = style_grid(
                pipe, cfg.style_label, list(cfg.style_slants), list(cfg.style_thicknesses), guidance=cfg.guidance,
                **sampling,
            )  # fmt: skip
        else:
            log.info("style_grid.png needs a style-conditioned model (model.style_conditioning=true)")
    written = []
    for name, fig in figures.items():
        written.append(save_figure(fig, output / name))
        log.info("Wrote %s", written[-1])
    return written
