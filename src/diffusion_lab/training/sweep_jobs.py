"""How a job of a ``-m`` sweep runs: its share of the cores, and a DDP job in a process of its own.

Under the joblib launcher (``hydra/launcher=parallel``) each worker gets an equal share of the cores
as torch threads (:func:`share_cores`).

Lightning starts DDP ranks 1..N-1 by running the command line again. Inside a ``-m`` sweep that
command line is the whole sweep, so every extra rank would run a sweep of its own, and a later job
would reuse the first job's process group. A sweep job with a DDP strategy therefore runs its
training in a child ``diffusion-lab-train`` with only that job's overrides, in the job's folder:
Lightning then starts the extra ranks of that one job, and the process group ends with it. Where a
cluster starts the ranks itself (SLURM with ``tasks_per_node=N``, torchrun), the job trains in place.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig

from diffusion_lab.config import SWEEP_GROUP_ENV, sweep_group

log = logging.getLogger(__name__)


class ChildFailed(RuntimeError):
    """The child ``diffusion-lab-train`` of a DDP sweep job exited with an error (its message is the child's line)."""


def share_cores() -> None:
    """Under the joblib launcher, give each of its n_jobs workers an equal share of the cores as torch threads.

    n_jobs processes each using every core run far slower than one.
    """
    if not HydraConfig.initialized():
        return
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return
    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs") or 1
    jobs = cores if n_jobs < 0 else min(n_jobs, cores)
    torch.set_num_threads(max(1, cores // jobs))
    log.info("joblib launcher: %d jobs at once, %d torch threads each", jobs, torch.get_num_threads())


def needs_own_process(cfg: DictConfig) -> bool:
    """True for a ``-m`` sweep job that Lightning would start DDP ranks for by re-running the command line."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    strategy = str(cfg.trainer.get("strategy", ""))
    if not strategy.startswith("ddp") or any(kind in strategy for kind in ("spawn", "fork", "notebook")):
        return False
    started_by_cluster = SLURMEnvironment.detect() or TorchElasticEnvironment.detect() or "LOCAL_RANK" in os.environ
    return not started_by_cluster


def train_in_child() -> dict[str, float]:
    """Run this sweep job as ``diffusion-lab-train <job overrides>`` in its folder; returns its ``metrics.json``.

    The child keeps the sweep's wandb group; its output streams through, and its ``error:`` line becomes
    :class:`ChildFailed`.
    """
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    command = [
        sys.executable, "-m", "diffusion_lab.cli.train", *hydra_cfg.overrides.task,
        f"hydra.run.dir={job_dir}", "hydra.output_subdir=null",
    ]  # fmt: skip
    group = sweep_group()
    env = {**os.environ, **({SWEEP_GROUP_ENV: group} if group else {})}
    log.info("DDP job: training in its own process: %s", " ".join(command[1:]))
    child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    assert child.stderr is not None
    tail = b""
    while chunk := child.stderr.read1(65536):
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        tail = (tail + chunk)[-4096:]
    if child.wait() != 0:
        lines = tail.decode(errors="replace").strip().splitlines()
        errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
        raise ChildFailed(errors[-1] if errors else f"the DDP job's process exited with status {child.returncode}")
    return json.loads((job_dir / "metrics.json").read_text())
