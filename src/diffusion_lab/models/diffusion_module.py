"""LightningModule that trains a ConditionalUNet under one of the objectives (eps, v, flow, edm)."""

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

from diffusion_lab.data.styles import STYLE_NAMES, StyleStats
from diffusion_lab.diffusion.objectives import Objective
from diffusion_lab.models.checkpoints import CONFIG_KEY, STYLE_STATS_KEY, read_checkpoint, upgrade_run_config
from diffusion_lab.models.unet import ConditionalUNet
from diffusion_lab.rules import DROP_PROB


class DiffusionModule(L.LightningModule):
    """Diffusion training: ``loss = || target - unet(x_in, time, y) ||^2`` with the objective's noised input and target.

    Labels are replaced by the null class with probability ``cond_drop_prob`` so the same
    network also learns the unconditional model that classifier-free guidance needs.
    With ``style_conditioning`` the batches also carry each image's style attributes (slant,
    thickness; ``diffusion_lab.data.styles``), normalised by the training set's distribution and given
    to the U-Net; they are dropped together with the label, and each one on its own with
    probability ``style_drop_prob``, so the model samples with any subset of them, or none.
    The validation loss uses fixed noise levels and noise (seeded per batch) and no loss weighting, so
    it is comparable across epochs and across runs of one objective (each objective has its own target).

    ``run_config`` (set by the training entry point) is stored in every checkpoint, which
    :meth:`load_checkpoint` uses to rebuild the module without the original config files.

    Args:
        unet: the network.
        objective: what it predicts and how its inputs are noised (``objective`` config group), with its
            Min-SNR weighting where that is defined.
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
        style_conditioning: condition on the images' style attributes; needs a U-Net with
            ``num_styles=2`` and a datamodule that gives styles (``data.styles``, on by default then).
        style_drop_prob: probability of dropping each style attribute of a sample on its own, in [0, 1):
            how often the model learns the class with part or none of its style given.
    """

    def __init__(
        self,
        unet: ConditionalUNet,
        objective: Objective,
        optimizer: Callable[..., Optimizer],
        lr_scheduler: Callable[[Optimizer], Any] | None = None,
        cond_drop_prob: float = 0.1,
        val_seed: int = 1234,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str = "default",
        style_conditioning: bool = False,
        style_drop_prob: float = 0.1,
    ) -> None:
        super().__init__()
        DROP_PROB.check("model.cond_drop_prob", cond_drop_prob)
        DROP_PROB.check("model.style_drop_prob", style_drop_prob)
        wanted = len(STYLE_NAMES) if style_conditioning else 0
        if unet.num_styles != wanted:
            raise ValueError(
                f"model.unet.num_styles is {unet.num_styles} but model.style_conditioning={style_conditioning} needs "
                f"{wanted}: leave model.unet.num_styles to its default"
            )
        self.save_hyperparameters(ignore=["unet", "objective", "optimizer", "lr_scheduler"], logger=False)
        self.unet = unet
        self.objective = objective
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.cond_drop_prob = cond_drop_prob
        self.val_seed = val_seed
        self.channels_last = channels_last
        self.style_conditioning = style_conditioning
        self.style_drop_prob = style_drop_prob
        #: The training set's style distribution (from the datamodule, or the checkpoint).
        self.style_stats: StyleStats | None = None
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if compile:
            self.unet.compile(mode=compile_mode)
        self.run_config: dict[str, Any] | None = None

    def forward(self, x: Tensor, t: Tensor, labels: Tensor, styles: Tensor | None = None) -> Tensor:
        """The network's output ``[B, C, H, W]`` for inputs ``x`` at network times ``t`` (``styles`` normalised)."""
        return self.unet(x, t, labels, styles)

    def require_style_stats(self) -> StyleStats:
        """The training set's style distribution; a one-line ``ValueError`` for a model trained without styles."""
        if not self.style_conditioning:
            raise ValueError(
                "this checkpoint was trained without style conditions: train one with model.style_conditioning=true"
            )
        if self.style_stats is None:
            raise RuntimeError("the model has no style statistics: they come from the datamodule or the checkpoint")
        return self.style_stats

    def style_condition(self, styles: Tensor) -> Tensor:
        """Raw style attributes ``[N, 2]`` (degrees, pixels; NaN = not given) -> the U-Net's normalised input."""
        return self.require_style_stats().normalize(styles.float())

    def _split_batch(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(x0, labels, normalised styles or None)`` of a datamodule batch."""
        x0, labels, *rest = batch
        if not self.style_conditioning:
            return x0, labels, None
        if not rest:
            raise ValueError("model.style_conditioning=true needs batches with styles: set data.styles=true")
        return x0, labels, self.style_condition(rest[0])

    def on_fit_start(self) -> None:
        """Take the style distribution from the datamodule (the same on every start of a run)."""
        if self.style_conditioning:
            stats = getattr(self.trainer.datamodule, "style_stats", None)
            if stats is None:
                raise ValueError("model.style_conditioning=true needs a datamodule with data.styles=true")
            self.style_stats = stats

    def diffusion_loss(
        self,
        x0: Tensor,
        labels: Tensor,
        levels: Tensor,
        noise: Tensor,
        styles: Tensor | None = None,
        weighted: bool = False,
    ) -> Tensor:
        """The objective's mean squared error at noise ``levels`` (Min-SNR weighted when ``weighted`` and set)."""
        batch = self.objective.training_batch(x0, levels, noise)
        x_in = batch.x_in.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.x_in
        return self.objective.loss(self.unet(x_in, batch.time, labels, styles), batch, weighted=weighted)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x0, labels, styles = self._split_batch(batch)
        levels = self.objective.sample_levels(len(x0), x0.device)
        noise = torch.randn_like(x0)
        drop = torch.rand(len(labels), device=labels.device) < self.cond_drop_prob
        labels = torch.where(drop, torch.full_like(labels, self.unet.null_class), labels)
        if styles is not None:
            drop_style = drop[:, None] | (torch.rand(styles.shape, device=styles.device) < self.style_drop_prob)
            styles = styles.masked_fill(drop_style, float("nan"))
        loss = self.diffusion_loss(x0, labels, levels, noise, styles, weighted=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(x0))
        return loss

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        x0, labels, styles = self._split_batch(batch)
        gen = torch.Generator(device=x0.device).manual_seed(self.val_seed + batch_idx)
        levels = self.objective.sample_levels(len(x0), x0.device, generator=gen)
        noise = torch.randn(x0.shape, device=x0.device, generator=gen)
        loss = self.diffusion_loss(x0, labels, levels, noise, styles)
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
        if self.style_stats is not None:
            checkpoint[STYLE_STATS_KEY] = self.style_stats.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if STYLE_STATS_KEY in checkpoint:
            self.style_stats = StyleStats.from_dict(checkpoint[STYLE_STATS_KEY])

    @classmethod
    def load_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> DiffusionModule:
        """Rebuild a module from a training checkpoint; its weights are the EMA weights when EMA was on."""
        return cls.from_checkpoint(read_checkpoint(path, map_location), path)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], path: str | Path) -> DiffusionModule:
        """:meth:`load_checkpoint` of a checkpoint already read from ``path`` (named in its errors)."""
        from hydra.utils import instantiate

        if checkpoint.get(CONFIG_KEY) is None:
            raise ValueError(f"{path} holds no {CONFIG_KEY}: it was not written by diffusion-lab-train")
        config = upgrade_run_config(checkpoint[CONFIG_KEY])  # older checkpoints: older paths, no objective
        module = instantiate(config["model"], objective=instantiate(config["objective"]))
        try:
            module.load_state_dict(checkpoint["state_dict"])
        except (KeyError, RuntimeError) as err:
            raise ValueError(f"{path} does not match the model its config describes: {err}") from err
        module.run_config = config
        module.on_load_checkpoint(checkpoint)
        if module.style_conditioning and module.style_stats is None:
            raise ValueError(f"{path} is style-conditioned but holds no {STYLE_STATS_KEY}")
        return module.eval()
