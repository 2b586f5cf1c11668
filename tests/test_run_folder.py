"""Run folders and outputs a user can trust: resumes that refuse other data, fine-tuning said explicitly,
folders that move, one training process per folder, full disks, outputs that are checked before any work,
outputs that a kill leaves whole or absent, and a wandb online run that fails fast."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from diffusion_lab.cli.app import write_fix
from diffusion_lab.models.checkpoints import read_checkpoint
from diffusion_lab.pipeline import load_model
from diffusion_lab.training import checkpointing
from diffusion_lab.training.fit import LOCK_FILE
from diffusion_lab.utils.files import OutputError
from tests.helpers import assert_same_training_state, command, main_in_process, one_error_line, start_cli, user_env

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
     ("/proc/nope/x", "output=/proc/nope/x cannot be written"),
     ("FILE/x", "output=FILE/x cannot be written (FILE is a file)"),
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


UNWRITABLE = [("/proc/nope", "No such file or directory"), ("FILE/x", "FILE is a file")]


@pytest.mark.parametrize(("path", "reason"), UNWRITABLE)
@pytest.mark.parametrize(
    ("name", "args", "key"),
    [("sample", (f"ckpt={FIXTURE_CKPT}",), "output"),
     ("evaluate", (f"ckpt={FIXTURE_CKPT}",), "output"),
     ("export", (f"ckpt={FIXTURE_CKPT}",), "output"),
     ("figures", (), "output"),
     ("train", ("experiment=smoke",), "hydra.run.dir"),
     ("sample", (f"ckpt={FIXTURE_CKPT}",), "paths.log_dir")],
)  # fmt: skip
def test_an_unwritable_output_or_run_folder_is_one_line_before_any_work(
    name: str, args: tuple[str, ...], key: str, path: str, reason: str, tmp_path: Path, monkeypatch, capsys
) -> None:  # fmt: skip
    """Every command tries its output and its run folder before any work: a folder under /proc (which cannot be
    made, even by root) or under a regular file is one line naming the setting, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("a file, not a folder")
    run = (f"hydra.run.dir={tmp_path / 'run'}",) if key == "output" else ()  # else the run folder is refused
    line = refused(monkeypatch, capsys, name, *args, f"{key}={path}", *run)
    assert line == f"error: {key}={path} cannot be written ({reason}): pass {key}= a path you can write to"
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file() and p.name != "FILE"]
    assert all(p.parts[0] == "run" and (p.parts[1] == ".hydra" or p.suffix == ".log") for p in written), written


@pytest.mark.parametrize(
    ("path", "reason"), [("/proc/nope", "No such file or directory"), ("FILE/x", "Not a directory")]
)
def test_an_unwritable_sweep_folder_is_one_line(
    path: str, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("a file, not a folder")
    line = refused(monkeypatch, capsys, "figures", "-m", f"paths.log_dir={path}", "seed=1,2")
    assert line.startswith(f"error: cannot write {path}")
    assert line.endswith(f" ({reason}): pass paths.log_dir= a path you can write to")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


def test_a_full_disk_while_writing_is_one_line_and_leaves_an_existing_output_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # fmt: skip
    out = tmp_path / "out" / "samples"
    args = (f"ckpt={FIXTURE_CKPT}", "label=7", "num_samples=1", "steps=2", f"output={out}")
    main_in_process(monkeypatch, "sample", *args, f"hydra.run.dir={tmp_path / 'run1'}")
    before = snapshot(out.parent)
    real_replace = os.replace

    def disk_full(src: str, dst: str) -> None:
        if Path(dst).parent == out.parent:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", disk_full)
    line = refused(monkeypatch, capsys, "sample", *args, "seed=1", f"hydra.run.dir={tmp_path / 'run2'}")
    monkeypatch.undo()
    assert line == f"error: cannot write {out}.png (No space left on device): pass output= a path you can write to"
    assert snapshot(out.parent) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["samples.npz", "samples.png"]


def test_a_seed_that_is_not_a_number_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    line = refused(monkeypatch, capsys, "sample", f"ckpt={FIXTURE_CKPT}", "label=3", "seed=abc",
                   f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert line == "error: seed must be an integer in [0, 4294967295], got 'abc' (e.g. seed=0)"
    assert not (tmp_path / "run").exists()


def test_a_write_error_outside_the_output_does_not_send_the_user_to_output(tmp_path: Path) -> None:
    """A cache beside the data that cannot be written is not fixed by another output=: the line says so."""
    cfg = OmegaConf.create({"output": str(tmp_path / "out" / "samples")})
    full = errno.ENOSPC, "No space left on device"
    assert write_fix(cfg, OutputError(*full, str(tmp_path / "out" / "samples.png"))) == (
        "pass output= a path you can write to"
    )
    assert write_fix(cfg, OutputError(*full, "/data/mnist/reference.pt")) == "free space or make its folder writable"


# --------------------------------------------------------------------------- kills while writing

#: ``diffusion-lab-NAME ARGS`` with ``os.replace`` stopped before the COUNT-th file it puts under FOLDER: the command
#: prints ``writing PATH`` and waits there, with that file whole in its hidden partial file, to be killed.
PAUSED_AT_WRITE = """
import importlib, os, sys, time
name, folder, count, *args = sys.argv[1:]
real_replace, writes = os.replace, []
def replace(src, dst, **kwargs):
    if str(dst).startswith(folder + os.sep):
        writes.append(dst)
        if len(writes) == int(count):
            print("writing", dst, flush=True)
            time.sleep(600)
    return real_replace(src, dst, **kwargs)
os.replace = replace
sys.argv = ["diffusion-lab-" + name, *args]
importlib.import_module("diffusion_lab.cli." + name).main()
"""

#: Each command, cheap: its arguments besides ``output=`` and ``hydra.run.dir=``, and its output's name.
KILLED_COMMANDS = {
    "sample": (("label=[1,7]", "num_samples=2", "steps=2"), "samples"),
    "evaluate": (("num_per_class=2", "steps=2", "inception=false", "clip=none", "style_control=false"), "eval"),
    "export": (("grid_per_class=1", "steps=2"), "model"),
}


def visible_files(folder: Path) -> set[str]:
    """The files a user sees under ``folder``: none in or named as hidden ones."""
    paths = (p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    return {str(p) for p in paths if not any(part.startswith(".") for part in p.parts)}


def assert_whole(folder: Path) -> None:
    """Every file a user sees under ``folder`` reads whole: images, arrays, JSON, a model folder."""
    for path in (folder / name for name in visible_files(folder)):
        if path.suffix == ".png":
            Image.open(path).load()
        elif path.suffix == ".npz":
            with np.load(path) as npz:
                [npz[key] for key in npz.files]
        elif path.suffix == ".json":
            json.loads(path.read_text())
    if (folder / "model").exists():
        load_model(folder / "model")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KILLED_COMMANDS))
def test_a_kill_while_writing_leaves_outputs_whole_or_absent_and_a_rerun_completes(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    """SIGTERM and SIGKILL, each while a command writes its second file: what a user sees of the output is whole
    (or absent), a SIGTERM leaves no hidden partial file, and a rerun writes it all and clears what SIGKILL left.

    SIGTERM is sent in process (to this process, caught by the command's own handler, which ends it as an
    exception does); SIGKILL to the command in a subprocess.
    """
    args, output = KILLED_COMMANDS[name]
    out = tmp_path / "out"
    command_args = (f"ckpt={FIXTURE_CKPT}", *args, f"output={out / output}")
    real_replace, writes = os.replace, []

    def terminated_at_second_write(src: str, dst: str, **kwargs: object) -> None:
        if str(dst).startswith(f"{out}{os.sep}"):
            writes.append(dst)
            if len(writes) == 2:
                assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, "the command has no SIGTERM handler"
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(60)  # the handler ends the command before this ends
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", terminated_at_second_write)
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, name, *command_args, f"hydra.run.dir={tmp_path / 'term'}")
    monkeypatch.undo()
    assert exit_info.value.code == 128 + signal.SIGTERM and len(writes) == 2
    assert_whole(out)
    left = [visible_files(out)]
    assert not [p.name for p in out.rglob(".*")], "SIGTERM left a partial file"

    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSED_AT_WRITE, name, str(out), "2", *command_args,
         f"hydra.run.dir={tmp_path / 'kill'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=user_env(),
    )  # fmt: skip
    log = []
    for line in proc.stdout:
        log.append(line)
        if line.startswith("writing "):
            break
    assert log and log[-1].startswith("writing "), "".join(log[-30:])
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert_whole(out)
    left.append(visible_files(out))
    hidden = [p.name for p in out.rglob(".*")]
    assert hidden and all(".partial-" in p for p in hidden), hidden

    main_in_process(monkeypatch, name, *command_args, f"hydra.run.dir={tmp_path / 'rerun'}")
    assert_whole(out)
    assert not [p.name for p in out.rglob(".*")], "the rerun left what SIGKILL left"
    expected = {"sample": ["samples.npz", "samples.png"], "export": ["model"]}.get(name, ["eval"])
    assert sorted(p.name for p in out.iterdir()) == expected
    complete = visible_files(out)
    for files in left:  # a file is there whole or not at all; the model folder all of it or none
        assert files <= complete and (name != "export" or files in (set(), complete)), files
    if name == "evaluate":
        assert json.loads((out / "eval" / "metrics.json").read_text())["num_per_class"] == 2


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


def test_a_requeued_slurm_job_continues_its_own_last_checkpoint(
    compose_train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SLURM runs a requeued job's first command line again (no resume=true, maybe ckpt=): it continues its
    folder's last.ckpt; the same folder outside a requeued job is refused."""
    from diffusion_lab.training.fit import resume_checkpoint

    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    for overrides in ((), (f"ckpt={other}",)):
        assert resume_checkpoint(compose_train("experiment=smoke", *overrides)) == str(last)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the job's first run
    with pytest.raises(ValueError, match="already holds a run: pass resume=true"):
        resume_checkpoint(compose_train("experiment=smoke"))
    assert resume_checkpoint(compose_train("experiment=smoke", f"ckpt={other}")) == str(other)
    last.unlink()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")  # requeued before its first checkpoint: starts fresh
    assert resume_checkpoint(compose_train("experiment=smoke")) is None


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
    assert_same_training_state(copy / "checkpoints" / "last.ckpt", straight / "checkpoints" / "last.ckpt")
    record = resumed["callbacks"][next(k for k in resumed["callbacks"] if k.startswith("RunCheckpoint"))]
    assert Path(record["best_model_path"]).parent == copy / "checkpoints"
    assert all(Path(path).parent == copy / "checkpoints" for path in record["best_k_models"])
    assert (
        Path(record["dirpath"]) == copy / "checkpoints"
        and Path(record["last_model_path"]).parent == copy / "checkpoints"
    )


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_under_the_one_cycle_schedule_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    """The default schedule spans the run, so it reads the run's length from the training data before
    Lightning restores the checkpoint's loop state: the batch position must still reach the loader."""
    common = ("experiment=smoke", *SMALL, "trainer.max_steps=-1", "trainer.max_epochs=2",
              "trainer.limit_train_batches=13", "trainer.val_check_interval=1.0", "trainer.limit_val_batches=1",
              "callbacks.sample_grid=null", "callbacks.sample_quality=null")  # fmt: skip
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    with pytest.raises(SystemExit) as stop:  # Lightning ends a SIGTERM'd run as a clean exit
        main_in_process(monkeypatch, "train", *common, "+callbacks.stop={_target_:tests.helpers.SigtermAt,step:8}",
                        f"hydra.run.dir={stopped}")  # fmt: skip
    assert stop.value.code in (None, 0)
    assert read_checkpoint(stopped / "checkpoints" / "last.ckpt")["global_step"] == 8  # mid-epoch
    main_in_process(monkeypatch, "train", *common, "resume=true", f"hydra.run.dir={stopped}")
    main_in_process(monkeypatch, "train", *common, f"hydra.run.dir={straight}")
    assert_same_training_state(stopped / "checkpoints" / "last.ckpt", straight / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_a_checkpoint_without_the_batch_position_or_random_state_still_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    """A checkpoint of version 0.1, written at step 10 of a 20-step epoch, predates both: its run resumes, the
    epoch's order starting over as it did then."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE_CKPT, run_dir / "checkpoints" / "last.ckpt")
    its_model = ("model.unet.down_chs=[4,8]", "data.styles=true", "model.style_conditioning=true", "objective=eps")
    quick = ("trainer.max_steps=12", "callbacks.sample_grid=null", "callbacks.sample_quality=null")
    main_in_process(monkeypatch, "train", "experiment=smoke", *SMALL, *its_model, *quick, "resume=true",
                    f"hydra.run.dir={run_dir}")  # fmt: skip
    resumed, old = read_checkpoint(run_dir / "checkpoints" / "last.ckpt"), read_checkpoint(FIXTURE_CKPT)
    assert old["global_step"] == 10 and resumed["global_step"] == 12
    weights = (checkpoint["current_model_state"]["unet.out.weight"] for checkpoint in (resumed, old))
    assert not torch.equal(*weights), "the resumed run trained"


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
    assert not [p.name for p in (run_dir / "checkpoints").iterdir() if ".partial-" in p.name]


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
