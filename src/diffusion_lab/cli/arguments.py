"""The ``device=`` argument of the commands that sample: ``auto``, ``cpu``, ``cuda`` or any torch device."""

from __future__ import annotations

import torch


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
