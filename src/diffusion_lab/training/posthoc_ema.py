"""The snapshots that let the EMA length be chosen after training (EDM2's post-hoc EMA).

:class:`PostHocEMASnapshots` tracks power-function EMAs of the weights at two relative lengths and saves
them every ``every_n_steps`` optimizer steps; :mod:`diffusion_lab.models.posthoc_ema` holds the file
format and synthesises any other length from them (``diffusion-lab-evaluate ema_length=SIGMA_REL``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from diffusion_lab.models.posthoc_ema import ema_decay, gamma_of, read_snapshots, save_snapshot

log = logging.getLogger(__name__)


def _tracked(module: L.LightningModule) -> dict[str, Tensor]:
    """The module's floating-point ``state_dict`` entries (parameters and buffers), as the live tensors."""
    return {name: value for name, value in module.state_dict(keep_vars=True).items() if value.is_floating_point()}


class PostHocEMASnapshots(L.Callback):
    """Track power-function EMAs of the weights at ``sigma_rels`` and save them every ``every_n_steps`` optimizer steps
    and when training ends, as safetensors files in ``dirpath``.

    Each average is updated after every optimizer step t by one fused ``lerp`` towards the weights with
    ``1 - beta_t``, ``beta_t = (1 - 1/t) ** (gamma + 1)`` (:func:`~diffusion_lab.models.posthoc_ema.ema_decay`),
    and lives on the model's device. The averages go into every checkpoint, so a run continued with
    ``resume=true`` writes the same snapshots as one never interrupted; snapshots later than the resume
    point (left by a run killed after its last checkpoint) are removed when it resumes. A run resumed at
    step > 0 from a checkpoint without them keeps none (its averages would lack the steps before). Only
    rank 0 writes, and a fast dev run writes nothing.

    Args:
        dirpath: the snapshot folder; ``diffusion-lab-evaluate`` reads ``posthoc_ema/`` beside the checkpoint.
        sigma_rels: at least two different relative EMA lengths in (0, 0.25] (EDM2: 0.05 and 0.10).
        every_n_steps: optimizer steps between snapshots.
    """

    def __init__(
        self, dirpath: str | Path, sigma_rels: Sequence[float] = (0.05, 0.1), every_n_steps: int = 100
    ) -> None:
        lengths = tuple(float(sigma_rel) for sigma_rel in sigma_rels)
        if len(set(lengths)) < 2:
            raise ValueError(
                f"callbacks.posthoc_ema.sigma_rels needs two or more different lengths, got {list(lengths)} "
                "(e.g. callbacks.posthoc_ema.sigma_rels=[0.05,0.1])"
            )
        if every_n_steps < 1:
            raise ValueError(f"callbacks.posthoc_ema.every_n_steps must be positive, got {every_n_steps}")
        self.dirpath = Path(dirpath)
        self.sigma_rels = lengths
        self.gammas = tuple(gamma_of(sigma_rel) for sigma_rel in lengths)
        self.every_n_steps = every_n_steps
        self._names: list[str] = []
        self._averages: list[list[Tensor]] = []
        self._step = 0
        self._active = False
        self._restored: dict[str, Any] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the averages at step 0, or continue the ones the checkpoint resumed from."""
        current = _tracked(pl_module)
        self._names = list(current)
        restored, self._restored = self._restored, None
        if restored is not None:
            saved = restored["averages"]
            if any(set(average) != set(current) for average in saved):
                raise ValueError(
                    "the checkpoint's post-hoc EMA averages hold another model: resume the run it belongs to"
                )
            self._averages = [
                [average[name].to(value.device, value.dtype) for name, value in current.items()] for average in saved
            ]
            self._step = int(restored["step"])
            if trainer.is_global_zero:
                for snapshot in read_snapshots(self.dirpath):
                    if snapshot.step > self._step:  # written after the checkpoint by a run that was killed
                        snapshot.path.unlink()
        elif trainer.global_step > 0:
            rank_zero_warn(
                f"Post-hoc EMA snapshots are off for this run: it resumed at step {trainer.global_step} from a "
                "checkpoint without them, and their averages must start at step 0"
            )
            return
        else:
            self._averages = [[value.detach().clone() for value in current.values()] for _ in self.sigma_rels]
            self._step = 0
        self._active = True

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """After each optimizer step: update every average, and save them every ``every_n_steps`` steps."""
        step = trainer.global_step
        if not self._active or step <= self._step:  # no optimizer step since the last call (gradient accumulation)
            return
        current = list(_tracked(pl_module).values())
        for average, gamma in zip(self._averages, self.gammas, strict=True):
            torch._foreach_lerp_(average, current, 1 - ema_decay(gamma, step))
        self._step = step
        if step % self.every_n_steps == 0:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The last step's averages too, so that the run's final checkpoint has snapshots at its own step."""
        if self._active and self._step > 0 and self._step % self.every_n_steps:
            self._save(trainer)
        if self._active and trainer.is_global_zero and not trainer.fast_dev_run:
            log.info(
                "Post-hoc EMA snapshots (sigma_rel %s) up to step %d in %s: choose the EMA length with "
                "diffusion-lab-evaluate ema_length=SIGMA_REL",
                ", ".join(f"{s:g}" for s in self.sigma_rels), self._step, self.dirpath,
            )  # fmt: skip

    def _save(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        for sigma_rel, average in zip(self.sigma_rels, self._averages, strict=True):
            save_snapshot(self.dirpath, self._step, sigma_rel, dict(zip(self._names, average, strict=True)))

    def state_dict(self) -> dict[str, Any]:
        """The lengths, the last step averaged and the averages (name -> tensor); nothing for a run that keeps none."""
        if not self._active:
            return {}
        averages = [dict(zip(self._names, average, strict=True)) for average in self._averages]
        return {"sigma_rels": list(self.sigma_rels), "step": self._step, "averages": averages}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the checkpoint's averages for :meth:`on_train_start`; refuse other lengths than the run tracked."""
        if not state_dict:
            return
        if tuple(state_dict["sigma_rels"]) != self.sigma_rels:
            tracked = ",".join(f"{s:g}" for s in state_dict["sigma_rels"])
            raise ValueError(
                f"the checkpoint tracked post-hoc EMA lengths [{tracked}], not callbacks.posthoc_ema.sigma_rels="
                f"{list(self.sigma_rels)}: resume with callbacks.posthoc_ema.sigma_rels=[{tracked}]"
            )
        self._restored = state_dict
