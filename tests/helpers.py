"""What the tests share: running a command as a user does, in a subprocess or in process, checking its errors, and
comparing the training state of two checkpoints."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from diffusion_lab.config import CONF_DIR
from diffusion_lab.models.checkpoints import read_checkpoint

#: A CLIP small enough to run in tests: ViT with one block, 32-d embeddings, 32 x 32 input.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def command(name: str) -> list[str]:
    """``diffusion-lab-NAME`` as this interpreter runs it (``python -m diffusion_lab.cli.NAME``)."""
    return [sys.executable, "-m", f"diffusion_lab.cli.{name}"]


def user_env() -> dict[str, str]:
    """The environment of a user who did not ask for tracebacks (``HYDRA_FULL_ERROR=0``)."""
    return {**os.environ, "HYDRA_FULL_ERROR": "0"}


def run_cli(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """``diffusion-lab-NAME ARGS`` as a user runs it, to the end; stdout and stderr kept apart."""
    return subprocess.run([*command(name), *args], capture_output=True, text=True, env=user_env(), timeout=timeout)


def start_cli(name: str, *args: str) -> subprocess.Popen[str]:
    """``diffusion-lab-NAME ARGS`` started in the background, stdout and stderr in one pipe."""
    return subprocess.Popen(
        [*command(name), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=user_env()
    )


def main_in_process(monkeypatch: pytest.MonkeyPatch, name: str, *overrides: str) -> None:
    """The ``main()`` of ``diffusion-lab-NAME`` in this process, with ``overrides`` as its command line."""
    monkeypatch.setattr(sys, "argv", [f"diffusion-lab-{name}", *overrides])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    importlib.import_module(f"diffusion_lab.cli.{name}").main()


def compose_hydra(*overrides: str, config_name: str = "train", conf_dir: Path = CONF_DIR) -> DictConfig:
    """``conf/<config_name>.yaml`` (``src/diffusion_lab/conf/``, or ``conf_dir``) with its ``hydra`` node, as
    ``diffusion-lab-<config_name> -m`` composes it."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return compose(config_name=config_name, return_hydra_config=True, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def one_error_line(stderr: str) -> str:
    """The single ``error: ...`` line of a refused command's stderr; fails on a traceback or on more or fewer lines."""
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where two nested checkpoint parts first differ (tensors compared exactly), as a path; None when equal."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
        return None if same else path or "."
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path} (keys {sorted(map(str, a.keys() ^ b.keys()))})"
        found = (first_difference(a[key], b[key], f"{path}/{key}") for key in a)
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        found = (first_difference(x, y, f"{path}/{i}") for i, (x, y) in enumerate(zip(a, b, strict=True)))
    else:
        return None if a == b else path or "."
    return next((where for where in found if where is not None), None)


def assert_same_training_state(resumed: Path, uninterrupted: Path) -> None:
    """The checkpoints hold the same step, trained weights, EMA weights and optimizer state (Adam's moments),
    bit for bit."""
    first, second = read_checkpoint(resumed), read_checkpoint(uninterrupted)
    assert first["global_step"] == second["global_step"]
    for part in ("current_model_state", "state_dict", "optimizer_states"):
        where = first_difference(first[part], second[part])
        assert where is None, f"{resumed} differs from {uninterrupted} at {part}{where}"


class SigtermAt(L.Callback):
    """Sends this process SIGTERM after training step ``step``, as a scheduler stopping the job there would
    (``+callbacks.stop={_target_:tests.helpers.SigtermAt,step:8}``)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
