"""Checkpoints a kill cannot break: atomic writes, and a ``last.ckpt`` that is always the latest resume point."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` through ``.path.tmp-PID`` in the same folder and ``os.replace``.

    A process killed at any moment (SIGKILL, power loss after the fsync) leaves either the old
    file or the new one at ``path``, never a truncated one; a stray temporary file at worst.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


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


def check_resumable(path: str | Path, module: L.LightningModule) -> None:
    """Refuse, before training starts, a checkpoint that is unreadable or holds another model's weights."""
    state = read_checkpoint(path).get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no model weights: pass a .ckpt written by training")
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    if expected != found:
        differ = sorted(set(expected.items()) ^ set(found.items()))[0][0]
        raise ValueError(
            f"{path} holds another model (first difference: {differ}): resume with the model settings it was "
            "trained with, or start a new run in another hydra.run.dir"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with :func:`atomic_torch_save` for local paths.

    Lightning's own writer stages the file in the system temp folder and moves it, which is a copy,
    not a rename, when that folder is on another file system; a kill during the copy leaves a
    truncated ``last.ckpt``. Remote (fsspec URL) paths keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)


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
