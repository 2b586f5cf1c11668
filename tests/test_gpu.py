"""The GPU path: ``experiment=gpu`` trains, resumes and samples on a CUDA GPU (skipped without one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.usefixtures("reference_classifiers")]

#: A few steps of the shipped GPU experiment, validating (and drawing) every 10 steps.
FEW_STEPS = ["experiment=gpu", "trainer.limit_val_batches=2", "trainer.val_check_interval=10",
             "callbacks.sample_quality.num_per_class=2", "callbacks.sample_grid.num_per_class=2"]  # fmt: skip


def test_the_gpu_experiment_trains_resumes_and_samples_on_the_gpu(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = run_cli("train", *FEW_STEPS, "trainer.max_steps=20", f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 20
    resumed = run_cli("train", *FEW_STEPS, "trainer.max_steps=30", "resume=true", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 30
    out = tmp_path / "samples"
    drawn = run_cli("sample", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "device=cuda", "num_samples=2",
                    "steps=5", f"output={out}", f"hydra.run.dir={tmp_path / 'sample'}")  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    with np.load(f"{out}.npz") as data:
        assert data["images"].shape == (20, 28, 28) and data["labels"].tolist() == [d for d in range(10) for _ in "ab"]
