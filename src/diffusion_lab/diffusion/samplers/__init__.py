"""Reverse-process samplers, one per module, each with ``set_timesteps()``, ``timesteps`` and ``step()``."""

from diffusion_lab.diffusion.samplers.base import TIMESTEP_SPACINGS, Sampler, SamplerFactory, spaced_timesteps
from diffusion_lab.diffusion.samplers.ddim import DDIMSampler
from diffusion_lab.diffusion.samplers.ddpm import DDPMSampler
from diffusion_lab.diffusion.samplers.dpm_solver import DPMSolverSampler

#: Sampler names as used in configs and on the command line.
SAMPLERS: dict[str, type[Sampler]] = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "dpm_solver": DPMSolverSampler}

__all__ = [
    "SAMPLERS",
    "TIMESTEP_SPACINGS",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "Sampler",
    "SamplerFactory",
    "spaced_timesteps",
]
