"""The real ``diffusion-lab-train`` entry point, end to end, on both datasets."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from diffusion_lab.diffusion.objectives import FlowObjective
from diffusion_lab.models.diffusion_module import DiffusionModule
from diffusion_lab.models.unet import ConditionalUNet
from diffusion_lab.pipeline import ClassConditionalPipeline, weights_guide
from diffusion_lab.training.callbacks import SampleGrid
from diffusion_lab.training.fit import train
from diffusion_lab.training.guide_snapshot import GuideSnapshot
from tests.helpers import main_in_process, one_error_line, run_cli

#: Their runs and evaluations score MNIST samples with its reference classifier, trained once up front.
pytestmark = pytest.mark.usefixtures("mnist_classifier")


def refused_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *overrides: str) -> str:
    """The stderr of ``diffusion-lab-train OVERRIDES``, run in this process, which must exit 1."""
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, "train", *overrides)
    assert exit_info.value.code == 1
    return capsys.readouterr().err


def assert_one_line_error(stderr: str, run_dir: Path, message: str) -> None:
    """The run failed with one ``error:`` line holding ``message``, no traceback, no checkpoint."""
    assert message in one_error_line(stderr), stderr[-2000:]
    assert not (run_dir / "checkpoints").exists()


SmokeRun = Callable[[str], tuple[Path, str]]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """The run folder and output of ``diffusion-lab-train experiment=smoke data=DATASET``, run once per dataset for
    the tests that only read it."""
    runs: dict[str, tuple[Path, str]] = {}

    def _run(dataset: str) -> tuple[Path, str]:
        if dataset not in runs:
            run_dir = tmp_path_factory.mktemp(f"smoke_{dataset}") / "run"
            proc = run_cli("train", "experiment=smoke", f"data={dataset}", f"hydra.run.dir={run_dir}")
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs[dataset] = run_dir, proc.stderr + proc.stdout
        return runs[dataset]

    return _run


@pytest.mark.slow
@pytest.mark.usefixtures("reference_classifiers")  # Fashion-MNIST too
@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_short_run_leaves_checkpoint_metrics_and_grid(dataset: str, smoke_run: SmokeRun) -> None:
    run_dir, output = smoke_run(dataset)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 20
    assert 0 < metrics["val/loss"] < 2 and "train/loss" in metrics
    grid = Image.open(run_dir / "samples" / "final.png")
    assert grid.size == (2 * 30 + 2, 10 * 30 + 2), "10 class rows x 2 columns of 28x28 images, 2 px padding"
    assert len(list((run_dir / "samples").glob("epoch_*.png"))) == 2  # val_check_interval=10 of 20 steps
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert "Sample grid:" in output and "last.ckpt" in output


@pytest.mark.slow
def test_runs_without_a_logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    main_in_process(monkeypatch, "train", "experiment=smoke", "logger=none", f"hydra.run.dir={run_dir}")
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 20
    assert (run_dir / "samples" / "final.png").is_file() and not (run_dir / "csv").exists()


@pytest.mark.slow
def test_checkpoint_reloads_with_ema_weights(smoke_run: SmokeRun) -> None:
    ckpt_path = smoke_run("mnist")[0] / "checkpoints" / "last.ckpt"
    module = DiffusionModule.load_checkpoint(ckpt_path)
    assert module.unet.down_chs == (8, 16) and module.objective.name == "flow"
    checkpoint = torch.load(ckpt_path, weights_only=True)
    ema, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert any(not torch.equal(ema[k], raw[k]) for k in ema), "EMA weights differ from the raw weights"
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, ema[key])


@pytest.mark.slow
def test_missing_data_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    overrides = ("experiment=smoke", f"paths.data_dir={tmp_path / 'nodata'}", f"hydra.run.dir={run_dir}")
    assert_one_line_error(refused_in_process(monkeypatch, capsys, *overrides), run_dir, "run `make data`")


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(tmp_path: Path, smoke_run: SmokeRun) -> None:
    second = tmp_path / "second"
    last = smoke_run("mnist")[0] / "checkpoints" / "last.ckpt"
    resume = ("trainer.max_steps=30", "trainer.max_epochs=2", f"ckpt={last}")
    proc = run_cli("train", "experiment=smoke", *resume, f"hydra.run.dir={second}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((second / "metrics.json").read_text())
    assert resumed["global_step"] == 30
    first = json.loads((last.parent.parent / "metrics.json").read_text())["history/val/loss"]
    curve = resumed["history/val/loss"]
    assert curve[: len(first)] == first and curve[-1][0] > first[-1][0], "the curve goes on from the checkpoint's"


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    """The `ddp` trainer config, run with two CPU processes (gloo) instead of two GPUs."""
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        "experiment=smoke",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 20 and 0 < metrics["val/loss"] < 2
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "samples" / "final.png").is_file()
    assert "eval/classifier_accuracy" in metrics and "eval_real/fid" in metrics, "rank 0 scores the samples alone"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "rank 1 writes into the same run directory"


@pytest.mark.slow
def test_ddp_jobs_of_a_sweep_each_train_once_in_their_own_folder(tmp_path: Path) -> None:
    """Lightning starts DDP ranks by re-running the command line: in a sweep that must not re-run the sweep."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("train",
        "-m", "experiment=smoke", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "logger=none",
        "schedule=linear,cosine", "callbacks.sample_quality=null", "callbacks.sample_grid=null",
        f"paths.log_dir={tmp_path / 'logs'}", f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert output.count("Launching 2 jobs") == 1 and output.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"], "no stray run folders"
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0", "1", "multirun.yaml"]
    for job in ("0", "1"):
        assert json.loads((sweep_dir / job / "metrics.json").read_text())["global_step"] == 20
        assert (sweep_dir / job / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.unet.activation=relu", "model.unet.activation must be one of"),
        ("diffusion.timesteps=0", "diffusion.timesteps must be a positive integer"),
        ("model.cond_drop_prob=1.5", "model.cond_drop_prob must be a number in [0, 1)"),
        ("+trainer.max_epoch=3", "unexpected keyword argument 'max_epoch'"),
    ],
)
def test_bad_config_value_is_one_clear_line(
    override: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    stderr = refused_in_process(monkeypatch, capsys, "experiment=smoke", override, f"hydra.run.dir={run_dir}")
    assert_one_line_error(stderr, run_dir, message)


@pytest.mark.slow
def test_sample_grids_and_quality_reach_tensorboard_as_images_scalars_and_a_per_class_table(
    tmp_path: Path, tiny_clip_dir: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    clip = ("clip=laion2b", f"clip.model_name=local-dir:{tiny_clip_dir}")
    proc = run_cli("train", "experiment=smoke", "logger=tensorboard", *clip, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    keys = ["eval/classifier_accuracy", "eval/fid", "eval/kid", "eval/clip_score", "eval_real/fid", "eval_real/kid",
            "eval_real/classifier_accuracy", "eval/classifier_accuracy/7", "eval/clip_good_fraction/0",
            "eval/precision", "eval/recall", "eval_real/precision", "eval_real/recall"]  # fmt: skip
    assert not [key for key in keys if key not in metrics]
    assert metrics["eval_real/classifier_accuracy"] > 0.9 and metrics["eval/fid"] > metrics["eval_real/fid"]
    (event_dir,) = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(event_dir), size_guidance={"images": 0}).Reload()
    assert {"samples/epoch", "samples/final"} <= set(events.Tags()["images"])
    assert len(events.Images("samples/epoch")) == 2
    assert {"val/loss", "eval/classifier_accuracy", "eval_real/fid", "eval/recall"} <= set(events.Tags()["scalars"])
    table = events.Tensors("eval/per_class/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert table.startswith("| class | classifier_accuracy | clip_score | clip_zero_shot_accuracy |")
    assert len(table.splitlines()) == 12, "a header, a rule and one row per class"
    assert "Sample quality (2 per class)" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_sample_quality_trains_the_classifier_inside_validation_on_first_use(
    compose_train, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default run's path on a fresh checkout: the first scoring happens in Lightning's validation
    loop (inference mode) and must train the classifier there; the end of fit scores again after."""
    from diffusion_lab.evaluation import classifier

    scratch = tmp_path / "data"
    scratch.mkdir()
    (scratch / "mnist").symlink_to(data_dir / "mnist")
    monkeypatch.setitem(classifier.EPOCHS, "mnist", 1)  # the path, not the recipe
    monkeypatch.setitem(classifier.MIN_TEST_ACCURACY, "mnist", 0.97)
    cfg = compose_train("experiment=smoke", "logger=none", f"paths.data_dir={scratch}", "trainer.max_steps=15",
                        "callbacks.sample_quality.every_n_epochs=1")  # fmt: skip
    train(cfg)
    assert classifier.cache_path("mnist", scratch).is_file(), "trained and cached on first use"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["global_step"] == 15 and "eval/classifier_accuracy" in saved and "eval_real/fid" in saved


def test_sample_callbacks_draw_through_the_pipeline_with_the_objectives_default_sampler(tmp_path: Path) -> None:
    """A flow model's sample grid, with no sampler given, draws with flow Euler (DDIM would not fit the objective),
    the very images the pipeline gives for the same noise; with the run's guide snapshot it autoguides."""
    torch.manual_seed(0)
    module = DiffusionModule(
        ConditionalUNet(down_chs=(8, 16), num_classes=10), FlowObjective(), functools.partial(torch.optim.AdamW)
    )
    snapshot = GuideSnapshot()
    trainer = SimpleNamespace(datamodule=SimpleNamespace(name="mnist"), callbacks=[snapshot])
    grid = SampleGrid(tmp_path, num_per_class=2, sampler=None, steps=3, guidance=1.0, autoguidance=1.0)
    module.train()
    drawn = grid.draw(trainer, module)  # before the snapshot: no autoguidance
    assert module.training, "the callback hands the module back in training mode"
    pipe = ClassConditionalPipeline(module, dataset="mnist")
    labels = torch.arange(10).repeat_interleave(2)
    noise = torch.randn(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    same = {"seed": 0, "steps": 3, "guidance": 1.0, "precision": "32", "noise": noise}
    assert torch.equal(drawn, pipe(labels, sampler="flow_euler", autoguidance=0.0, **same))
    snapshot.weights = {k: v + 0.01 for k, v in module.state_dict().items()}
    snapshot.step = 5
    guided = grid.draw(trainer, module)
    pipe.set_guide(weights_guide(module, snapshot.weights, "the snapshot", 5))
    assert torch.equal(guided, pipe(labels, sampler="flow_euler", autoguidance=1.0, **same))
    assert not torch.equal(guided, drawn)
