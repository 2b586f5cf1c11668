"""Reliability: kill-safe resume, SIGTERM, divergence, atomic checkpoints, refusals of bad input, determinism."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffusion_lab.cli.app import renamed_arguments
from diffusion_lab.cli.train import main as train_entry_main
from diffusion_lab.models.checkpoints import read_checkpoint
from diffusion_lab.utils.files import atomic_write, exclusive_lock
from tests.helpers import assert_same_training_state, main_in_process, one_error_line, run_cli, start_cli

#: Their runs and evaluations score MNIST samples with its reference classifier, trained once up front.
pytestmark = pytest.mark.usefixtures("mnist_classifier")

#: Small batches: the steps of these runs take milliseconds, what they check does not depend on the batch size.
SMALL = ("data.batch_size=16", "data.eval_batch_size=50")
#: A run long enough to be interrupted: 3375 steps per epoch, a checkpoint after every 5 steps.
LONG = (
    "experiment=smoke",
    *SMALL,
    "trainer.limit_train_batches=1.0",
    "trainer.val_check_interval=5",
    "trainer.limit_val_batches=1",
    "trainer.max_steps=3000",
    "callbacks.sample_grid.every_n_epochs=1000",
)


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def step_of(path: Path) -> int:
    return int(read_checkpoint(path)["global_step"])


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint_and_resume_finishes_as_if_never_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The killed runs are processes of their own; the one that finishes runs in this one.

    Epochs of 13 steps and a checkpoint every 5 steps of an epoch: the kills land mid-epoch, and the
    resumed runs cross epoch ends. A learning rate that does not depend on the run's length lets an
    uninterrupted run to the same step compare, weight for weight and Adam moment for moment.
    """
    run_dir, straight = tmp_path / "run", tmp_path / "straight"
    last = run_dir / "checkpoints" / "last.ckpt"
    args = (*LONG, "trainer.limit_train_batches=13", "trainer.max_epochs=-1", "model/lr_scheduler=plateau",
            "callbacks.sample_quality.every_n_epochs=1000")  # fmt: skip
    rng = random.Random(0)
    steps = []
    for _ in range(3):  # checkpoints are written every 5 steps, so kills land in and between writes
        proc = start_cli("train", *args, f"hydra.run.dir={run_dir}", "resume=true")
        wait_for(last, proc)
        time.sleep(rng.uniform(0.5, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        steps.append(step_of(last))  # loadable after every kill
    assert steps == sorted(steps) and steps[-1] > 0, "each restart continues where the last one stopped"
    end = steps[-1] + 20  # past the last kill's checkpoint, wherever this machine's speed put it
    main_in_process(monkeypatch, "train", *args, f"trainer.max_steps={end}", f"hydra.run.dir={run_dir}", "resume=true")
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == end
    with (run_dir / "csv" / "metrics.csv").open() as f:
        logged = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert min(logged) < 10 and max(logged) >= end - 5, "the CSV log keeps the rows of every restart"
    main_in_process(monkeypatch, "train", *args, f"trainer.max_steps={end}", f"hydra.run.dir={straight}")
    assert_same_training_state(last, straight / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_sigterm_saves_a_resume_point_and_exits_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The signalled run is a process of its own; the resumed one runs in this one."""
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    no_validation = "trainer.val_check_interval=2500"  # within max_steps, after any step the signal can stop at
    proc = start_cli("train", *LONG, no_validation, f"hydra.run.dir={run_dir}")
    wait_for(run_dir / "csv" / "metrics.csv", proc)  # written once training has logged its first rows
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM at step" in out and "resume=true" in out
    stopped_at = step_of(last)
    assert 0 < stopped_at < 2500, "saved at the signal, not at a validation"
    main_in_process(monkeypatch, "train", *LONG, no_validation, f"trainer.max_steps={stopped_at + 10}",
                    f"hydra.run.dir={run_dir}", "resume=true")  # fmt: skip
    assert step_of(last) == stopped_at + 10


@pytest.mark.slow
def test_diverging_loss_stops_with_one_line_and_keeps_the_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    # AdamW moves every weight by ~lr a step: lr=10 blows up within a few steps, after the first checkpoint.
    diverging = ("model.optimizer.lr=10", "trainer.gradient_clip_val=null")
    every_step = ("trainer.val_check_interval=2", "trainer.limit_val_batches=1")  # a checkpoint before the NaN
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, "train", "experiment=smoke", *SMALL, *diverging, *every_step,
                        f"hydra.run.dir={run_dir}")  # fmt: skip
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert re.search(r"(train|val)/loss became NaN or infinite", line), err[-2000:]
    assert f"the last good checkpoint {last} is kept" in line
    checkpoint = read_checkpoint(last)
    assert 0 < checkpoint["global_step"] < 20
    for weights in (checkpoint["state_dict"], checkpoint["current_model_state"]):
        assert all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point())


@pytest.mark.slow
def test_same_seed_same_loss_curve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One run in this process, the other in a fresh one: the curve depends on the seed alone."""
    curves = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        args = ("experiment=smoke", *SMALL, "trainer.log_every_n_steps=1", f"hydra.run.dir={run_dir}")
        if name == "a":
            main_in_process(monkeypatch, "train", *args)
        else:
            assert run_cli("train", *args).returncode == 0
        with (run_dir / "csv" / "metrics.csv").open() as f:
            curves.append([(row["step"], row["train/loss"], row["val/loss"]) for row in csv.DictReader(f)])
    assert len(curves[0]) > 20
    assert curves[0] == curves[1]


def test_a_shared_cache_is_filled_by_one_process_while_the_others_wait(tmp_path: Path) -> None:
    """``exclusive_lock`` (the reference classifier's cache): a second process waits until the first is done."""
    lock, log = tmp_path / "cache.lock", tmp_path / "order.txt"
    holder = (
        "import sys, time; from diffusion_lab.utils.files import exclusive_lock\n"
        "with exclusive_lock(sys.argv[1]):\n"
        "    open(sys.argv[2], 'a').write('first in\\n'); time.sleep(1.5); open(sys.argv[2], 'a').write('first out\\n')"
    )
    first = subprocess.Popen([sys.executable, "-c", holder, str(lock), str(log)])
    deadline = time.monotonic() + 60
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with exclusive_lock(lock):
        log.open("a").write("second in\n")
    assert first.wait(timeout=60) == 0
    assert log.read_text().splitlines() == ["first in", "first out", "second in"]


def test_atomic_save_never_leaves_a_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.ckpt"
    atomic_write(path, lambda f: torch.save({"step": 1}, f))

    def crash(obj: object, f: object) -> None:
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, lambda f: torch.save({"step": 2}, f))
    monkeypatch.undo()
    assert read_checkpoint(path) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# --------------------------------------------------------------------------- bad input, in process


BAD_TRAIN_INPUT = [
    ("data=cifar", "data=cifar is not an option: use one of fashion_mnist, mnist"),
    ("schedule=exponential", "schedule=exponential is not an option: use one of cosine, linear, quadratic"),
    ("logger=mlflow", "logger=mlflow is not an option: use one of csv, many, none, tensorboard, wandb"),
    ("model=huge", "model=huge is not an option: use one of base, large, small"),
    ("lable=3", "Could not override 'lable'"),
    ("trainer.max_epochs=[1", "no viable alternative"),
    ("diffusion.timesteps=0", "diffusion.timesteps must be a positive integer, got 0"),
    ("diffusion.timesteps=-5", "diffusion.timesteps must be a positive integer, got -5"),
    ("model.unet.down_chs=[]", "model.unet.down_chs must be a non-empty list of positive channel counts"),
    ("model.unet.down_chs=[16,0]", "model.unet.down_chs must be a non-empty list of positive channel counts"),
    ("model.cond_drop_prob=1.0", "model.cond_drop_prob must be a number in [0, 1), got 1.0"),
    ("model.cond_drop_prob=-0.1", "model.cond_drop_prob must be a number in [0, 1)"),
    ("model.optimizer.lr=-0.001", "model.optimizer.lr must be a positive number"),
    ("model.optimizer.lr=0", "model.optimizer.lr must be a positive number"),
    ("model.optimizer.weight_decay=-1", "model.optimizer.weight_decay must be a number >= 0"),
    ("+model.optimizer.betas=[0.9,1.5]", "model.optimizer: Invalid beta parameter"),
    ("model.lr_scheduler.pct_start=1.5", "model.lr_scheduler.pct_start must be a number in (0, 1), got 1.5"),
    (
        "model/lr_scheduler=plateau model.lr_scheduler.factor=2",
        "model.lr_scheduler.factor must be a number in (0, 1), got 2",
    ),
    ("objective=eps objective.min_snr_gamma=0", "objective.min_snr_gamma must be a positive number or null"),
    ("objective=flow objective.min_snr_gamma=5", "Min-SNR weighting is defined for objective=eps and v, not flow"),
    ("objective=vee", "objective=vee is not an option: use one of edm, eps, flow, v"),
    (
        "objective=eps sampler=flow_euler",
        "sampler FlowMatchEulerDiscreteScheduler does not fit objective=eps: use sampler=ddim,",
    ),
    (
        "sampler=ddim",
        "sampler DDIMScheduler does not fit objective=flow: use sampler=dpm_solver, dpm_solver_sde, flow_euler, unipc,",
    ),
    (
        "callbacks.sample_grid.guidance_interval=[5,1]",
        "callbacks.sample_grid.guidance_interval must be [SIGMA_LO, SIGMA_HI] with 0 <= SIGMA_LO <= SIGMA_HI "
        "(SIGMA_HI null: no upper end), or null",
    ),
    ("model.unet.activation=relu", "model.unet.activation must be one of"),
    ("data.batch_size=0", "data.batch_size must be a positive integer, got 0"),
    ("data.val_fraction=1.5", "data.val_fraction must be a number in (0, 1), got 1.5"),
    ("trainer.max_epochs=x", "trainer.max_epochs must be an integer >= -1"),
    ("trainer.max_steps=-7", "trainer.max_steps must be an integer >= -1"),
    ("trainer.precision=8", "trainer.precision must be one of"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val must be a number >= 0 or null"),
    ("callbacks.ema.decay=1.5", "callbacks.ema.decay must be a number in (0, 1), got 1.5"),
    (
        "sampler=eulr",
        "sampler=eulr is not an option: use one of auto, ddim, ddpm, diffusers, dpm_solver, dpm_solver_sde, edm_euler",
    ),
    ("sampler=diffusers sampler.name=NoScheduler", "unknown diffusers scheduler sampler.name=NoScheduler: use a class"),
    ("seed=abc", "seed must be an integer"),
    ("objective=eps schedule=linear schedule.beta_end=2.0", "schedule.beta_end must be a number in (0, 1), got 2.0"),
    ("+trainer.max_epoch=3", "unexpected keyword argument 'max_epoch'"),
    ("ckpt=missing.ckpt", "checkpoint not found: missing.ckpt"),
]


@pytest.mark.parametrize("command", ["train", "sample"])
def test_the_earlier_name_ckpt_path_still_works_with_a_one_line_notice(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    base = ("experiment=smoke",) if command == "train" else ()
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, command, *base, "ckpt_path=missing.ckpt", f"hydra.run.dir={run_dir}")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("notice: ")] == ["notice: ckpt_path= is now ckpt="]
    assert "checkpoint not found: missing.ckpt" in one_error_line(err)  # read as ckpt=missing.ckpt
    assert not (run_dir / "checkpoints").exists()


def test_renamed_arguments_keep_their_prefix_and_value() -> None:
    argv = ["+ckpt_path=a.ckpt", "~ckpt_path", "ckpt=b.ckpt", "seed=1", "init_from=c.ckpt"]
    assert renamed_arguments(argv) == ["+ckpt=a.ckpt", "~ckpt", "ckpt=b.ckpt", "seed=1", "init_from=c.ckpt"]


@pytest.mark.parametrize(("override", "message"), BAD_TRAIN_INPUT)
def test_bad_training_input_is_one_line_and_writes_nothing(
    override: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, "train", "experiment=smoke", *override.split(" "), f"hydra.run.dir={run_dir}")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert message in one_error_line(err), err[-2000:]
    assert not (run_dir / "checkpoints").exists()


def test_fresh_run_refuses_a_folder_that_holds_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"a previous run")
    for extra in ((), ("resume=true", f"ckpt={last}")):
        with pytest.raises(SystemExit):
            main_in_process(monkeypatch, "train", "experiment=smoke", *extra, f"hydra.run.dir={tmp_path / 'run'}")
        line = one_error_line(capsys.readouterr().err)
        assert "already holds a run: pass resume=true" in line or "exclusive" in line
    assert last.read_bytes() == b"a previous run"


@pytest.mark.parametrize("damage", ["truncate", "junk", "other_model"])
def test_resume_refuses_a_broken_or_foreign_checkpoint(
    damage: str, make_checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    source = make_checkpoint("model.unet.down_chs=[8,32]", "diffusion.timesteps=1000")
    if damage == "truncate":
        last.write_bytes(source.read_bytes()[:5000])
    elif damage == "junk":
        last.write_text("not a checkpoint")
    else:
        last.write_bytes(source.read_bytes())
    before = last.read_bytes()
    with pytest.raises(SystemExit):
        main_in_process(
            monkeypatch, "train", "experiment=smoke", "objective=eps", "resume=true", f"hydra.run.dir={run_dir}"
        )
    line = one_error_line(capsys.readouterr().err)
    expected = {"truncate": "truncated or corrupt", "junk": "not a PyTorch checkpoint", "other_model": "another model"}
    assert expected[damage] in line
    assert last.read_bytes() == before


def test_full_error_gives_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["diffusion-lab-train", "experiment=smoke", "data.batch_size=0",
                                      f"hydra.run.dir={tmp_path}"])  # fmt: skip
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match=r"data\.batch_size must be a positive integer"):
        train_entry_main()


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(MARKER),))


MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / "diffusion-lab-unpickled-code"


def test_checkpoints_are_loaded_without_running_pickled_code(tmp_path: Path) -> None:
    MARKER.unlink(missing_ok=True)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload()}, evil)
    with pytest.raises(ValueError, match="holds objects weights-only loading refuses"):
        read_checkpoint(evil)
    assert not MARKER.exists()


@pytest.mark.slow
@pytest.mark.parametrize("val_check_interval", ["1.0", "10"])
def test_best_and_last_checkpoints_are_both_kept(
    val_check_interval: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation at epoch end (the default) and within epochs: best-k by val/loss, last.ckpt at the last step."""
    run_dir = tmp_path / "run"
    main_in_process(monkeypatch, "train", "experiment=smoke", *SMALL, "callbacks.sample_grid=null",
                    "callbacks.sample_quality=null", f"trainer.val_check_interval={val_check_interval}",
                    "trainer.max_epochs=2", "trainer.max_steps=-1", f"hydra.run.dir={run_dir}")  # fmt: skip
    best = json.loads((run_dir / "metrics.json").read_text())["best_model_path"]
    assert Path(best).is_file() and Path(best).name.startswith("epoch")
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == 40
