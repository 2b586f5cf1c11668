"""diffusion-lab: class-conditioned diffusion models on MNIST and Fashion-MNIST.

The notebook API, in one place::

    from diffusion_lab import load_model, generate_number, generate_with_seed, show_noise_progression

Names are imported on first use, so ``import diffusion_lab`` (and ``diffusion-lab-report``, which
needs no torch) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "ClassConditionalPipeline": "diffusion_lab.pipeline",
    "load_model": "diffusion_lab.pipeline",
    "generate": "diffusion_lab.pipeline",
    "generate_number": "diffusion_lab.pipeline",
    "generate_with_seed": "diffusion_lab.pipeline",
    "show_noise_progression": "diffusion_lab.reports.lab_figures",
    "visualize_generation_steps": "diffusion_lab.reports.lab_figures",
    "plot_schedules": "diffusion_lab.reports.lab_figures",
    "guidance_sweep": "diffusion_lab.reports.lab_figures",
    "style_grid": "diffusion_lab.reports.lab_figures",
    "save_figure": "diffusion_lab.reports.render",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffusion_lab' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
