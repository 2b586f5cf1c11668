"""Sweep machinery: the SLURM and parallel launcher configs and the Optuna search, composed from the real tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig

from diffusion_lab.config import CONF_DIR


def compose_hydra(*overrides: str) -> DictConfig:
    """``conf/train.yaml`` with its ``hydra`` node, as ``diffusion-lab-train -m`` composes it."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="train", return_hydra_config=True, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def test_slurm_launcher_composes_with_cluster_settings() -> None:
    cfg = compose_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.tasks_per_node=4")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.tasks_per_node, launcher.gpus_per_node) == ("gpu", 4, 1)
    assert launcher.max_num_timeout == 2 and launcher.timeout_min == 240


@pytest.mark.parametrize("override", ["hydra.launcher.timeout_min=soon", "hydra.launcher.partitoin=gpu"])
def test_slurm_launcher_refuses_a_bad_setting(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        compose_hydra("hydra/launcher=slurm", override)


def test_parallel_launcher_and_search_sweeper_compose() -> None:
    cfg = compose_hydra("hydra/launcher=parallel", "hydra/sweeper=search")
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert cfg.hydra.launcher.n_jobs == 2
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert set(sweeper.params) == {"model.optimizer.lr", "model", "schedule"} and sweeper.direction == "minimize"


@pytest.mark.slow
def test_a_tiny_optuna_search_minimises_the_validation_loss(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "search"
    cmd = [sys.executable, "-m", "diffusion_lab.train", "-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=2",
           "model=small", "experiment=smoke", "logger=none", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    losses = [yaml.safe_load((sweep_dir / job / "metrics.json").read_text())["val/loss"] for job in ("0", "1")]
    assert result["best_value"] == pytest.approx(min(losses))
    assert set(result["best_params"]) == {"model.optimizer.lr", "schedule"}  # model=small fixed on the command line
    assert 3e-4 <= result["best_params"]["model.optimizer.lr"] <= 3e-3


@pytest.mark.parametrize(
    ("experiment", "key", "values"),
    [("arch_sweep", "model", "small,base,large"), ("schedule_sweep", "schedule", "linear,quadratic,cosine")],
)
def test_sweep_experiments_sweep_their_question(experiment: str, key: str, values: str) -> None:
    cfg = compose_hydra(f"experiment={experiment}")
    assert cfg.hydra.sweeper.params[key] == values


@pytest.mark.slow
def test_a_sweep_experiment_runs_one_job_per_value(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "diffusion_lab.train", "-m", "experiment=schedule_sweep", "+experiment@_global_=smoke",
           "logger=none", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    schedules = [yaml.safe_load((sweep_dir / job / ".hydra" / "overrides.yaml").read_text()) for job in "012"]
    assert [o for job in schedules for o in job if o.startswith("schedule=")] == [
        "schedule=linear", "schedule=quadratic", "schedule=cosine"
    ]  # fmt: skip
