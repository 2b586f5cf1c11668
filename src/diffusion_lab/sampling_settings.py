"""The sampling settings of a command's config: ``device=``, the guidance settings (autoguidance's among them) and
their one-line summary; shared by the sampling, evaluation and figures commands."""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.diffusion.samplers import Sampler
from diffusion_lab.pipeline import ClassConditionalPipeline


def resolve_device(device: str) -> torch.device:
    """``auto`` is the GPU when there is one, else the CPU; otherwise any torch device string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no GPU is visible: use device=cpu (or auto)")
    return resolved


def guidance_settings(cfg: DictConfig, pipe: ClassConditionalPipeline | None = None) -> dict[str, Any]:
    """``guidance_interval`` (a plain list or None; an open upper end, ``.inf`` or null, as None),
    ``guidance_rescale`` and ``autoguidance`` of a sampling command's config; ``autoguidance: null`` is
    ``pipe``'s default (on when its model has a guide), or 0 without a pipeline."""
    interval = cfg.get("guidance_interval")
    interval = OmegaConf.to_object(interval) if OmegaConf.is_config(interval) else interval
    if isinstance(interval, list) and len(interval) == 2 and interval[1] == math.inf:
        interval = [interval[0], None]
    return {
        "guidance_interval": interval,
        "guidance_rescale": float(cfg.get("guidance_rescale") or 0.0),
        "autoguidance": float(
            cfg.get("autoguidance")
            if cfg.get("autoguidance") is not None
            else pipe.default_autoguidance
            if pipe is not None
            else 0.0
        ),
    }


def settings_text(
    sampler: Sampler, guidance: float, interval: list[float | None] | None, seed: int, autoguidance: float = 0.0
) -> str:
    """``DPM-Solver++(2M), 20 steps, w=2, autoguidance 1 for sigma in [0.3, 5], seed 0``: a run's sampling settings."""
    where = ""
    if interval is not None:
        low = f"{interval[0]:g}"
        where = f" for sigma >= {low}" if interval[1] is None else f" for sigma in [{low}, {interval[1]:g}]"
    auto = f", autoguidance {autoguidance:g}" if autoguidance > 0 else ""
    return f"{sampler.title}, w={guidance:g}{auto}{where}, seed {seed}"
