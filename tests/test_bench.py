"""The benchmark script runs end to end and writes the keys the speed targets are read from; its FLOP count
and its roofline of the convolutions time the work a training step does."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from diffusion_lab.config import project_root

#: The runs and evaluations of the end-to-end tests score MNIST samples with its reference classifier, trained once
#: up front.
SCORES_SAMPLES = pytest.mark.usefixtures("mnist_classifier")


def script(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` as the module ``NAME``."""
    spec = importlib.util.spec_from_file_location(name, project_root() / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there, and the scripts import each other so
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """``benchmarks/bench.py`` as a module."""
    return script("bench")


@pytest.fixture(scope="module")
def time_to_quality(bench: ModuleType) -> ModuleType:
    """``benchmarks/time_to_quality.py`` as a module (it imports ``bench``)."""
    return script("time_to_quality")


def forward_flops(module: nn.Module, out: Tensor) -> int:
    """Multiply-adds x 2 of a convolution or linear layer's forward pass, from its shapes alone."""
    if isinstance(module, nn.Conv2d):
        per_output = 2 * module.in_channels // module.groups * math.prod(module.kernel_size)
        return per_output * out.numel()
    return 2 * module.in_features * out.numel()


def test_step_flops_are_its_convolutions_and_linears(bench: ModuleType, tmp_path: Path) -> None:
    cfg = bench.compose_config(["model=small", "trainer=cpu", "model.unet.down_chs=[4,8]",
                                "model.unet.attention_levels=[]"], tmp_path)  # fmt: skip
    torch.manual_seed(0)
    unet, objective = instantiate(cfg.model.unet), instantiate(cfg.objective)
    x0, labels = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    expected, convs = 0, 0

    def count(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal expected, convs
        # Backward: the weight's gradient costs what the forward pass does, and so does the input's where needed.
        expected += forward_flops(module, out) * (3 if inputs[0].requires_grad else 2)
        convs += isinstance(module, nn.Conv2d)

    for module in unet.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(count)
    flops, shapes = bench.count_step(unet, objective, x0, labels, bench.autocast_for("bf16-mixed", x0.device))
    assert flops == pytest.approx(expected, rel=0.01)
    assert sum(shapes.values()) == convs
    stem = bench.ConvShape.of(unet.stem, x0)
    assert shapes[stem] == 1 and not stem.input_grad, "the data needs no gradient"
    assert all(shape.dtype == torch.bfloat16 for shape in shapes if shape != stem), "autocast's activations"
    assert all(p.grad is None for p in unet.parameters()), "counting leaves no gradients behind"


def test_roofline_times_the_step_convolutions(bench: ModuleType) -> None:
    bf16, fp32 = torch.bfloat16, torch.float32
    stem = bench.ConvShape(1, 8, (3, 3), (1, 1), (1, 1), 1, 28, 28, fp32, False)
    down = bench.ConvShape(8, 8, (3, 3), (2, 2), (1, 1), 1, 28, 28, bf16, True)
    shapes = Counter({stem: 1, down: 3})
    autocast = bench.autocast_for("bf16-mixed", torch.device("cpu"))
    flops, seconds = bench.conv_roofline(shapes, 4, torch.device("cpu"), autocast, repeats=1)
    stem_fwd, down_fwd = 2 * 8 * 9 * 4 * 28 * 28, 2 * 8 * 8 * 9 * 4 * 14 * 14
    assert flops == pytest.approx(2 * stem_fwd + 3 * 3 * down_fwd, rel=0.01)
    assert math.isfinite(seconds) and seconds > 0


@SCORES_SAMPLES
@pytest.mark.slow
def test_bench_writes_table_and_json(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "bench.json"
    argv = ["--presets", "small", "--steps", "3", "--warmup", "1", "--repeats", "1", "--host-steps", "3",
            "--roofline-repeats", "1", "--sample-count", "20", "--skip-ddpm", "--output", str(output)]  # fmt: skip
    assert bench.main(argv) == 0
    stdout = capsys.readouterr().out
    result = json.loads(output.read_text())
    for key in ("train/small/framework_img_s", "train/small/plain_fp32_img_s", "train/small/host_step_ms",
                "train/small/plain_host_step_ms", "sample/ddim50_s", "sample/default_s",
                "sample/fashion_default_s"):  # fmt: skip
        assert result[key] > 0, key
    assert result["train/small/framework_step_ms"] == pytest.approx(1000 * 128 / result["train/small/framework_img_s"])
    assert result["sample/default_settings"] == "mnist, objective=flow, flow Euler, 20 steps, w=0.3, autoguidance 0"
    assert result["sample/fashion_default_settings"].startswith("fashion_mnist, objective=flow, flow Euler, 20 steps")
    # CFG's two passes a step (conditional and unconditional halves) on MNIST; and the guide's on Fashion-MNIST.
    assert (result["sample/default_passes_per_image"], result["sample/fashion_default_passes_per_image"]) == (40, 60)
    assert result["machine"]["cpu_cores"] >= 1 and result["memory/peak_host_mib"] > 0
    assert "| small |" in stdout and "framework img/s" in stdout and "host ms/step (batch 2)" in stdout
    # The FLOPs and the limit: GFLOP/s are img/s x FLOPs per image, the roofline its convolutions timed alone.
    mflop = result["train/small/mflop_per_image"]
    for run, gflops in (("framework", "gflops"), ("plain_fp32", "plain_fp32_gflops"),
                        ("plain_same_precision", "plain_same_precision_gflops")):  # fmt: skip
        assert result[f"train/small/{gflops}"] == pytest.approx(result[f"train/small/{run}_img_s"] * mflop / 1000)
    for key in ("conv_roofline_gflops", "conv_ms_per_image", "conv_bound_images_per_s", "conv_share_of_step"):
        assert math.isfinite(result[f"train/small/{key}"]) and result[f"train/small/{key}"] > 0, key
    assert 0.9 * mflop < result["train/small/conv_mflop_per_image"] <= mflop, "almost all of a step is convolutions"
    bound = result["train/small/conv_bound_images_per_s"]
    assert bound == pytest.approx(1000 / result["train/small/conv_ms_per_image"])
    assert result["train/small/conv_share_of_step"] == pytest.approx(result["train/small/framework_img_s"] / bound)
    table = [key for key in result if key.startswith("roofline/conv3x3/")]
    assert len(table) == 12 and all(result[key] > 0 for key in table)
    assert "conv roofline GFLOP/s" in stdout and "| 128 |" in stdout


@SCORES_SAMPLES
@pytest.mark.slow
def test_time_to_quality_scores_snapshots_along_one_run(
    time_to_quality: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "ttq.json"
    argv = ["--overrides", "experiment=smoke", "--every-s", "1", "--num-per-class", "2", "--settings", "0.3",
            "0.3:0.5", "--guide-every", "2", "--output", str(output)]  # fmt: skip
    assert time_to_quality.main(argv) == 0
    stdout = capsys.readouterr().out
    result = json.loads(output.read_text())
    points = result["points"]
    assert len(points) >= 2 and points[-1]["step"] == 20, "a snapshot along the way and one at the end"
    assert [p["seconds"] for p in points] == sorted(p["seconds"] for p in points)
    names = ["CFG w=0.3", "CFG w=0.3 + auto w=0.5"]
    assert result["settings"]["settings"] == names
    # Every snapshot is scored with CFG; with autoguidance once weights a third of its steps old were kept.
    assert all("CFG w=0.3" in p["scores"] for p in points)
    assert names[1] in points[-1]["scores"], "the end point has its guide: the weights at step 6 or so"
    for p in points:
        assert set(p["scores"]) <= set(names)
        for score in p["scores"].values():
            assert 0.0 <= score["accuracy"] <= 1.0 and score["fid"] > 0
            assert score["fid_over_floor"] == pytest.approx(score["fid"] / result["settings"]["fid_floor"])
    assert result["final"] == points[-1]["scores"]
    for name in names:
        reached = [p["minutes"] for p in points if name in p["scores"] and p["scores"][name]["accuracy"] >= 0.99
                   and p["scores"][name]["fid_over_floor"] <= 1.5]  # fmt: skip
        assert result["minutes_to_target"][name] == (reached[0] if reached else None), "both criteria at once"
    assert set(result["minutes_to_fid_ratio"]) == {f"{n} <= {r}x" for n in names for r in ("2", "1.5")}
    assert "| training minutes |" in stdout and "CFG w=0.3 + auto w=0.5: accuracy, FID/floor" in stdout
    assert "99% class accuracy and FID <= 1.5x floor" in stdout
