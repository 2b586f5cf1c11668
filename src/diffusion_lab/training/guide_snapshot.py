"""The guide of autoguidance kept by the run itself: its EMA weights at a fraction of the run.

Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself") guides a model
with a weaker one of the same data. An earlier snapshot of the same run is such a model: it needs no second
training. :class:`GuideSnapshot` keeps the weights validation uses (the EMA weights when the run trains with
EMA) when the run reaches ``fraction`` of its optimizer steps, and stores them in every later checkpoint as
its callback state, so ``last.ckpt`` carries its guide and a resumed run keeps (or, resumed earlier, takes)
the snapshot. :func:`diffusion_lab.models.checkpoints.checkpoint_snapshot` reads it back.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

from diffusion_lab.models.checkpoints import GUIDE_SNAPSHOT_KEY
from diffusion_lab.rules import GUIDE_FRACTION

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


class GuideSnapshot(L.Callback):
    """Keep the model's EMA weights at ``fraction`` of the run's optimizer steps, as the guide of autoguidance.

    The snapshot is taken once, after the first optimizer step at or past ``fraction`` of
    ``trainer.estimated_stepping_batches``; list this callback after the EMA callback (``FusedEMA``),
    so it sees that step's average. Without an EMA callback it keeps the raw weights.

    Args:
        fraction: where in the run, in (0, 1): 0.33 keeps the weights a third of the way through.
    """

    def __init__(self, fraction: float = 0.33) -> None:
        GUIDE_FRACTION.check("callbacks.guide_snapshot.fraction", fraction)
        self.fraction = float(fraction)
        #: The optimizer step the snapshot was taken at (None: not yet).
        self.step: int | None = None
        #: The module's state dict at that step, on the CPU (keys as a checkpoint's ``state_dict``).
        self.weights: dict[str, Tensor] | None = None

    def snapshot_step(self, trainer: L.Trainer) -> int | None:
        """The optimizer step to take the snapshot at: ``fraction`` of the run, at least 1 (None: no known length)."""
        total = trainer.estimated_stepping_batches
        return max(1, round(self.fraction * total)) if math.isfinite(total) else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.weights is None and self.snapshot_step(trainer) is None:
            log.warning("callbacks.guide_snapshot: the run has no known length (trainer.max_steps or max_epochs)")

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.weights is not None:
            return
        at = self.snapshot_step(trainer)
        if at is None or trainer.global_step < at:
            return
        averaging = next((c for c in trainer.callbacks if isinstance(c, WeightAveraging)), None)
        average = getattr(averaging, "_average_model", None)
        source = pl_module if average is None else average.module
        self.weights = {key: value.detach().to("cpu", copy=True) for key, value in source.state_dict().items()}
        self.step = trainer.global_step
        log.info("Guide snapshot for autoguidance: the %s weights at step %d", "raw" if average is None else "EMA",
                 self.step)  # fmt: skip

    @property
    def state_key(self) -> str:
        """Where a checkpoint keeps the snapshot: the key the checkpoint format reads it from."""
        return GUIDE_SNAPSHOT_KEY

    def state_dict(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "step": self.step, "weights": self.weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step = state_dict.get("step")
        self.weights = state_dict.get("weights")
