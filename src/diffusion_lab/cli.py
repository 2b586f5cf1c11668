"""What the command-line entry points share: a bad input ends the run with one line, not a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import torch
from hydra.errors import InstantiationException


def exit_with(err: BaseException) -> NoReturn:
    """Print the root cause of ``err`` as one ``error: ...`` line and exit 1 (``HYDRA_FULL_ERROR=1`` re-raises)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, ValueError):
        err = err.__cause__  # our own checks name the config key and the fix
    print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
    sys.exit(1)


def resolve_device(device: str) -> torch.device:
    """``auto`` is the GPU when there is one, else the CPU; otherwise any torch device string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no GPU is visible: use device=cpu (or auto)")
    return resolved


def checkpoint_path(ckpt: str | None) -> Path:
    """The checkpoint file named by ``ckpt=``, or a one-line reason it cannot be used."""
    if not ckpt:
        raise ValueError("ckpt=PATH is required: a checkpoint of diffusion-lab-train (its checkpoints/last.ckpt)")
    path = Path(ckpt)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path} (pass ckpt=PATH to a .ckpt file written by training)")
    return path
