"""Exponential moving average of the weights, updated in one fused call per step.

Lightning's ``EMAWeightAveraging`` updates through ``AveragedModel.update_parameters`` with a
per-tensor ``avg_fn``: for every parameter and buffer, every step, a detach, a device move, three
tensor operations and a copy (about 900 small operations for the small U-Net, as many kernel
launches on a GPU). :class:`FusedEMA` keeps Lightning's callback (its arguments, checkpoints and
swap-in for validation) and replaces the update with one ``torch._foreach_lerp_`` over all
floating-point tensors, so the host's work per step no longer grows with the model's depth.
"""

from __future__ import annotations

import itertools
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import Tensor, nn


def _state_tensors(module: nn.Module) -> list[Tensor]:
    """The parameters, then the buffers, of ``module``: what ``AveragedModel(use_buffers=True)`` averages."""
    return list(itertools.chain(module.parameters(), module.buffers()))


class FusedEMA(EMAWeightAveraging):
    """``EMAWeightAveraging`` with a fused update: same arguments, same schedule of updates, same checkpoints.

    The average after each update is ``lerp(average, current, 1 - decay)``, which equals Lightning's
    ``decay * average + (1 - decay) * current`` to float rounding; integer buffers (a batch counter) get
    Lightning's formula. The first update copies the model, as Lightning's does.

    Args:
        decay: weight of the running average at each update, in (0, 1).
        update_every_n_steps: update after every n-th optimizer step.
        update_starting_at_step: the first optimizer step that updates (the average starts as a copy there).
        update_starting_at_epoch: or the first epoch.
        device: where the average lives (None: the model's device).
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        device: torch.device | str | int | None = None,
    ) -> None:
        super().__init__(
            device=device,
            decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
            update_starting_at_epoch=update_starting_at_epoch,
        )
        self.decay = decay

    @property
    def state_key(self) -> str:
        """Lightning's own key, so runs checkpointed with ``EMAWeightAveraging`` resume with this callback."""
        return EMAWeightAveraging.__qualname__

    @torch.no_grad()
    def _update(self, pl_module: L.LightningModule) -> None:
        averaged = self._average_model
        assert averaged is not None, "the average is created in setup('fit')"
        if averaged.n_averaged == 0:
            averaged.update_parameters(pl_module)  # the first update copies the model
            return
        average, current = _state_tensors(averaged.module), _state_tensors(pl_module)
        pairs = [(avg, cur.to(avg.device)) for avg, cur in zip(average, current, strict=True)]
        floats = [pair for pair in pairs if pair[0].is_floating_point()]
        torch._foreach_lerp_([avg for avg, _ in floats], [cur for _, cur in floats], 1 - self.decay)
        for avg, cur in pairs:
            if not avg.is_floating_point():
                avg.copy_(avg * self.decay + cur * (1 - self.decay))
        averaged.n_averaged += 1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Lightning's update rule (``should_update`` on the zero-based step index), with the fused update."""
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            self._update(pl_module)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning's per-epoch update rule (``update_starting_at_epoch``), with the fused update."""
        if trainer.current_epoch > self._latest_update_epoch and self.should_update(epoch_idx=trainer.current_epoch):
            self._update(pl_module)
            self._latest_update_epoch = trainer.current_epoch
