"""The diffusion process: noise schedules, objectives, samplers (diffusers' schedulers), the guided reverse loop."""
