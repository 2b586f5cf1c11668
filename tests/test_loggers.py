"""Loggers together (``logger=many``), the final metrics in TensorBoard's HParams view, and a sweep report that
reads every job whatever logger it had."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from diffusion_lab.cli.report import main as report_main
from diffusion_lab.extras import installed
from tests.helpers import run_cli

#: The module each logger option needs (None: always there).
NEEDS = {"csv": None, "tensorboard": "tensorboard", "wandb": "wandb", "many": "tensorboard", "none": None}
#: Every logger option, as a sweep over them; wandb (its [wandb] extra) and TensorBoard only where installed.
LOGGERS = [option for option, module in NEEDS.items() if module is None or installed(module)]


@pytest.fixture(scope="module")
def logger_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``-m`` sweep of 6-step smoke runs, one job per logger option, validating every 3 steps, no samples."""
    sweep_dir = tmp_path_factory.mktemp("loggers") / "multirun"
    proc = run_cli("train", "-m", "experiment=smoke", f"logger={','.join(LOGGERS)}", "callbacks.sample_grid=null",
                   "callbacks.sample_quality=null", "trainer.max_steps=6", "trainer.val_check_interval=3",
                   f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir


@pytest.mark.slow
def test_the_report_reads_every_job_whatever_logger_it_had(logger_sweep: Path, capsys) -> None:
    report_main([str(logger_sweep)])
    assert "failed:" not in capsys.readouterr().out
    with (logger_sweep / "report.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["overrides"] for row in rows] == [f"logger={option}" for option in LOGGERS]
    for job, row in enumerate(rows):
        metrics = json.loads((logger_sweep / str(job) / "metrics.json").read_text())
        assert row["status"] == "done" and float(row["best/val/loss"]) == pytest.approx(metrics["best/val/loss"])
        # the validation-loss curve of val_loss.png, recorded by the run itself: one point per validation
        assert [step for step, _ in metrics["history/val/loss"]] == [3, 6], row["overrides"]
    many = logger_sweep / str(LOGGERS.index("many")) if "many" in LOGGERS else None
    if many is not None:
        assert (many / "csv" / "metrics.csv").is_file() and list((many / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
@pytest.mark.parametrize("option", ["tensorboard", "many"])
def test_tensorboard_shows_the_hyper_parameters_beside_the_final_metrics(logger_sweep: Path, option: str) -> None:
    """The HParams view: the run's config as hyper-parameters, its final metrics as their values; the
    validation-loss curve keeps every point (the final values are logged at the last step, not at 0)."""
    if option not in LOGGERS:
        pytest.skip(f"logger={option} needs the [tensorboard] extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    job = logger_sweep / str(LOGGERS.index(option))
    events = EventAccumulator(str(job / "tensorboard"))
    events.Reload()
    metrics = json.loads((job / "metrics.json").read_text())
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    shown = {info.name.tag for info in experiment.metric_infos}
    assert {"val/loss", "best/val/loss", "time/fit_s", "params"} <= shown
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["model/optimizer/lr"].number_value == pytest.approx(2e-3)
    assert session.hparams["schedule/_target_"].string_value.endswith("cosine")
    # the value the HParams view shows for a metric: the last point of its scalar series
    for tag in ("val/loss", "best/val/loss", "time/fit_s"):
        assert events.Scalars(tag)[-1].value == pytest.approx(metrics[tag], rel=1e-6), tag
    steps = [point.step for point in events.Scalars("val/loss")]
    assert len(steps) == 3 and steps == sorted(steps), "both validations, then the final value at the last step"
