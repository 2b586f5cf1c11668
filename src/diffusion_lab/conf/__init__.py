"""The config tree every command composes (Hydra's ``pkg://diffusion_lab.conf``): one group per swappable part."""
