"""Arguments the commands that sample share: ``device=`` and the guidance settings."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.diffusion.samplers import Sampler


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


def guidance_settings(cfg: DictConfig) -> dict[str, Any]:
    """``guidance_interval`` (a plain list or None) and ``guidance_rescale`` of a sampling command's config."""
    interval = cfg.get("guidance_interval")
    interval = OmegaConf.to_object(interval) if OmegaConf.is_config(interval) else interval
    return {"guidance_interval": interval, "guidance_rescale": float(cfg.get("guidance_rescale") or 0.0)}


def settings_text(sampler: Sampler, guidance: float, interval: list[float] | None, seed: int) -> str:
    """``DPM-Solver++(2M), 20 steps, w=2 for sigma in [0.3, 5], seed 0``: a run's sampling settings."""
    where = "" if interval is None else f" for sigma in [{interval[0]:g}, {interval[1]:g}]"
    return f"{sampler.title}, w={guidance:g}{where}, seed {seed}"
