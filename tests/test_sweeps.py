"""Sweep machinery: launcher and sweeper configs, sweep experiments, and what a failing job does to a sweep."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException

from diffusion_lab.cli.report import main as report_main
from diffusion_lab.reports.sweep_report import load_sweep
from tests.helpers import compose_hydra, main_in_process, one_error_line, run_cli, start_cli

#: A smoke run without its sample grids and sample quality, for the sweeps that read only losses and files.
NO_SAMPLES = ("callbacks.sample_quality=null", "callbacks.sample_grid=null")

#: Their runs and evaluations score MNIST samples with its reference classifier, trained once up front.
pytestmark = pytest.mark.usefixtures("mnist_classifier")


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


def test_parallel_launcher_and_optuna_search_compose() -> None:
    cfg = compose_hydra("hydra/launcher=parallel", "hparams_search=optuna")
    assert cfg.optimized_metric == "val/loss"
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert cfg.hydra.launcher.n_jobs == 2
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.diffusion_lab_sweeper.resumable_optuna.ResumableOptunaSweeper"
    assert sweeper.storage == f"sqlite:///{cfg.hydra.sweep.dir}/optuna.db" and cfg.resume is True
    assert cfg.hydra.sweep.dir.endswith("/multirun/optuna-diffusion-lab"), "named after the study: one per search"
    assert set(sweeper.params) == {"model.optimizer.lr", "model", "schedule"} and sweeper.direction == "minimize"


#: Optuna 2, which hydra-optuna-sweeper requires, opens the search's SQLite study only with SQLAlchemy 1.4.
STORED_STUDY = pytest.mark.skipif(
    int(version("sqlalchemy").split(".")[0]) >= 2,
    reason="Optuna 2 stores a study only with SQLAlchemy<2, which the [cluster] extra pins: pip install -e '.[dev]'",
)


@pytest.mark.slow
@STORED_STUDY
def test_a_tiny_optuna_search_minimises_the_validation_loss(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "search"
    proc = run_cli("train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "model=small",
                   "experiment=smoke", "logger=none", *NO_SAMPLES, f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "setup plugin alembic" not in proc.stdout + proc.stderr, "the search's imports stay quiet"
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    losses = [yaml.safe_load((sweep_dir / job / "metrics.json").read_text())["val/loss"] for job in ("0", "1")]
    assert result["best_value"] == pytest.approx(min(losses))
    assert set(result["best_params"]) == {"model.optimizer.lr", "schedule"}  # model=small fixed on the command line
    assert 3e-4 <= result["best_params"]["model.optimizer.lr"] <= 3e-3


@pytest.mark.slow
@STORED_STUDY
def test_a_killed_optuna_search_continues_where_it_stopped_with_the_same_command(tmp_path: Path) -> None:
    """SIGKILLed while its second trial trains: the rerun keeps the first trial, trains the second on from its
    last.ckpt in its own folder, and ends with the study's n_trials=2 trials, none run twice. (A SIGTERM ends
    the search the same way, after a last.ckpt at the signal.)"""
    import optuna

    sweep_dir = tmp_path / "search"
    command = ("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "model=small", "experiment=smoke",
               "logger=none", *NO_SAMPLES, f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    search = start_cli("train", *command)
    interrupted = sweep_dir / "1" / "checkpoints" / "last.ckpt"  # trial 1's step-10 validation of its 20 steps
    deadline = time.monotonic() + 300
    while not interrupted.exists():
        assert search.poll() is None, search.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"{interrupted} did not appear"
        time.sleep(0.05)
    search.kill()
    search.communicate(timeout=120)
    first_trial = (sweep_dir / "0" / "metrics.json").read_text()
    params = (sweep_dir / "1" / ".hydra" / "overrides.yaml").read_text()
    assert not (sweep_dir / "1" / "metrics.json").exists(), "killed before trial 1 ended"

    proc = run_cli("train", *command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming from" in proc.stdout + proc.stderr
    study = optuna.load_study(study_name="diffusion-lab", storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert [(trial.number, trial.state.name) for trial in study.trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"], "no third job"
    assert (sweep_dir / "0" / "metrics.json").read_text() == first_trial, "trial 0 did not run again"
    assert (sweep_dir / "1" / ".hydra" / "overrides.yaml").read_text() == params, "trial 1 kept its parameters"
    metrics = json.loads((sweep_dir / "1" / "metrics.json").read_text())
    assert [step for step, _ in metrics["history/val/loss"]] == [10, 20], "its step-10 validation, then on to 20"
    assert study.trials[1].value == pytest.approx(metrics["val/loss"])


@pytest.mark.slow
@STORED_STUDY
def test_a_search_maximises_any_metric_of_the_runs_as_its_config_says(tmp_path: Path) -> None:
    """``optimized_metric`` is any key of the run's metrics.json; ``direction`` says which way is better."""
    sweep_dir = tmp_path / "search"
    proc = run_cli("train", "-m", "hparams_search=optuna", "optimized_metric=eval/fid",
                   "hydra.sweeper.direction=maximize", "hydra.sweeper.n_trials=2", "model=small", "experiment=smoke",
                   "logger=none", "callbacks.sample_grid=null", "trainer.max_steps=10",
                   "trainer.limit_train_batches=10", "trainer.val_check_interval=5",
                   f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    fids = [json.loads((sweep_dir / job / "metrics.json").read_text())["eval/fid"] for job in ("0", "1")]
    assert fids[0] != fids[1] and result["best_value"] == pytest.approx(max(fids))


def test_a_missing_optimized_metric_is_one_line_naming_the_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, "train", "experiment=smoke", "logger=none", "trainer.max_steps=2", *NO_SAMPLES,
                        "optimized_metric=eval/nope", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert exit_info.value.code == 1
    assert "optimized_metric=eval/nope is not among the run's final metrics" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("experiment", "key", "values"),
    [("arch_sweep", "model", "small,base,large"), ("schedule_sweep", "schedule", "linear,quadratic,cosine")],
)
def test_sweep_experiments_sweep_their_question(experiment: str, key: str, values: str) -> None:
    cfg = compose_hydra(f"experiment={experiment}")
    assert cfg.hydra.sweeper.params[key] == values


@pytest.mark.slow
def test_a_sweep_experiment_runs_one_job_per_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep_dir = tmp_path / "sweep"
    main_in_process(monkeypatch, "train", "-m", "experiment=schedule_sweep", "+experiment@_global_=smoke",
                    "logger=none", *NO_SAMPLES, "trainer.max_steps=2", "trainer.limit_train_batches=2",
                    "trainer.val_check_interval=2", f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert all((sweep_dir / job / "metrics.json").is_file() for job in "012"), "each job trained"
    schedules = [yaml.safe_load((sweep_dir / job / ".hydra" / "overrides.yaml").read_text()) for job in "012"]
    assert [o for job in schedules for o in job if o.startswith("schedule=")] == [
        "schedule=linear", "schedule=quadratic", "schedule=cosine"
    ]  # fmt: skip


def test_guidance_sweep_evaluates_one_checkpoint_at_five_weights() -> None:
    cfg = compose_hydra("experiment=guidance_sweep", config_name="evaluate")
    assert cfg.hydra.sweeper.params.guidance == "0,0.25,0.5,1,2"
    # The checkpoint's own sampler at its default steps.
    assert cfg.sampler._target_.endswith("auto_sampler") and cfg.steps is None


@pytest.mark.slow
def test_a_guidance_sweep_leaves_one_evaluation_per_weight_and_a_report(
    make_checkpoint: Callable[..., Path], tmp_path: Path, capsys
) -> None:
    sweep_dir = tmp_path / "guidance"
    proc = run_cli("evaluate", "-m", "experiment=guidance_sweep", f"ckpt={make_checkpoint()}", "guidance=0,4",
                   "num_per_class=2", "steps=3", "inception=false", "clip=none",
                   f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = [json.loads((sweep_dir / job / "metrics.json").read_text())["guidance"] for job in "01"]
    assert weights == [0.0, 4.0]
    report_main([str(sweep_dir)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == [
        "job",
        "overrides",
        "status",
        "class",
        "accuracy",
        "FID",
        "KID",
        "precision",
        "recall",
        "density",
        "coverage",
        "sampling",
        "(s)",
    ]
    assert [line.split()[:3] for line in printed[1:3]] == [["0", "guidance=0", "done"], ["1", "guidance=4", "done"]]
    assert (sweep_dir / "quality.png").is_file() and not (sweep_dir / "val_loss.png").exists()


@pytest.mark.parametrize(
    ("command", "overrides", "message"),
    [
        ("train", ["experiment=guidance_sweep"], "experiment=guidance_sweep is not a diffusion-lab-train experiment "
         "(its task_name is evaluate): run diffusion-lab-evaluate -m experiment=guidance_sweep "
         "ckpt=outputs/train/<run>/checkpoints/last.ckpt"),
        ("evaluate", ["experiment=gpu", "ckpt=x.ckpt"], "experiment=gpu is not a diffusion-lab-evaluate experiment "
         "(its task_name is train): run diffusion-lab-train experiment=gpu"),
        ("evaluate", ["-m", "experiment=arch_sweep", "ckpt=x.ckpt"], "experiment=arch_sweep is not a "
         "diffusion-lab-evaluate experiment (its task_name is train): run diffusion-lab-train -m "
         "experiment=arch_sweep"),
        # overrides no group evaluate lacks, so only its task_name tells
        ("evaluate", ["experiment=style", "ckpt=x.ckpt"], "experiment=style is not a diffusion-lab-evaluate "
         "experiment (its task_name is train): run diffusion-lab-train experiment=style"),
        ("train", ["-m", "experiment=quick,guidance_sweep"], "experiment=guidance_sweep is not a diffusion-lab-train "
         "experiment (its task_name is evaluate): run diffusion-lab-evaluate -m experiment=guidance_sweep "
         "ckpt=outputs/train/<run>/checkpoints/last.ckpt"),
    ],
)  # fmt: skip
def test_an_experiment_of_another_command_is_one_line_naming_it(
    command: str,
    overrides: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run, sweep = f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"
        main_in_process(monkeypatch, command, *overrides, run, sweep)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep" / "0").exists()


@pytest.mark.slow
def test_a_failing_job_fails_alone_and_the_sweep_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Job 1 has a bad learning rate: job 0 still trains, job 1 leaves its reason, the sweep ends with it."""
    sweep_dir = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, "train", "-m", "experiment=smoke", "logger=none", "model.optimizer.lr=2e-3,-1",
                        f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert exit_info.value.code == 1
    reason = "model.optimizer.lr must be a positive number, got -1 (e.g. model.optimizer.lr=0.002)"
    job = "experiment=smoke,logger=none,model.optimizer.lr=-1"
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: job 1 ({job}) failed: {reason}"
    assert (sweep_dir / "0" / "checkpoints" / "last.ckpt").is_file() and (sweep_dir / "0" / "metrics.json").is_file()
    assert (sweep_dir / "1" / "error.txt").read_text().strip() == reason
    assert not (sweep_dir / "1" / "checkpoints").exists()
    jobs = load_sweep(sweep_dir)
    assert [job.status for job in jobs] == ["done", "failed"] and jobs[1].error == reason


@pytest.mark.slow
@STORED_STUDY
def test_a_failed_trial_does_not_end_the_search(tmp_path: Path) -> None:
    """Random search over a bad and a good learning rate: bad trials fail, the search finishes on the good one."""
    sweep_dir = tmp_path / "search"
    proc = run_cli("train", "-m", "hparams_search=optuna", "hydra/sweeper/sampler=random",
                   "hydra.sweeper.n_trials=3", "model.optimizer.lr=choice(-1,0.002)", "model=small",
                   "schedule=cosine", "experiment=smoke", "logger=none", *NO_SAMPLES,
                   f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert result["best_params"] == {"model.optimizer.lr": 0.002}
    failed = [p.parent.name for p in sweep_dir.glob("*/error.txt")]
    assert failed and len(failed) < 3, "some trials failed, and the search went on to a good one"
