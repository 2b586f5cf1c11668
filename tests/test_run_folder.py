"""Run folders and outputs a user can trust: resumes that refuse other data, fine-tuning said explicitly,
folders that move, one training process per folder, full disks, outputs that are checked before any work,
and a wandb online run that fails fast."""

from __future__ import annotations

import errno
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from diffusion_lab.models.checkpoints import read_checkpoint
from diffusion_lab.training import checkpointing
from diffusion_lab.training.fit import LOCK_FILE
from tests.helpers import command, main_in_process, one_error_line, start_cli, user_env

#: Their runs score MNIST samples with its reference classifier, trained once up front.
pytestmark = pytest.mark.usefixtures("mnist_classifier")

FIXTURE_CKPT = Path(__file__).parent / "fixtures" / "tiny_styled_v0.1.ckpt"
#: Small batches: the steps of these runs take milliseconds, what they check does not depend on the batch size.
SMALL = ("data.batch_size=16", "data.eval_batch_size=50")
#: make_checkpoint's model (eps, down_chs [8,16], T=100) as a smoke run builds it.
SMOKE_T100 = ("experiment=smoke", *SMALL, "objective=eps", "diffusion.timesteps=100")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, *args: str) -> str:
    """The one ``error:`` line of ``diffusion-lab-NAME ARGS`` run in process, which must exit 1."""
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, name, *args)
    assert exit_info.value.code == 1
    return one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize(
    ("output", "message"),
    [("", "output must be a path, got ''"),
     ("/proc/nope/x", "output=/proc/nope cannot be written"),
     ("FILE/x", "output=FILE cannot be written (FILE is a file)"),
     (".", "output=. names a folder: pass output=FOLDER/NAME")],
)  # fmt: skip
def test_a_bad_output_is_refused_before_any_work_and_nothing_is_written(
    output: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("a file, not a folder")
    line = refused(monkeypatch, capsys, "sample", f"ckpt={FIXTURE_CKPT}", f"output={output}",
                   f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert message in line
    assert sorted(p.name for p in tmp_path.iterdir()) in (["FILE"], ["FILE", "run"])
    assert not [p for p in tmp_path.rglob("*") if p.name in (".png", ".npz")], "no hidden .png / .npz"
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".png", ".npz")]


def test_missing_output_folders_are_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "a" / "b" / "sevens"
    main_in_process(monkeypatch, "sample", f"ckpt={FIXTURE_CKPT}", "label=7", "num_samples=1", "steps=2",
                    f"output={out}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert (out.parent / "sevens.png").is_file() and (out.parent / "sevens.npz").is_file()


def test_a_failing_command_leaves_an_existing_output_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # fmt: skip
    out = tmp_path / "out" / "samples"
    args = (f"ckpt={FIXTURE_CKPT}", "label=7", "num_samples=1", "steps=2", f"output={out}")
    main_in_process(monkeypatch, "sample", *args, f"hydra.run.dir={tmp_path / 'run1'}")
    before = snapshot(out.parent)

    def disk_full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("diffusion_lab.sampling.save_samples", disk_full)
    with pytest.raises(OSError):
        main_in_process(monkeypatch, "sample", *args, "seed=1", f"hydra.run.dir={tmp_path / 'run2'}")
    monkeypatch.undo()
    assert snapshot(out.parent) == before


def test_a_seed_that_is_not_a_number_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    line = refused(monkeypatch, capsys, "sample", f"ckpt={FIXTURE_CKPT}", "label=3", "seed=abc",
                   f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert line == "error: seed must be an integer in [0, 4294967295], got 'abc' (e.g. seed=0)"
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- training settings


def test_a_batch_larger_than_the_data_names_the_batch_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # fmt: skip
    line = refused(monkeypatch, capsys, "train", "experiment=smoke", "data.batch_size=100000000",
                   f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert "data.batch_size=100000000 is larger than the 54000 training images of mnist: use at most 54000" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_a_gpu_run_on_a_machine_without_one_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    line = refused(monkeypatch, capsys, "train", "trainer.accelerator=gpu", f"hydra.run.dir={tmp_path / 'run'}")
    assert line == (
        "error: trainer.accelerator=gpu but no GPU is visible here: use trainer=cpu (or trainer.accelerator=cpu), "
        "or run on a machine with a GPU"
    )
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- resume and fine-tuning


@pytest.mark.parametrize(
    ("override", "difference"),
    [("data=fashion_mnist", "was trained with data=mnist, this run has data=fashion_mnist: resume with data=mnist"),
     ("schedule=linear", "was trained with schedule=cosine, this run has schedule=linear"),
     ("diffusion.timesteps=200", "was trained with diffusion.timesteps=100, this run has diffusion.timesteps=200")],
)  # fmt: skip
def test_resume_refuses_a_checkpoint_of_other_data_or_another_schedule(
    override: str, difference: str, make_checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # fmt: skip
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    shutil.copy(make_checkpoint(), last)
    before = snapshot(run_dir)
    line = refused(monkeypatch, capsys, "train", *SMOKE_T100, override, "resume=true", f"hydra.run.dir={run_dir}")
    assert difference in line and f"init_from={last}" in line
    after = snapshot(run_dir)
    assert {k: v for k, v in after.items() if k.startswith("checkpoints")} == before


@pytest.mark.usefixtures("reference_classifiers")  # Fashion-MNIST too
def test_init_from_fine_tunes_on_other_data_with_fresh_counters(
    make_checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    source = make_checkpoint()  # an MNIST model
    run_dir = tmp_path / "fashion"
    main_in_process(monkeypatch, "train", *SMOKE_T100, "data=fashion_mnist", f"init_from={source}",
                    "trainer.max_steps=4", "trainer.val_check_interval=2", f"hydra.run.dir={run_dir}")  # fmt: skip
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 4, "counters start at 0"
    assert checkpoint["diffusion_lab_config"]["data"]["name"] == "fashion_mnist"
    best = checkpoint["callbacks"][next(k for k in checkpoint["callbacks"] if k.startswith("RunCheckpoint"))]
    assert Path(best["best_model_path"]).parent == run_dir / "checkpoints"


def test_init_from_loads_the_weights(make_checkpoint, compose_train) -> None:
    from diffusion_lab.training.fit import build

    source = make_checkpoint()
    _, module, _ = build(compose_train(*SMOKE_T100))
    checkpointing.load_initial_weights(source, module)
    expected = read_checkpoint(source)["state_dict"]
    assert all(torch.equal(value, expected[key]) for key, value in module.state_dict().items())


@pytest.mark.slow
def test_a_copied_run_folder_resumes_in_place_as_if_never_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    # Five steps an epoch, a validation and checkpoint at each epoch's end; a schedule that does not
    # depend on the run's length, so that a 2-epoch run continued to 4 matches a 4-epoch run.
    common = ("experiment=smoke", *SMALL, "model/lr_scheduler=plateau", "trainer.max_steps=-1",
              "trainer.limit_train_batches=5", "trainer.val_check_interval=1.0", "trainer.limit_val_batches=1",
              "callbacks.sample_grid.every_n_epochs=1000", "callbacks.sample_quality.every_n_epochs=1000")  # fmt: skip
    original, copy, straight = tmp_path / "original", tmp_path / "elsewhere" / "copy", tmp_path / "straight"
    for run_dir, epochs in ((original, 2), (straight, 4)):
        main_in_process(monkeypatch, "train", *common, f"trainer.max_epochs={epochs}", f"hydra.run.dir={run_dir}")
    shutil.copytree(original, copy)
    before = snapshot(original)
    main_in_process(monkeypatch, "train", *common, "trainer.max_epochs=4", "resume=true", f"hydra.run.dir={copy}")
    assert snapshot(original) == before, "the original folder was touched"
    names = sorted(p.name for p in (copy / "checkpoints").iterdir())
    assert "last.ckpt" in names and not any("-v1" in name for name in names), names
    resumed, uninterrupted = (
        read_checkpoint(copy / "checkpoints" / "last.ckpt"),
        read_checkpoint(straight / "checkpoints" / "last.ckpt"),
    )
    assert resumed["global_step"] == uninterrupted["global_step"] == 20
    for key, value in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    record = resumed["callbacks"][next(k for k in resumed["callbacks"] if k.startswith("RunCheckpoint"))]
    assert Path(record["best_model_path"]).parent == copy / "checkpoints"
    assert all(Path(path).parent == copy / "checkpoints" for path in record["best_k_models"])
    assert (
        Path(record["dirpath"]) == copy / "checkpoints"
        and Path(record["last_model_path"]).parent == copy / "checkpoints"
    )


@pytest.mark.slow
def test_a_second_training_process_on_the_same_folder_is_refused_and_a_killed_one_leaves_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first run is a process of its own; the second and third run in this one, a process as much as any."""
    run_dir = tmp_path / "run"
    long_run = ("experiment=smoke", *SMALL, "trainer.limit_train_batches=1.0", "trainer.max_steps=3000",
                "trainer.val_check_interval=5", "trainer.limit_val_batches=1")  # fmt: skip
    first = start_cli("train", *long_run, f"hydra.run.dir={run_dir}")
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.ckpt").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
            time.sleep(0.1)
        assert f"pid {first.pid}" in (run_dir / LOCK_FILE).read_text()
        second = refused(monkeypatch, capsys, "train", *long_run, "resume=true", f"hydra.run.dir={run_dir}")
        assert f"{run_dir} is in use by another training run (pid {first.pid})" in second
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    stopped_at = int(read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"])
    main_in_process(monkeypatch, "train", *long_run, f"trainer.max_steps={stopped_at + 5}", "resume=true",
                    f"hydra.run.dir={run_dir}")  # fmt: skip
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == stopped_at + 5


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one_and_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # fmt: skip
    run_dir = tmp_path / "run"
    real_save, writes = torch.save, []

    def save(obj: object, file: object, *args: object, **kwargs: object) -> None:
        if "last.ckpt" in getattr(file, "name", ""):
            writes.append(obj)
            if len(writes) == 2:  # the second last.ckpt: half written, then the disk is full
                file.write(b"half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    line = refused(monkeypatch, capsys, "train", "experiment=smoke", *SMALL, f"hydra.run.dir={run_dir}")
    assert f"could not write the checkpoint {run_dir / 'checkpoints' / 'last.ckpt'} (No space left on device; " in line
    assert "the previous last.ckpt is intact): free space or pass another hydra.run.dir" in line
    monkeypatch.undo()
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 10
    assert not [p.name for p in (run_dir / "checkpoints").iterdir() if ".tmp-" in p.name]


# --------------------------------------------------------------------------- wandb online


def wandb_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user with no wandb login (a fresh HOME and wandb config folder), plus ``extra``."""
    env = {k: v for k, v in user_env().items() if not k.startswith("WANDB_")}
    (tmp_path / "home").mkdir(exist_ok=True)
    return {**env, "HOME": str(tmp_path / "home"), "WANDB_CONFIG_DIR": str(tmp_path / "home"), **extra}


def test_wandb_online_without_an_api_key_is_one_line_before_training(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [*command("train"), "experiment=smoke", "logger=wandb", "logger.offline=false", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, env=wandb_env(tmp_path), stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    assert one_error_line(done.stderr) == (
        "error: logger.offline=false needs a wandb API key: run `wandb login` or set WANDB_API_KEY, or keep the "
        "offline default (logger.offline=true) and upload later with `wandb sync`"
    )
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_wandb_online_without_a_server_falls_back_to_offline_with_a_warning(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # A key, and a server address on this machine where nothing listens: every connection is refused.
    env = wandb_env(tmp_path, WANDB_API_KEY="k" * 40, WANDB_BASE_URL="http://127.0.0.1:9")
    started = time.monotonic()
    done = subprocess.run(
        [*command("train"), "experiment=smoke", *SMALL, "logger=wandb", "logger.offline=false",
         "logger.init_timeout=1", "trainer.max_steps=10", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wandb could not start an online run" in done.stderr and "logging offline instead" in done.stderr
    assert list((run_dir / "wandb").glob("offline-run-*")), "the run was logged offline"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert time.monotonic() - started < 240
    assert "Traceback" not in done.stderr
