"""Checkpoints a kill or a diverged loss cannot break: atomic writes, a ``last.ckpt`` that is always the latest
resume point, safe reading, and the stop at a NaN loss before it reaches a checkpoint."""

from __future__ import annotations

import errno
import functools
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from diffusion_lab.utils.files import atomic_write


def checkpoint_file(ckpt: str | Path | None, folders: bool = True) -> Path:
    """The checkpoint named by ``ckpt=`` (or ``ckpt_path=``), or a one-line reason it cannot be used.

    With ``folders`` a model folder of ``diffusion-lab-export`` is a checkpoint too (its contents are
    checked when it is loaded).
    """
    either = " or a model folder of diffusion-lab-export" if folders else ""
    if not ckpt:
        raise ValueError(
            f"ckpt=PATH is required: a checkpoint of diffusion-lab-train (its checkpoints/last.ckpt){either}"
        )
    path = Path(ckpt)
    if path.is_dir() and not folders:
        raise ValueError(f"{path} is a folder: pass ckpt=PATH to a .ckpt file written by training")
    if not (path.is_file() or (folders and path.is_dir())):
        raise ValueError(f"checkpoint not found: {path} (pass ckpt=PATH to a .ckpt file written by training{either})")
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling code (``weights_only=True``).

    Raises:
        ValueError: one line naming the file and why it cannot be read (missing, truncated, not a
            checkpoint, or holding objects outside torch's safe set).
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint not found: {path}") from None
    except Exception as err:
        if isinstance(err, pickle.UnpicklingError):  # torch's text here is about weights_only, not the file
            reason = "not a PyTorch checkpoint, or it holds objects weights-only loading refuses"
        elif "zip archive" in str(err) or isinstance(err, EOFError) or getattr(err, "errno", None) == errno.EINVAL:
            reason = "truncated or corrupt file"
        else:
            reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"{path} is not a readable checkpoint ({reason}): pass a .ckpt written by training") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} is not a training checkpoint: pass a .ckpt written by training")
    return checkpoint


#: Modules of version 0.1.0, whose paths the ``_target_`` keys of its checkpoints' configs name, and where
#: they live now.
MOVED_MODULES = {
    "diffusion_lab.diffusion_module": "diffusion_lab.models.diffusion_module",
    "diffusion_lab.unet": "diffusion_lab.models.unet",
    "diffusion_lab.lr_schedules": "diffusion_lab.models.lr_schedules",
    "diffusion_lab.schedules": "diffusion_lab.diffusion.schedules",
    "diffusion_lab.samplers": "diffusion_lab.diffusion.samplers",
    "diffusion_lab.datamodule": "diffusion_lab.data.datamodule",
    "diffusion_lab.clip_score": "diffusion_lab.evaluation.clip",
    "diffusion_lab.callbacks": "diffusion_lab.training.callbacks",
    "diffusion_lab.checkpointing": "diffusion_lab.training.checkpointing",
    "diffusion_lab.loggers": "diffusion_lab.training.loggers",
}
#: Classes that moved to another module of the new tree.
MOVED_TARGETS = {
    "diffusion_lab.callbacks.StopOnNonFiniteLoss": "diffusion_lab.training.checkpointing.StopOnNonFiniteLoss"
}


def upgrade_config(config: Any) -> Any:
    """``config`` (a stored run config) with every ``_target_`` of version 0.1.0 mapped to its current path."""
    if isinstance(config, dict):
        return {
            key: _current_target(value) if key == "_target_" else upgrade_config(value) for key, value in config.items()
        }
    if isinstance(config, list):
        return [upgrade_config(item) for item in config]
    return config


def _current_target(target: Any) -> Any:
    if not isinstance(target, str):
        return target
    if target in MOVED_TARGETS:
        return MOVED_TARGETS[target]
    module, _, name = target.rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else target


def check_resumable(path: str | Path, module: L.LightningModule) -> None:
    """Refuse, before training starts, a checkpoint that is unreadable or holds another model's weights."""
    state = read_checkpoint(path).get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no model weights: pass a .ckpt written by training")
    differ = state_difference(module.state_dict(), state)
    if differ is not None:
        raise ValueError(
            f"{path} holds another model (first difference: {differ}): resume with the model settings it was "
            "trained with, or start a new run in another hydra.run.dir"
        )


def state_difference(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str | None:
    """The first key whose presence or shape differs between two state dicts; None when they match."""
    shapes = [{key: tuple(value.shape) for key, value in state.items()} for state in (expected, found)]
    if shapes[0] == shapes[1]:
        return None
    return sorted(set(shapes[0].items()) ^ set(shapes[1].items()))[0][0]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with :func:`~diffusion_lab.utils.files.atomic_write` for local paths.

    Lightning's own writer stages the file in the system temp folder and moves it, which is a copy,
    not a rename, when that folder is on another file system; a kill during the copy leaves a
    truncated ``last.ckpt``. Remote (fsspec URL) paths keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_write(path, functools.partial(torch.save, checkpoint))


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest resume point.

    Lightning refreshes ``last.ckpt`` only when a top-k checkpoint is written, i.e. when ``val/loss``
    improved; a kill after a few non-improving epochs would lose them. This one also writes it

    - after every validation (the best-k files still follow ``monitor``),
    - when ``max_steps`` ends training between two validations,
    - on SIGTERM (SLURM pre-emption, ``kill``), after which the run ends cleanly with exit 0:
      Lightning turns the signal into an exception at the next batch boundary.

    Continue with ``resume=true`` and the same ``hydra.run.dir``. Arguments are ``ModelCheckpoint``'s.
    """

    def _refresh_last(self, trainer: L.Trainer) -> bool:
        if not self.save_last or self._should_skip_saving_checkpoint(trainer):
            return False
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):  # else the best-k save comes at epoch end
            self._refresh_last(trainer)  # a no-op when the best-k save above already wrote this step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer) or 0 <= trainer.max_steps <= trainer.global_step:
            self._refresh_last(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            super().on_exception(trainer, pl_module, exception)
        elif self._refresh_last(trainer) or self.last_model_path:
            rank_zero_warn(
                f"SIGTERM at step {trainer.global_step}: {self.last_model_path} is the resume point; "
                "continue with resume=true and the same hydra.run.dir"
            )


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or weights; the run stops and keeps its last good checkpoint."""


class StopOnNonFiniteLoss(L.Callback):
    """Stop training at the first NaN/inf training or validation loss; never write a checkpoint with NaN/inf weights.

    The loss is checked on the device without a host sync each step; the flag is read every
    ``check_every_n_steps`` steps and before every checkpoint, so a diverged model never
    overwrites ``last.ckpt``. ``val/loss`` is read after each validation and before every
    checkpoint too: the EMA weights validation uses can diverge while the training loss is
    still finite.

    Args:
        check_every_n_steps: how often the accumulated flag is read (one host sync each time).
    """

    def __init__(self, check_every_n_steps: int = 10) -> None:
        if check_every_n_steps <= 0:
            raise ValueError("callbacks.stop_on_non_finite.check_every_n_steps must be positive")
        self.check_every_n_steps = check_every_n_steps
        self._finite: torch.Tensor | None = None

    def _raise_if_diverged(self, trainer: L.Trainer, metric: str = "train/loss") -> None:
        if self._finite is not None and not bool(self._finite):
            ckpt = trainer.checkpoint_callback
            last = Path(ckpt.dirpath or ".") / "last.ckpt" if ckpt is not None else None
            kept = (
                f"the last good checkpoint {last} is kept" if last and last.is_file() else "no checkpoint was written"
            )
            raise NonFiniteLossError(
                f"{metric} became NaN or infinite by step {trainer.global_step} ({kept}): "
                "lower model.optimizer.lr or set trainer.gradient_clip_val"
            )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        finite = torch.isfinite(loss.detach()).all()
        self._finite = finite if self._finite is None else self._finite & finite
        if trainer.global_step % self.check_every_n_steps == 0:
            self._raise_if_diverged(trainer)

    def _check_val_loss(self, trainer: L.Trainer) -> None:
        val_loss = trainer.callback_metrics.get("val/loss")
        if val_loss is not None and not bool(torch.isfinite(val_loss).all()):
            self._finite = torch.tensor(False)
            self._raise_if_diverged(trainer, "val/loss")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check_val_loss(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._check_val_loss(trainer)  # the checkpoint after a validation is written before on_validation_end here
        self._raise_if_diverged(trainer)
        weights = [*pl_module.parameters(), *checkpoint.get("state_dict", {}).values()]
        if not all(bool(torch.isfinite(w).all()) for w in weights if w.is_floating_point()):
            self._finite = torch.tensor(False)
            self._raise_if_diverged(trainer)
