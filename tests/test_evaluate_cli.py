"""``diffusion-lab-evaluate``: metrics.json with every number beside its reference, report.md, and one-line errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lab.diffusion.reverse_process import DEFAULT_GUIDANCE
from diffusion_lab.evaluation import cas as cas_module
from diffusion_lab.evaluation import run as evaluation_run
from diffusion_lab.evaluation.classifier import load_classifier
from diffusion_lab.pipeline import ClassConditionalPipeline
from diffusion_lab.reports.images import save_samples
from tests.helpers import main_in_process, one_error_line
from tests.test_cas import score_on_fewer_test_images

#: Their runs and evaluations score MNIST samples with its reference classifier, trained once up front.
pytestmark = pytest.mark.usefixtures("mnist_classifier")

REQUIRED = [
    "generated/classifier_accuracy", "generated/fid", "generated/kid", "generated/clip_score",
    "real/classifier_accuracy", "real/fid", "real/clip_score", "real/clip_zero_shot_accuracy",
    "generated/inception_fid", "real/inception_fid", "generated/clip_zero_shot_accuracy",
    "generated/clip_good_fraction", "real/kid",
]  # fmt: skip


@pytest.mark.slow
def test_writes_metrics_report_and_figures(
    make_checkpoint: Callable[..., Path], tmp_path: Path, tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "eval"
    clip = f"clip.model_name=local-dir:{tiny_clip_dir}"
    main_in_process(monkeypatch, "evaluate", f"ckpt={make_checkpoint()}", "num_per_class=2", "steps=5",
                    f"output={out}", clip, f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert not [k for k in REQUIRED if k not in metrics]
    assert {f"generated/classifier_accuracy/{d}" for d in range(10)} <= metrics.keys()
    assert {f"real/clip_score/{d}" for d in range(10)} <= metrics.keys()
    assert metrics["clip/status"] == f"ok: local-dir:{tiny_clip_dir}"
    assert metrics["steps"] == 5 and metrics["guidance"] == DEFAULT_GUIDANCE and metrics["num_per_class"] == 2
    assert metrics["real/classifier_accuracy"] >= 0.9 and metrics["classifier/test_accuracy"] >= 0.99
    assert metrics["generated/fid"] > metrics["real/fid"], (
        "an untrained model is further from the data than real images"
    )
    report = (out / "report.md").read_text()
    assert "| classifier_accuracy |" in report and "| clip_score |" in report and "| 7 |" in report
    for image in re.findall(r"\]\((\w+\.png)\)", report):
        assert Image.open(out / image).size[0] > 50, image
    assert Image.open(out / "generated.png").size == (2 * 30 + 2, 10 * 30 + 2)
    with np.load(out / "samples.npz") as data:
        assert data["images"].shape == (20, 28, 28) and data["labels"].tolist() == [
            d for d in range(10) for _ in range(2)
        ]


@pytest.mark.slow
def test_without_clip_weights_everything_else_runs(
    make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hub_cache"))
    out = tmp_path / "eval"
    main_in_process(monkeypatch, "evaluate", f"ckpt={make_checkpoint()}", "num_per_class=2", "steps=3",
                    "inception=false", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["clip/status"].startswith(
        "unavailable: CLIP weights ViT-B-32/laion2b_s34b_b79k are not in the local"
    )
    assert "set clip.download=true" in metrics["clip/status"]
    assert not [k for k in metrics if "clip_" in k], "no CLIP numbers without CLIP weights"
    assert "generated/fid" in metrics and "real/classifier_accuracy" in metrics
    assert "generated/inception_fid" not in metrics
    assert not [k for k in metrics if k.startswith("style/")], "an unstyled model has no style control"
    log = capsys.readouterr()
    assert len([line for line in (log.out + log.err).splitlines() if "CLIP metrics skipped" in line]) == 1


@pytest.mark.slow
def test_a_styled_checkpoint_is_scored_on_style_control(
    make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "eval"
    ckpt = make_checkpoint("model.style_conditioning=true")
    main_in_process(monkeypatch, "evaluate", f"ckpt={ckpt}", "num_per_class=4", "steps=3", "inception=false",
                    "clip=none", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("slant", "thickness"):
        for stat in ("correlation", "mae", "bias"):
            assert np.isfinite(metrics[f"style/{name}_{stat}"]), (name, stat)
            assert np.isfinite(metrics[f"style/class_aware/{name}_{stat}"]), (name, stat)
    assert 0 <= metrics["style/classifier_accuracy"] <= 1 and metrics["time/style_s"] > 0
    report = (out / "report.md").read_text()
    assert (
        "## Style control" in report
        and "| thickness |" in report
        and "| slant (class-aware) |" in report
        and "Class accuracy with styles" in report
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [("style_control=maybe", "style_control must be true or false"),
     ("num_per_class=1", "num_per_class must be an integer >= 2"), ("steps=1000", "steps must be an integer in 1..100"),
     ("precision=16", "precision must be one of 32, bf16"), ("clip=clop", "clip=clop is not an option"),
     ("guidance=-1", "guidance must be a finite number >= 0"),
     ("batch_size=0", "batch_size must be a positive integer")],
)  # fmt: skip
def test_bad_input_is_one_clear_line_and_writes_nothing(
    make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, override: str,
    message: str,
) -> None:  # fmt: skip
    out = tmp_path / "out"

    def no_work(*args, **kwargs):
        raise AssertionError("the minutes of evaluation started before the settings were checked")

    monkeypatch.setattr(evaluation_run, "Evaluator", no_work)
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, "evaluate", f"ckpt={make_checkpoint()}", "clip=none", override, f"output={out}",
                        f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert exit_info.value.code == 1
    assert message in one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_missing_inception_weights_name_the_fix(
    make_checkpoint: Callable[..., Path], data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    scratch = tmp_path / "data"
    scratch.mkdir()
    for name in ("mnist", "classifiers"):
        (scratch / name).symlink_to(data_dir / name)
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        main_in_process(monkeypatch, "evaluate", f"ckpt={make_checkpoint()}", "clip=none", f"paths.data_dir={scratch}",
                        f"output={out}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: Inception FID weights not found") and "make data" in error
    assert "inception=false" in error and not out.exists()


@pytest.mark.slow
def test_scores_precision_recall_and_cas_and_rescores_its_samples_file(
    make_checkpoint: Callable[..., Path], data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(cas_module, "reference_steps", lambda dataset: 20)  # the mechanism, not the recipe
    score_on_fewer_test_images(monkeypatch)
    ckpt, first, second = make_checkpoint(), tmp_path / "first", tmp_path / "second"
    common = ["steps=3", "inception=false", "clip=none", "cas=true", "cas_per_class=4"]
    main_in_process(monkeypatch, "evaluate", f"ckpt={ckpt}", "num_per_class=5", *common, f"output={first}",
                    f"hydra.run.dir={tmp_path / 'run1'}")  # fmt: skip
    metrics = json.loads((first / "metrics.json").read_text())
    for name in ("precision", "recall", "density", "coverage"):
        assert f"generated/{name}" in metrics and f"real/{name}" in metrics and f"generated/{name}/7" in metrics
        assert f"| {name} |" in (first / "report.md").read_text()
    assert 0 <= metrics["generated/cas"] <= 1 and metrics["real/cas"] > metrics["generated/cas"]
    assert metrics["time/cas_s"] > 0 and metrics["time/precision_recall_s"] > 0 and metrics["samples"] is None
    assert "CAS: classifier on 40 generated images" in capsys.readouterr().err

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again")

    monkeypatch.setattr(ClassConditionalPipeline, "__call__", no_sampling)
    samples = first / "samples.npz"
    main_in_process(monkeypatch, "evaluate", f"ckpt={ckpt}", "num_per_class=4", *common, f"samples={samples}",
                    "guidance=7", f"output={second}", f"hydra.run.dir={tmp_path / 'run2'}")  # fmt: skip
    again = json.loads((second / "metrics.json").read_text())
    assert again["samples"] == str(samples) and again["num_per_class"] == 4
    assert again["guidance"] == DEFAULT_GUIDANCE
    assert again["settings"].startswith(f"samples {samples} (DDIM, 3 steps, w={DEFAULT_GUIDANCE:g}")
    with np.load(samples) as data:
        first_four = [i for c in range(10) for i in range(5 * c, 5 * c + 4)]
        scored = torch.from_numpy(data["images"][first_four]).unsqueeze(1).float() / 255
    assert again["generated/classifier_accuracy"] == pytest.approx(
        float(
            (load_classifier("mnist", data_dir)[0].predict(scored) == torch.arange(10).repeat_interleave(4))
            .float()
            .mean()
        )
    ), "the first num_per_class images of each class are scored"
    assert again["real/fid"] != metrics["real/fid"], "the floor is measured at the new size"


def _fashion_file(path: Path) -> None:
    save_samples(
        torch.rand(20, 1, 28, 28), torch.arange(10).repeat_interleave(2), path, meta={"dataset": "fashion_mnist"}
    )


def _wrong_shape(path: Path) -> None:
    np.savez(path, images=np.zeros((20, 32, 32), np.uint8), labels=np.arange(10).repeat(2))


def _too_few(path: Path) -> None:
    save_samples(torch.rand(20, 1, 28, 28), torch.arange(10).repeat_interleave(2), path, meta={"dataset": "mnist"})


@pytest.mark.parametrize(
    ("write", "message"),
    [(_fashion_file, "holds fashion_mnist images but the checkpoint is a mnist model"),
     (_wrong_shape, "holds images of shape [20, 32, 32] (uint8): expected [N, 28, 28] uint8"),
     (_too_few, "num_per_class=3 but class 0 has 2 images in samples="),
     (None, "is not a samples.npz with images and labels")],
)  # fmt: skip
def test_a_samples_file_of_another_dataset_or_shape_is_refused_in_one_line(
    make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, write, message: str
) -> None:
    path = tmp_path / "samples.npz"
    if write is not None:
        write(path)

    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation started before the samples file was checked")

    monkeypatch.setattr(evaluation_run, "Evaluator", no_work)
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        main_in_process(monkeypatch, "evaluate", f"ckpt={make_checkpoint()}", "clip=none", "num_per_class=3",
                        f"samples={path}", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert message in one_error_line(capsys.readouterr().err)
    assert not out.exists()
