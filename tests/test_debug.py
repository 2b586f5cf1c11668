"""``debug=fdr|overfit|limit|profiler``: each debugging run does what its name says, with the real config tree."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from diffusion_lab.training.fit import train

#: A smaller U-Net and batches than the shipped ones: each debugging run's behaviour does not depend on their size.
SMALL = ("model.unet.down_chs=[8,16]", "data.batch_size=16", "data.eval_batch_size=50")


def test_debug_options_compose_with_their_settings(compose_train) -> None:
    fdr = compose_train("debug=fdr")
    assert fdr.trainer.fast_dev_run is True and fdr.logger is None and fdr.callbacks.model_checkpoint is None
    overfit = compose_train("debug=overfit")
    assert overfit.data.shuffle is False and overfit.trainer.limit_train_batches == 1
    assert overfit.callbacks.ema is None and overfit.callbacks.early_stopping is None
    assert compose_train("debug=limit").trainer.limit_train_batches == 10
    profiler = compose_train("debug=profiler")
    assert profiler.trainer.profiler._target_ == "lightning.pytorch.profilers.SimpleProfiler"
    assert profiler.callbacks.sample_grid is None and profiler.callbacks.sample_quality is None


@pytest.mark.slow
@pytest.mark.usefixtures("mnist_classifier")
def test_fast_dev_run_runs_one_batch_and_writes_no_checkpoint_or_log(compose_train) -> None:
    cfg = compose_train("debug=fdr", *SMALL)
    metrics = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert metrics["global_step"] == 1 and "val/loss" in metrics
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "csv").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("mnist_classifier")
def test_overfit_trains_on_one_batch_until_its_loss_falls(compose_train) -> None:
    cfg = compose_train("debug=overfit", *SMALL, "callbacks.sample_grid.num_per_class=1", "trainer.max_epochs=60")
    train(cfg)
    with (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open() as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert len(losses) == 6, "one batch an epoch, logged every 10 steps"
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
@pytest.mark.usefixtures("mnist_classifier")
def test_limit_runs_every_epoch_path_in_a_few_batches(compose_train) -> None:
    cfg = compose_train("debug=limit", *SMALL)
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 30 and metrics["epoch"] == 3 and "eval/classifier_accuracy" in metrics
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_profiler_writes_the_time_of_each_hook(compose_train) -> None:
    cfg = compose_train("debug=profiler", *SMALL, "trainer.limit_train_batches=5")
    train(cfg)
    report = (Path(cfg.paths.output_dir) / "fit-profile.txt").read_text()
    assert "run_training_batch" in report and "DiffusionModule.optimizer_step" in report
