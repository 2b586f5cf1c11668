"""The SLURM path through the real commands, on the single-node cluster of ``tests/slurm/cluster.sh``: a sweep
with the submitit launcher (``hydra/launcher=slurm``) and its report, DDP under ``srun``, and preemption
with requeue, of a plain job and of a sweep job.

``make test`` starts the cluster where it can (root, apt-get) and stops it after; elsewhere these tests skip.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from diffusion_lab.models.checkpoints import read_checkpoint
from tests.helpers import command, user_env

CLUSTER = Path(__file__).parent / "slurm" / "cluster.sh"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

#: A cheap run (tiny U-Net, batches of 16) that checkpoints every 5 steps; no sample callbacks.
CHEAP = (
    "experiment=smoke", "data.batch_size=16", "data.eval_batch_size=50", "callbacks.sample_quality=null",
    "callbacks.sample_grid=null", "trainer.val_check_interval=5", "trainer.limit_val_batches=1",
)  # fmt: skip
#: 60 steps in epochs of 20 batches: a preemption after the first checkpoint falls mid-run and mid-epoch.
PREEMPTIBLE = (*CHEAP, "trainer.max_epochs=-1", "trainer.limit_train_batches=20", "trainer.max_steps=60")
#: The launcher's resources cut to the test cluster: one CPU and 1 GB per job, no GPU, a 10-minute limit.
ON_TEST_CLUSTER = (
    "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10",
)  # fmt: skip


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    """The environment of a user of the test cluster (``SLURM_CONF`` names its slurm.conf); skips without one."""
    status = subprocess.run([str(CLUSTER), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        pytest.skip(
            "no SLURM test cluster is running: `make test` starts one as root, or run `tests/slurm/cluster.sh start` "
            "as root (it installs slurm-wlm and munge with apt-get), then pytest -m slurm"
        )
    conf = subprocess.run([str(CLUSTER), "env"], capture_output=True, text=True, check=True).stdout
    return {**user_env(), "SLURM_CONF": conf.strip().removeprefix("export SLURM_CONF=")}


def slurm(env: dict[str, str], *args: str) -> str:
    """The output of a SLURM command (``scontrol``, ``sbatch``, ...) on the test cluster."""
    return subprocess.run(list(args), capture_output=True, text=True, env=env, check=True, timeout=60).stdout


def job_fields(env: dict[str, str], job_id: str) -> dict[str, str]:
    """``scontrol show job``'s fields of a job (known to the controller up to 5 minutes after it ended)."""
    return dict(re.findall(r"(\w+)=(\S*)", slurm(env, "scontrol", "show", "job", job_id)))


def ended(env: dict[str, str], job_id: str, timeout: float = 300) -> dict[str, str]:
    """The fields of a job once it ended (a requeued job runs again first; a finished one may still be COMPLETING)."""
    deadline = time.monotonic() + timeout
    while (fields := job_fields(env, job_id))["JobState"] not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        assert time.monotonic() < deadline, fields
        time.sleep(1)
    return fields


def wait_for(find: Callable[[], Path | None], proc: subprocess.Popen[str] | None, timeout: float = 300) -> Path:
    """The path ``find`` returns once it exists; fails when ``proc`` ended first or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (path := find()) is None or not path.exists():
        assert proc is None or proc.poll() is None, proc.communicate()[0][-3000:] if proc else ""
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return path


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``args`` started in the background, stdout and stderr in one pipe."""
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def last(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def first(folder: Path, pattern: str) -> Path | None:
    return next(iter(sorted(folder.glob(pattern))), None)


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The trained weights, their EMA and the optimizer's moments of a checkpoint, by name."""
    checkpoint = read_checkpoint(path)
    moments = {
        f"optimizer.{index}.{name}": value
        for index, state in checkpoint["optimizer_states"][0]["state"].items()
        for name, value in state.items()
    }
    trained = {f"trained.{k}": v for k, v in checkpoint["current_model_state"].items()}
    return {**trained, **{f"ema.{k}": v for k, v in checkpoint["state_dict"].items()}, **moments}


def assert_same_weights(path: Path, reference: Path) -> None:
    ours, theirs = weights(path), weights(reference)
    assert ours.keys() == theirs.keys()
    different = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not different, f"{len(different)} of {len(ours)} tensors differ from {reference}, e.g. {different[:3]}"


def test_a_sweep_runs_its_jobs_as_slurm_jobs_reported_like_local_ones_and_a_requeued_job_resumes_its_folder(
    slurm_env: dict[str, str], tmp_path: Path
) -> None:
    """A 2-job sweep (two schedules) in its default dated folder, whose job 0 is requeued with ``scontrol requeue``
    (as a preemption does) after its first checkpoint. One test: a sweep is the costly part."""
    logs = tmp_path / "logs"
    sweep = [*command("train"), "-m", *ON_TEST_CLUSTER, *PREEMPTIBLE, "schedule=linear,cosine", f"paths.log_dir={logs}"]
    proc = start(sweep, slurm_env)
    try:
        wait_for(lambda: first(logs, "multirun/*/0/checkpoints/last.ckpt"), proc)
        job_0 = wait_for(lambda: first(logs, "multirun/*/.submitit/*_0"), proc).name
        slurm(slurm_env, "scontrol", "requeue", job_0)
        out, _ = proc.communicate(timeout=600)
    except BaseException:  # a failed test leaves no job behind
        proc.kill()
        for job in logs.glob("multirun/*/.submitit/*_*"):
            subprocess.run(["scancel", job.name], env=slurm_env, capture_output=True, check=False)
        raise
    assert proc.returncode == 0, out[-3000:]
    folders = list((logs / "multirun").iterdir())
    assert len(folders) == 1, f"the requeued job made another sweep folder: {folders}"
    folder = folders[0]

    for job in ("0", "1"):  # SLURM jobs, each an array task, ended as such
        slurm_id = OmegaConf.load(folder / job / ".hydra" / "hydra.yaml").hydra.job.id  # SLURM's, submitit's
        fields = ended(slurm_env, slurm_id)
        assert fields["JobState"] == "COMPLETED" and fields["ArrayTaskId"] == job
        assert fields["Restarts"] == ("1" if job == "0" else "0")
        submitit_log = (folder / ".submitit" / slurm_id / f"{slurm_id}_0_log.out").read_text()
        assert f"Starting with JobEnvironment(job_id={slurm_id}," in submitit_log

    report = subprocess.run([*command("report"), str(folder)], capture_output=True, text=True, env=slurm_env)
    assert report.returncode == 0, report.stderr[-3000:]
    with (folder / "report.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["job"] for row in rows] == ["0", "1"] and [row["status"] for row in rows] == ["done", "done"]
    assert [row["overrides"] for row in rows] == ["schedule=linear", "schedule=cosine"], "the swept values"
    for row in rows:
        metrics = json.loads((folder / row["job"] / "metrics.json").read_text())
        assert metrics["global_step"] == 60
        assert float(row["best/val/loss"]) == pytest.approx(metrics["best/val/loss"]) and float(row["time/fit_s"]) > 0
    assert (folder / "report.md").read_text().count("| schedule=") == 2

    job = folder / "0"  # the requeued job continued in its own folder
    log = (job / "train.log").read_text()
    assert f"Requeued SLURM job (restart 1): resuming from {job}/checkpoints/last.ckpt" in log
    with (job / "csv" / "metrics.csv").open() as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("val/loss")]
    assert steps == sorted(set(steps)) and steps[-1] >= 55, "one validation every 5 steps, none repeated"
    assert not list(job.glob("hpc_ckpt_*.ckpt"))


def test_ddp_under_srun_ends_with_the_weights_of_two_local_processes(slurm_env: dict[str, str], tmp_path: Path) -> None:
    ddp = (*CHEAP, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "logger=none",
           "trainer.max_steps=6")  # fmt: skip
    srun = ["srun", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--job-name=ddp"]
    runs = {
        "slurm": start([*srun, *command("train"), *ddp, f"hydra.run.dir={tmp_path / 'slurm'}"], slurm_env),
        "local": start([*command("train"), *ddp, f"hydra.run.dir={tmp_path / 'local'}"], user_env()),
    }
    outputs = {name: proc.communicate(timeout=600)[0] for name, proc in runs.items()}
    for name, proc in runs.items():
        assert proc.returncode == 0 and outputs[name].count("MEMBER: ") == 2, f"{name}: {outputs[name][-3000:]}"
    assert "SLURM auto-requeueing enabled" in outputs["slurm"], "Lightning runs in its SLURM environment"
    assert_same_weights(last(tmp_path / "slurm"), last(tmp_path / "local"))


def test_a_job_preempted_mid_run_is_requeued_and_resumes_to_the_weights_of_an_uninterrupted_run(
    slurm_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGUSR1, as ``sbatch --signal=USR1@N`` sends it before the time limit: Lightning's SLURM environment saves
    and requeues the job, whose SIGTERM writes last.ckpt at the step boundary; the requeued job resumes it."""
    run_dir, log = tmp_path / "preempted", tmp_path / "slurm.out"
    train = " ".join([*command("train"), *PREEMPTIBLE, f"hydra.run.dir={run_dir}"])
    sbatch = ["sbatch", "--parsable", "--requeue", "--ntasks-per-node=1", "--cpus-per-task=1", "--job-name=preempted"]
    job_id = slurm(slurm_env, *sbatch, "--open-mode=append", f"--output={log}", f"--wrap=srun {train}").strip()
    uninterrupted = start([*command("train"), *PREEMPTIBLE, f"hydra.run.dir={tmp_path / 'uninterrupted'}"], user_env())
    try:
        wait_for(lambda: last(run_dir), None)
        slurm(slurm_env, "scancel", "--signal=USR1", job_id)
        fields = ended(slurm_env, job_id)
        out, _ = uninterrupted.communicate(timeout=600)
    except BaseException:  # a failed test leaves no job behind
        subprocess.run(["scancel", job_id], env=slurm_env, capture_output=True, check=False)
        raise
    finally:
        uninterrupted.kill()
    output = log.read_text()
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", output[-3000:]
    assert uninterrupted.returncode == 0, out[-3000:]
    stopped = int(re.search(r"SIGTERM at step (\d+)", output)[1])
    assert f"Requeued SLURM job: {job_id}" in output and 5 <= stopped < 60, output[-3000:]
    assert "Requeued SLURM job (restart 1): resuming from" in output
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt")), "last.ckpt is the one resume point"
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 60
    assert_same_weights(last(run_dir), last(tmp_path / "uninterrupted"))
