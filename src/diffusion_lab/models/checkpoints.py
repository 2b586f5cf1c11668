"""The checkpoint format: what a training checkpoint holds besides Lightning's own keys, how it is found and
read safely, and how a checkpoint of an older version is read in today's terms.

A checkpoint of ``diffusion-lab-train`` is Lightning's dict with the resolved run config (:data:`CONFIG_KEY`),
a style-conditioned model's style statistics (:data:`STYLE_STATS_KEY`) and, in its ``callbacks``, the guide
snapshot of autoguidance (:data:`GUIDE_SNAPSHOT_KEY`). Sampling, evaluation and export read checkpoints
through this module; training writes them (``diffusion_lab.training``) and decides what may resume from one.
"""

from __future__ import annotations

import errno
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: Checkpoint key that holds the resolved run configuration, so a checkpoint rebuilds its model.
CONFIG_KEY = "diffusion_lab_config"
#: Checkpoint key of a style-conditioned model's training-set style distribution (``StyleStats``).
STYLE_STATS_KEY = "diffusion_lab_style_stats"
#: Key of the guide snapshot's state in a checkpoint's ``callbacks`` (``GuideSnapshot.state_key``).
GUIDE_SNAPSHOT_KEY = "GuideSnapshot"


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


def checkpoint_snapshot(checkpoint: dict[str, Any]) -> tuple[dict[str, Tensor], int] | None:
    """The guide snapshot of a training checkpoint, ``(state dict, step)``, or None when it holds none."""
    state = (checkpoint.get("callbacks") or {}).get(GUIDE_SNAPSHOT_KEY) or {}
    if state.get("weights") is None:
        return None
    return state["weights"], int(state["step"])


def state_difference(expected: dict[str, Any], found: dict[str, Any]) -> str | None:
    """The first weight whose name or shape differs between two state dicts; None when they match."""
    shapes = {key: tuple(value.shape) for key, value in expected.items()}
    other = {key: tuple(value.shape) for key, value in found.items()}
    return None if shapes == other else sorted(set(shapes.items()) ^ set(other.items()))[0][0]


#: Modules of version 0.1.0, whose paths the ``_target_`` keys of its checkpoints' configs name, and where
#: they live now.
MOVED_MODULES = {
    "diffusion_lab.diffusion_module": "diffusion_lab.models.diffusion_module",
    "diffusion_lab.unet": "diffusion_lab.models.unet",
    "diffusion_lab.lr_schedules": "diffusion_lab.models.lr_schedules",
    "diffusion_lab.schedules": "diffusion_lab.diffusion.schedules",
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
#: The objective of checkpoints from before the ``objective`` group: noise prediction on their schedule.
EPSILON_TARGET = "diffusion_lab.diffusion.objectives.EpsilonObjective"


def upgrade_config(config: Any) -> Any:
    """``config`` (a stored run config) with every ``_target_`` of version 0.1.0 mapped to its current path."""
    if isinstance(config, dict):
        return {
            key: _current_target(value) if key == "_target_" else upgrade_config(value) for key, value in config.items()
        }
    if isinstance(config, list):
        return [upgrade_config(item) for item in config]
    return config


def upgrade_run_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored run config in today's form: :func:`upgrade_config`, and the ``objective`` of a checkpoint from
    before objectives (eps on its ``schedule``, with the ``model.min_snr_gamma`` it had)."""
    config = upgrade_config(config)
    if "objective" not in config and "schedule" in config:
        model = dict(config.get("model") or {})
        objective = {"_target_": EPSILON_TARGET, "schedule": config["schedule"]}
        objective["min_snr_gamma"] = model.pop("min_snr_gamma", None)
        config = {**config, "model": model, "objective": objective}
    return config


def _current_target(target: Any) -> Any:
    if not isinstance(target, str):
        return target
    if target in MOVED_TARGETS:
        return MOVED_TARGETS[target]
    module, _, name = target.rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else target
