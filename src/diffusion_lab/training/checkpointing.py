"""Training's side of checkpoints: what may resume from one, atomic writes, a ``last.ckpt`` that is always the
latest resume point, the random state in it, and the stop at a NaN loss before it reaches a checkpoint.

The format itself (its keys, safe reading, older versions) is :mod:`diffusion_lab.models.checkpoints`.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from diffusion_lab.diffusion.objectives import OBJECTIVES
from diffusion_lab.models.checkpoints import CONFIG_KEY, read_checkpoint, state_difference, upgrade_run_config
from diffusion_lab.utils.files import atomic_write

#: What a run's config and its checkpoint must agree on to continue one another: the data the model
#: learns, the shape of what it draws, and the objective and forward process it learns to reverse.
RESUME_KEYS = (
    "data.name", "model.unet.in_channels", "model.unet.num_classes", "model.style_conditioning",
    "diffusion.timesteps", "schedule", "objective._target_",
)  # fmt: skip


def _select(config: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(config, dict) or part not in config:
            return None
        config = config[part]
    return config


#: Keys a user sets through their config group: ``data=mnist`` rather than ``data.name=mnist``.
GROUP_OF_KEY = {"data.name": "data", "objective._target_": "objective"}


def _first_difference(key: str, old: Any, new: Any) -> tuple[str, str]:
    """``(old, new)`` as overrides: a component by its config group option (``schedule=cosine``) when its
    ``_target_`` differs, else its first differing argument (``schedule.beta_end=0.02``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        if old.get("_target_") != new.get("_target_"):
            name = lambda config: str(config.get("_target_")).rpartition(".")[2]  # noqa: E731
            return f"{key}={name(old)}", f"{key}={name(new)}"
        sub = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
        return _first_difference(f"{key}.{sub}", old.get(sub), new.get(sub))
    if key == "objective._target_":  # objective=eps rather than its class path
        old, new = (_objective_name(target) for target in (old, new))
    key = GROUP_OF_KEY.get(key, key)
    return f"{key}={old}", f"{key}={new}"


def _objective_name(target: Any) -> Any:
    """``eps`` for the ``_target_`` of :class:`EpsilonObjective`; any other value as is."""
    by_class = {cls.__name__: name for name, cls in OBJECTIVES.items()}
    return by_class.get(str(target).rpartition(".")[2], target)


def config_difference(stored: dict[str, Any] | None, current: dict[str, Any] | None) -> tuple[str, str] | None:
    """The first of :data:`RESUME_KEYS` on which a checkpoint's run config and this run's differ, as
    ``(stored, current)`` override texts; None when they agree (or either config is unknown)."""
    if not stored or not current:
        return None
    stored = upgrade_run_config(stored)
    for key in RESUME_KEYS:
        old, new = _select(stored, key), _select(current, key)
        if old != new:
            return _first_difference(key, old, new)
    return None


def check_resumable(path: str | Path, module: L.LightningModule) -> None:
    """Refuse, before training starts, a checkpoint that is unreadable, was trained on other data or with
    another forward process, or holds another model's weights; the line names the difference and the fix."""
    checkpoint = read_checkpoint(path)
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no model weights: pass a .ckpt written by training")
    if (differ := config_difference(checkpoint.get(CONFIG_KEY), getattr(module, "run_config", None))) is not None:
        raise ValueError(
            f"{path} was trained with {differ[0]}, this run has {differ[1]}: resume with {differ[0]}, or fine-tune "
            f"it on this run's settings with init_from={path} (weights only; fresh counters) in another hydra.run.dir"
        )
    if (differ := state_difference(module.state_dict(), state)) is not None:
        raise ValueError(
            f"{path} holds another model (first difference: {differ}): resume with the model settings it was "
            "trained with, or start a new run in another hydra.run.dir"
        )


def load_initial_weights(path: str | Path, module: L.LightningModule) -> None:
    """``init_from=PATH``: the checkpoint's weights (its EMA weights when it has them) into ``module``.

    Only the weights: the optimizer, the LR schedule, the step counters and the best-checkpoint record
    start fresh, so a model trained on one dataset can be fine-tuned on another.
    """
    state = read_checkpoint(path).get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"init_from={path} holds no model weights: pass a .ckpt written by training")
    if (differ := state_difference(module.state_dict(), state)) is not None:
        raise ValueError(
            f"init_from={path} holds another model (first difference: {differ}): use the model settings it was "
            "trained with (model=..., model.unet.down_chs=...)"
        )
    module.load_state_dict(state)


class RandomState(L.Callback):
    """Keeps the global random states of torch (CPU and CUDA), NumPy and Python in every checkpoint and restores
    them on resume.

    Training draws timesteps, noise and condition drops from torch's global generator (a callback or a
    data transform of the user's may draw from NumPy's or Python's); with these states restored, and the
    batch order's position restored by the training loader (``TensorBatches``), a run resumed at any step
    takes exactly the steps an uninterrupted run takes, so both end with the same weights on the CPU.
    The states are kept as tensors, lists and numbers, which weights-only loading reads. A checkpoint
    without the NumPy and Python states (an older one) leaves them as seeded.

    It also hands the training loader its position when Lightning would drop it (:meth:`on_train_start`).
    """

    def state_dict(self) -> dict[str, Any]:
        kind, key, pos, has_gauss, gauss = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, key.tolist(), pos, has_gauss, gauss],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Give the training loader the batch position of the checkpoint being resumed, if it has not got it.

        Lightning hands the checkpoint's loader states over when it sets up the training data. A schedule
        that spans the run (``one_cycle``) reads ``trainer.estimated_stepping_batches`` in
        ``configure_optimizers``, which sets that data up before the checkpoint's loop state is restored,
        so Lightning would drop the states and the epoch would start over. No-op when they were handed over.
        """
        trainer.fit_loop._load_combined_loader_states()  # Lightning 2.6's own hand-over, called once more

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        if "numpy" in state_dict:
            kind, key, pos, has_gauss, gauss = state_dict["numpy"]
            np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
        if "python" in state_dict:
            version, internal, gauss = state_dict["python"]
            random.setstate((version, tuple(internal), gauss))


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); the message is the one line that says so."""


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
        try:
            atomic_write(path, functools.partial(torch.save, checkpoint))
        except OSError as err:  # a full disk, a quota, a folder that went away: the previous file is intact
            kept = f"the previous {Path(path).name} is intact" if Path(path).is_file() else "no earlier file was there"
            raise CheckpointWriteError(
                f"could not write the checkpoint {path} ({err.strerror or err}; {kept}): free space or pass "
                "another hydra.run.dir, then continue with resume=true"
            ) from err


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest resume point.

    Lightning refreshes ``last.ckpt`` only when a top-k checkpoint is written, i.e. when ``val/loss``
    improved; a kill after a few non-improving epochs would lose them. This one also writes it

    - after every validation (the best-k files still follow ``monitor``),
    - when ``max_steps`` ends training between two validations,
    - on SIGTERM (SLURM pre-emption or requeue, ``kill``), after which the run ends cleanly with exit 0:
      Lightning turns the signal into an exception at the next batch boundary.

    Under SLURM, Lightning answers the requeue signal (``SIGUSR1``, e.g. ``sbatch --signal=USR1@90``) by
    saving ``hpc_ckpt_N.ckpt`` in the run folder at that moment, possibly in the middle of a step, and
    requeueing the job, whose SIGTERM then writes ``last.ckpt`` at the step boundary. The ``hpc_ckpt``
    files are deleted then: ``last.ckpt`` stays the one resume point, and the requeued job resumes it.

    Continue with ``resume=true`` and the same ``hydra.run.dir`` (a requeued SLURM job does so by itself).
    Arguments are ``ModelCheckpoint``'s.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the best-checkpoint record, also in a run folder that was moved, copied or renamed.

        Lightning keeps only ``best_model_path`` when the folder changed, still pointing into the old
        one, and then writes ``last-v1.ckpt`` beside this folder's ``last.ckpt``. Here every recorded path
        is taken to this folder (a file that is not here is forgotten), so the run goes on refreshing
        this folder's ``last.ckpt`` and never reads, deletes or writes anything in the old location.
        """
        old, new = state_dict.get("dirpath"), self.dirpath
        if old is None or new is None or Path(old) == Path(new):
            super().load_state_dict(state_dict)
            return

        def here(path: str) -> str:
            moved = Path(new) / Path(path).name if path and Path(path).parent == Path(old) else None
            return str(moved) if moved is not None and moved.is_file() else ""

        best = here(state_dict.get("best_model_path", ""))
        recorded = state_dict.get("best_k_models") or {}
        best_k = {moved: score for path, score in recorded.items() if (moved := here(path))}
        super().load_state_dict(
            {
                **state_dict,
                "dirpath": new,
                "best_model_path": best,
                "best_model_score": state_dict.get("best_model_score") if best else None,
                "kth_best_model_path": here(state_dict.get("kth_best_model_path", "")),
                "best_k_models": best_k,
                "last_model_path": here(state_dict.get("last_model_path", "")),
            }
        )

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
            if trainer.is_global_zero:
                for superseded in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
                    superseded.unlink(missing_ok=True)
            rank_zero_warn(
                f"SIGTERM at step {trainer.global_step}: {self.last_model_path} is the resume point; "
                "continue with resume=true and the same hydra.run.dir (a requeued SLURM job does so by itself)"
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
