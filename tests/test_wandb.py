"""``logger=wandb``: offline runs under the run directory, with config, history, images and tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: Their runs and evaluations score MNIST samples with its reference classifier, trained once up front.
pytestmark = pytest.mark.usefixtures("mnist_classifier")


def read_records(path: Path) -> list[dict]:
    """Every record of an offline ``run-*.wandb`` file, as wandb's own reader gives them (``wandb leet inspect
    --json``: one JSON object a record, ``type`` naming its kind)."""
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("ddp", [False, True], ids=["one_process", "ddp_two_cpu_processes"])
def test_offline_sweep_runs_share_a_group_and_hold_config_history_images_and_tables(ddp: bool, tmp_path: Path) -> None:
    """One wandb run per job, also when each job trains on two DDP processes (rank 0 logs)."""
    sweep_dir = tmp_path / "multirun"
    trainer = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"] if ddp else []
    cmd = [sys.executable, "-m", "diffusion_lab.cli.train", "-m", "experiment=smoke", "logger=wandb",
           "schedule=linear,cosine", *trainer, f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, schedule in (("0", "linear"), ("1", "cosine")):
        runs = list((sweep_dir / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, "offline by default, under the run directory"
        records = read_records(next(runs[0].glob("run-*.wandb")))
        run = next(r["run"] for r in records if r["type"] == "run")
        assert run["run_group"] == "sweep-multirun" and run["tags"] == ["mnist", "small", schedule]
        ddp_name = "trainer.accelerator=cpu,trainer.devices=2,trainer=ddp," if ddp else ""
        assert run["display_name"] == f"experiment=smoke,logger=wandb,schedule={schedule},{ddp_name}".rstrip(",")
        config = {key for r in records if r["type"] == "config" for key in r["config"]["update"]}
        assert {"data", "model", "schedule", "trainer"} <= config
        history = {key for r in records if r["type"] == "history" for key in r["history"]["item"]}
        assert {"train/loss", "val/loss", "eval/classifier_accuracy", "eval/fid"} <= history
        media = runs[0] / "files" / "media"
        assert list((media / "images" / "samples").glob("grid_*.png")), "sample grids as images"
        assert list((media / "table" / "eval").glob("per_class_*.table.json")), "per-class metric table"
