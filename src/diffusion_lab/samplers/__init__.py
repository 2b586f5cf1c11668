"""Reverse-process samplers. Each has ``set_timesteps(num_steps)``, ``timesteps`` and ``step()``."""

from diffusion_lab.samplers.ddim import DDIMSampler
from diffusion_lab.samplers.ddpm import DDPMSampler

SAMPLERS = {"ddpm": DDPMSampler, "ddim": DDIMSampler}

__all__ = ["SAMPLERS", "DDIMSampler", "DDPMSampler"]
