"""LightningModule that trains a ConditionalUNet with the DDPM noise-prediction loss."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.optim import Optimizer

from diffusion_lab.checkpointing import read_checkpoint
from diffusion_lab.schedules import NoiseSchedule
from diffusion_lab.unet import ConditionalUNet

#: Checkpoint key that holds the resolved run configuration, so a checkpoint rebuilds its model.
CONFIG_KEY = "diffusion_lab_config"


class DiffusionModule(L.LightningModule):
    """DDPM training: ``loss = || eps - unet(q_sample(x0, t, eps), t, y) ||^2``.

    Labels are replaced by the null class with probability ``cond_drop_prob`` so the same
    network also learns the unconditional model that classifier-free guidance needs.
    The validation loss uses fixed timesteps and noise (seeded per batch), so it is
    comparable across epochs and runs.

    ``run_config`` (set by the training entry point) is stored in every checkpoint, which
    :meth:`load_checkpoint` uses to rebuild the module without the original config files.

    Args:
        unet: the noise predictor.
        schedule: the noise schedule.
        optimizer: factory ``params -> Optimizer`` (a Hydra ``_partial_``).
        lr_scheduler: factory ``optimizer -> scheduler`` (a Hydra ``_partial_``), optional. One that takes
            ``total_steps`` (``OneCycleLR``) is given the run's length and stepped every batch; any
            other is stepped after every validation (``ReduceLROnPlateau`` on ``val/loss``).
        cond_drop_prob: probability of training a sample unconditionally, in [0, 1).
        val_seed: seed of the validation timesteps and noise.
        channels_last: run convolutions in channels-last memory format (pays on GPUs, not on CPUs).
        compile: compile the U-Net with ``torch.compile`` (``nn.Module.compile``: the state dict and
            checkpoints keep their plain keys); pays on GPUs, where it fuses the many small kernels.
        compile_mode: ``torch.compile`` mode: ``default``, ``reduce-overhead`` (CUDA graphs) or ``max-autotune``.
        min_snr_gamma: Min-SNR-gamma loss weighting in training (None: the plain DDPM loss); the
            validation loss is always unweighted, so it compares across settings.
    """

    def __init__(
        self,
        unet: ConditionalUNet,
        schedule: NoiseSchedule,
        optimizer: Callable[..., Optimizer],
        lr_scheduler: Callable[[Optimizer], Any] | None = None,
        cond_drop_prob: float = 0.1,
        val_seed: int = 1234,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str = "default",
        min_snr_gamma: float | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ValueError(f"model.cond_drop_prob must be in [0, 1), got {cond_drop_prob}")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"model.min_snr_gamma must be positive or null, got {min_snr_gamma}")
        self.save_hyperparameters(ignore=["unet", "schedule", "optimizer", "lr_scheduler"], logger=False)
        self.unet = unet
        self.schedule = schedule
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.cond_drop_prob = cond_drop_prob
        self.val_seed = val_seed
        self.channels_last = channels_last
        self.min_snr_gamma = min_snr_gamma
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if compile:
            self.unet.compile(mode=compile_mode)
        self.run_config: dict[str, Any] | None = None

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """Predicted noise ``[B, C, H, W]`` for noisy images ``x`` at timesteps ``t``."""
        return self.unet(x, t, labels)

    def diffusion_loss(self, x0: Tensor, labels: Tensor, t: Tensor, noise: Tensor, weighted: bool = False) -> Tensor:
        """Mean squared error between the true and the predicted noise.

        With ``weighted`` and ``min_snr_gamma`` set, image i's error is weighted by
        ``min(SNR(t_i), gamma) / SNR(t_i)`` (Min-SNR, Hang et al. 2023): the nearly noiseless
        timesteps, easy to fit and of little use to sampling, stop dominating the gradient.
        """
        x_t = self.schedule.q_sample(x0, t, noise)
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        error = (self.unet(x_t, t, labels).float() - noise).square().mean(dim=tuple(range(1, x0.ndim)))
        if weighted and self.min_snr_gamma is not None:
            alpha_bar = self.schedule.alphas_cumprod[t]
            snr = alpha_bar / (1.0 - alpha_bar)
            error = error * snr.clamp(max=self.min_snr_gamma) / snr
        return error.mean()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, labels = batch
        t = torch.randint(0, self.schedule.timesteps, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        drop = torch.rand(len(labels), device=labels.device) < self.cond_drop_prob
        labels = torch.where(drop, torch.full_like(labels, self.unet.null_class), labels)
        loss = self.diffusion_loss(x0, labels, t, noise, weighted=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(x0))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x0, labels = batch
        gen = torch.Generator(device=x0.device).manual_seed(self.val_seed + batch_idx)
        t = torch.randint(0, self.schedule.timesteps, (len(x0),), device=x0.device, generator=gen)
        noise = torch.randn(x0.shape, device=x0.device, generator=gen)
        loss = self.diffusion_loss(x0, labels, t, noise)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(x0))

    def configure_optimizers(self) -> Any:
        """The optimizer and LR schedule; a bad setting of either raises ``ValueError`` naming its config key."""
        try:
            optimizer = self.optimizer_factory(params=self.parameters())
        except ValueError as err:
            raise ValueError(f"model.optimizer: {err}") from err
        if self.lr_scheduler_factory is None:
            return optimizer
        per_step = "total_steps" in inspect.signature(self.lr_scheduler_factory).parameters
        kwargs: dict[str, Any] = {}
        if per_step:
            total_steps = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
            if not math.isfinite(total_steps):
                raise ValueError("model.lr_scheduler needs the run's length: set trainer.max_epochs or max_steps")
            kwargs["total_steps"] = int(total_steps)
        try:
            scheduler = self.lr_scheduler_factory(optimizer=optimizer, **kwargs)
        except ValueError as err:
            raise ValueError(f"model.lr_scheduler: {err}") from err
        if per_step:
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch", "strict": False},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint[CONFIG_KEY] = self.run_config

    @classmethod
    def load_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> DiffusionModule:
        """Rebuild a module from a training checkpoint; its weights are the EMA weights when EMA was on."""
        from hydra.utils import instantiate

        checkpoint = read_checkpoint(path, map_location)
        config = checkpoint.get(CONFIG_KEY)
        if config is None:
            raise ValueError(f"{path} holds no {CONFIG_KEY}: it was not written by diffusion-lab-train")
        schedule = instantiate(config["schedule"])
        module = instantiate(config["model"], schedule=schedule)
        try:
            module.load_state_dict(checkpoint["state_dict"])
        except (KeyError, RuntimeError) as err:
            raise ValueError(f"{path} does not match the model its config describes: {err}") from err
        module.run_config = config
        return module.eval()
