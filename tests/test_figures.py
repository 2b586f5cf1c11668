"""The lab figures: what each panel shows, and the ``diffusion-lab-figures`` entry point end to end."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image
from torchvision.utils import make_grid

from diffusion_lab.diffusion.objectives import EpsilonObjective
from diffusion_lab.diffusion.reverse_process import DEFAULT_GUIDANCE
from diffusion_lab.diffusion.schedules import cosine, linear, quadratic
from diffusion_lab.models.diffusion_module import DiffusionModule
from diffusion_lab.models.unet import ConditionalUNet
from diffusion_lab.pipeline import ClassConditionalPipeline, generate
from diffusion_lab.reports.lab_figures import (
    guidance_sweep,
    plot_schedules,
    show_noise_progression,
    style_distributions,
    style_grid,
    visualize_generation_steps,
)
from diffusion_lab.reports.render import save_figure
from tests.helpers import main_in_process, one_error_line

MNIST_NAMES = [str(d) for d in range(10)]


def image_grid(fig: Figure) -> dict[tuple[int, int], Axes]:
    """The figure's image axes by (row, column) of its subplot grid."""
    grid = {}
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        if ax.images:
            grid[(spec.rowspan.start, spec.colspan.start)] = ax
    return grid


def pixels(ax: Axes) -> np.ndarray:
    """The array the axes' image shows."""
    return np.asarray(ax.images[0].get_array())


def grid_shape(grid: dict[tuple[int, int], Axes]) -> tuple[int, int]:
    rows, cols = max(r for r, _ in grid) + 1, max(c for _, c in grid) + 1
    assert len(grid) == rows * cols
    return rows, cols


# --------------------------------------------------------------------------- forward process


@pytest.fixture(scope="module")
def digit() -> torch.Tensor:
    """``[1, 28, 28]`` in [-1, 1]: a bright bar on a dark background."""
    image = -torch.ones(1, 28, 28)
    image[:, 4:24, 12:16] = 1.0
    return image


def test_noise_progression_panels_are_q_sample_with_one_noise(digit: torch.Tensor) -> None:
    fig = show_noise_progression(digit, seed=3)
    grid = image_grid(fig)
    assert grid_shape(grid) == (3, 6)
    assert [grid[(r, 0)].get_ylabel() for r in range(3)] == ["linear", "quadratic", "cosine"]
    titles = [grid[(0, c)].get_title() for c in range(6)]
    assert titles == [
        "t = 0 (0%)",
        "t = 199 (20%)",
        "t = 399 (40%)",
        "t = 599 (60%)",
        "t = 799 (80%)",
        "t = 999 (100%)",
    ]
    assert fig.get_suptitle()
    noise = torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(3))
    for r, schedule in enumerate([linear(1000), quadratic(1000), cosine(1000)]):
        np.testing.assert_array_equal(pixels(grid[(r, 0)]), digit[0].numpy())  # the clean x_0
        for c, t in enumerate([199, 399, 599, 799, 999], start=1):
            expected = schedule.q_sample(digit[None], torch.tensor([t]), noise[None])[0, 0]
            np.testing.assert_allclose(pixels(grid[(r, c)]), expected.numpy(), atol=1e-6)


def test_noise_progression_ends_in_pure_noise_and_rows_differ(digit: torch.Tensor) -> None:
    grid = image_grid(show_noise_progression(digit))
    cosine_last = pixels(grid[(2, 5)])
    assert abs(cosine_last.std() - 1.0) < 0.1 and abs(cosine_last.mean()) < 0.15
    for c in (2, 3):
        linear_mid, quadratic_mid, cosine_mid = (pixels(grid[(r, c)]) for r in range(3))
        assert np.abs(linear_mid - quadratic_mid).mean() > 0.05
        assert np.abs(quadratic_mid - cosine_mid).mean() > 0.05
        # The cosine schedule keeps more of the image halfway through than the linear one.
        signal = digit[0].numpy() > 0
        contrast = {
            name: x[signal].mean() - x[~signal].mean() for name, x in (("linear", linear_mid), ("cosine", cosine_mid))
        }
        assert contrast["cosine"] > contrast["linear"]


def test_noise_progression_custom_schedules_and_fractions(digit: torch.Tensor) -> None:
    grid = image_grid(show_noise_progression(digit, schedules=[cosine(50)], fractions=(0, 0.5, 1)))
    assert grid_shape(grid) == (1, 3)
    assert [grid[(0, c)].get_title() for c in range(3)] == ["t = 0 (0%)", "t = 24 (50%)", "t = 49 (100%)"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedules": [cosine(50), linear(100)]}, "share one T"),
        ({"fractions": (0, 1.5)}, "fractions"),
        ({"schedules": []}, "at least one schedule"),
    ],
)
def test_noise_progression_refuses_bad_arguments(digit: torch.Tensor, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        show_noise_progression(digit, **kwargs)


# --------------------------------------------------------------------------- schedules


def test_plot_schedules_draws_alpha_bar_and_log_snr() -> None:
    fig = plot_schedules()
    assert len(fig.axes) == 2
    schedules = [linear(1000), quadratic(1000), cosine(1000)]
    for ax, quantity in zip(fig.axes, ("alpha_bar", "log_snr"), strict=True):
        assert ax.get_title() and ax.get_xlabel() == "timestep t" and ax.get_ylabel()
        assert [line.get_label() for line in ax.lines if not line.get_label().startswith("_")] == [
            "linear",
            "quadratic",
            "cosine",
        ]
        assert ax.get_legend() is not None
        for line, schedule in zip(ax.lines, schedules, strict=False):
            values = schedule.alphas_cumprod if quantity == "alpha_bar" else schedule.log_snr()
            np.testing.assert_array_equal(line.get_xdata(), np.arange(1000))
            np.testing.assert_allclose(line.get_ydata(), values.numpy())


def test_plot_schedules_follows_timesteps() -> None:
    fig = plot_schedules(timesteps=50)
    curves = [line for ax in fig.axes for line in ax.lines if not line.get_label().startswith("_")]
    assert len(curves) == 6 and all(len(line.get_xdata()) == 50 for line in curves)


# --------------------------------------------------------------------------- reverse process and guidance


@pytest.fixture(scope="module")
def model() -> ClassConditionalPipeline:
    """A tiny randomly initialised model on MNIST's ten classes (weights spread so labels and guidance matter)."""
    torch.manual_seed(0)
    module = DiffusionModule(
        ConditionalUNet(down_chs=(8, 16), num_classes=10),
        EpsilonObjective(cosine(50)),
        functools.partial(torch.optim.AdamW, lr=1e-3),
    )
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.05)
    torch.nn.init.normal_(module.unet.class_emb.weight, std=1.0)
    return ClassConditionalPipeline(module, dataset="mnist")


@pytest.mark.parametrize(("sampler", "steps"), [("ddim", 8), ("dpm_solver", 6)])
def test_generation_steps_go_from_the_seeded_noise_to_the_sample(
    model: ClassConditionalPipeline, sampler: str, steps: int
) -> None:
    fig = visualize_generation_steps(model, num_snapshots=5, sampler=sampler, steps=steps, seed=3)
    grid = image_grid(fig)
    assert grid_shape(grid) == (10, 5)
    assert [grid[(r, 0)].get_ylabel() for r in range(10)] == MNIST_NAMES
    titles = [grid[(0, c)].get_title() for c in range(5)]
    assert all(title.startswith("sigma = ") for title in titles[:-1]) and titles[-1].startswith("x_0")
    assert f"step 0/{steps}" in titles[0] and f"step {steps}/{steps}" in titles[-1]
    noise = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    expected_first = ((noise + 1) / 2).clamp(0, 1)
    final = generate(model, torch.arange(10), seed=3, sampler=sampler, steps=steps, guidance=DEFAULT_GUIDANCE)
    for r in range(10):
        np.testing.assert_allclose(pixels(grid[(r, 0)]), expected_first[r, 0].numpy(), atol=1e-6)
        np.testing.assert_allclose(pixels(grid[(r, 4)]), final[r, 0].numpy(), atol=1e-5)
        assert pixels(grid[(r, 2)]).min() >= 0 and pixels(grid[(r, 2)]).max() <= 1


def test_generation_steps_snapshots_are_capped_by_the_steps(model: ClassConditionalPipeline) -> None:
    grid = image_grid(visualize_generation_steps(model, labels=[7, "3"], num_snapshots=20, steps=4))
    assert grid_shape(grid) == (2, 5), "4 steps give 5 states: the noise and one after each step"
    assert [grid[(r, 0)].get_ylabel() for r in range(2)] == ["7", "3"]


def test_generation_steps_label_rows_with_the_dataset_class_names(
    model: ClassConditionalPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    fashion = ClassConditionalPipeline(model.model, dataset="fashion_mnist")
    grid = image_grid(visualize_generation_steps(fashion, labels=["trouser", "ankle_boot"], num_snapshots=2, steps=2))
    assert [grid[(r, 0)].get_ylabel() for r in range(2)] == ["Trouser", "Ankle boot"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_snapshots": 1}, "num_snapshots"),
        ({"sampler": "eulr"}, "unknown sampler"),
        ({"steps": 51}, "steps must be an integer in 1..50"),
        ({"guidance": -1.0}, "guidance"),
        ({"labels": [10]}, "out of range"),
    ],
)
def test_generation_steps_refuse_bad_arguments(model: ClassConditionalPipeline, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        visualize_generation_steps(model, **kwargs)


def test_guidance_sweep_changes_only_the_weight(model: ClassConditionalPipeline) -> None:
    fig = guidance_sweep(model, num_per_class=2, steps=5, seed=1)
    assert [ax.get_title() for ax in fig.axes] == ["w = 0", "w = 0.5", "w = 1", "w = 2", "w = 4"]
    panels = [pixels(ax) for ax in fig.axes]
    assert all(panel.shape == (10 * 30 + 2, 2 * 30 + 2, 3) for panel in panels), "10 class rows x 2 samples"
    assert [label.get_text() for label in fig.axes[0].get_yticklabels()] == MNIST_NAMES
    labels = torch.arange(10).repeat_interleave(2)
    for w, panel in ((0.0, panels[0]), (4.0, panels[4])):
        images = generate(model, labels, seed=1, steps=5, guidance=w)
        expected = make_grid(images, nrow=2, padding=2, pad_value=1.0).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(panel, expected, atol=1e-5)
    assert np.abs(panels[0] - panels[4]).mean() > 1e-3


def test_guidance_sweep_refuses_a_negative_weight(model: ClassConditionalPipeline) -> None:
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
        guidance_sweep(model, weights=(0, -1), steps=2)


# --------------------------------------------------------------------------- files and the entry point


# --------------------------------------------------------------------------- styles


@pytest.fixture(scope="module")
def styled_model(style_stats) -> ClassConditionalPipeline:
    """A tiny randomly initialised style-conditioned model with MNIST's style distribution."""
    torch.manual_seed(0)
    unet = ConditionalUNet(down_chs=(8, 16), num_classes=10, num_styles=2)
    module = DiffusionModule(unet, EpsilonObjective(cosine(50)), torch.optim.AdamW, style_conditioning=True)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.05)
    for p in module.unet.style_emb.parameters():
        torch.nn.init.normal_(p, std=1.0)
    module.style_stats = style_stats("mnist")
    return ClassConditionalPipeline(module, dataset="mnist")


def test_style_grid_draws_one_class_across_slant_and_thickness_from_one_noise(
    styled_model: ClassConditionalPipeline,
) -> None:
    slants, thicknesses = [-20, 0, "right"], ["thin", 4.0]
    fig = style_grid(styled_model, "7", slants, thicknesses, steps=4, precision="32")
    grid = image_grid(fig)
    assert grid_shape(grid) == (2, 3)
    assert [grid[(0, c)].get_title() for c in range(3)] == ["slant -20°", "slant 0°", "slant right"]
    assert grid[(1, 0)].get_ylabel() == "thickness\n4.0 px"
    for (r, c), ax in grid.items():
        style = {"slant": slants[c], "thickness": thicknesses[r]}
        image = generate(styled_model, [7], seed=0, steps=4, precision="32", style=style)
        np.testing.assert_allclose(pixels(ax), image[0, 0].numpy(), atol=1e-5)
        assert re.fullmatch(r"[+-]\d+°, \d+\.\d px", ax.get_xlabel()), ax.get_xlabel()
    assert np.abs(pixels(grid[(0, 0)]) - pixels(grid[(1, 2)])).mean() > 1e-3


def test_style_grid_needs_a_styled_model_and_good_values(
    model: ClassConditionalPipeline, styled_model: ClassConditionalPipeline
) -> None:
    with pytest.raises(ValueError, match="trained without style conditions"):
        style_grid(model, 7, steps=2)
    with pytest.raises(ValueError, match="slant=90 is outside what the model was trained on"):
        style_grid(styled_model, 7, slants=[90], steps=2)


def test_style_distributions_mark_the_named_levels(style_stats) -> None:
    stats = style_stats("mnist")
    values = torch.stack([torch.randn(500) * 10 + 5, torch.rand(500) * 2 + 2], dim=-1)
    fig = style_distributions(values, stats, "mnist")
    slant_ax, thickness_ax = fig.axes
    assert slant_ax.get_xlabel() == "slant (degrees)" and thickness_ax.get_xlabel() == "thickness (pixels)"
    marked = [line.get_xdata()[0] for line in thickness_ax.lines]
    assert marked == [stats.attributes["thickness"].percentiles[p] for p in (10, 50, 90)]
    assert sum(patch.get_height() for patch in slant_ax.patches) == pytest.approx(500, abs=5)


def test_save_figure_writes_a_png_and_no_temporary_file(tmp_path: Path) -> None:
    path = save_figure(plot_schedules(timesteps=50), tmp_path / "new" / "schedules.png")
    assert path == tmp_path / "new" / "schedules.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 600
    assert sorted(p.name for p in path.parent.iterdir()) == ["schedules.png"]


def assert_pngs(folder: Path, names: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == names
    for name in names:
        with Image.open(folder / name) as image:
            image.verify()
            assert image.format == "PNG"


def figures(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *overrides: str) -> tuple[int, str]:
    """The exit status and output (stdout then stderr) of ``diffusion-lab-figures OVERRIDES``, run in this process."""
    try:
        main_in_process(monkeypatch, "figures", *overrides)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_one_line_error(code: int, output: str, message: str) -> None:
    assert code == 1
    assert message in one_error_line(output), output[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [(), ("data=fashion_mnist", "image_label=trouser")])
def test_cli_without_checkpoint_writes_the_two_model_free_figures(
    overrides: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figs"
    code, output = figures(monkeypatch, capsys, *overrides, f"output={out}", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 0, output[-3000:]
    assert_pngs(out, {"noise_progression.png", "schedules.png", "style_distributions.png"})
    assert "need a trained model: pass ckpt=PATH" in output


@pytest.mark.slow
def test_cli_missing_checkpoint_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figs"
    overrides = (f"ckpt={tmp_path / 'nope.ckpt'}", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(*figures(monkeypatch, capsys, *overrides), "checkpoint not found")
    assert not out.exists()


@pytest.mark.slow
def test_cli_missing_data_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figs"
    overrides = (f"paths.data_dir={tmp_path / 'nodata'}", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(*figures(monkeypatch, capsys, *overrides), "run `make data`")
    assert not out.exists()


@pytest.mark.slow
def test_cli_with_checkpoint_writes_all_four_figures(
    make_checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = make_checkpoint()
    out = tmp_path / "figs"
    code, output = figures(monkeypatch, capsys, f"ckpt={ckpt}", f"output={out}", "sampler=dpm_solver", "steps=4",
                           "num_per_class=2", "device=cpu", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert code == 0, output[-3000:]
    assert_pngs(out, {"noise_progression.png", "schedules.png", "generation_steps.png", "guidance_sweep.png",
                      "style_distributions.png"})  # fmt: skip
    for name in ("noise_progression.png", "generation_steps.png", "guidance_sweep.png"):
        assert str(out / name) in output
    assert "style_grid.png needs a style-conditioned model" in output


@pytest.mark.slow
def test_cli_with_a_styled_checkpoint_draws_the_style_grid_and_refuses_a_bad_style_value_in_one_line(
    make_checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = make_checkpoint("model.style_conditioning=true")
    out, bad = tmp_path / "figs", tmp_path / "bad"
    code, output = figures(monkeypatch, capsys, f"ckpt={ckpt}", f"output={out}", "steps=3", "num_per_class=1",
                           "guidance_weights=[0]", "style_slants=[left,0,20]", "style_thicknesses=[thin,3.5]",
                           f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert code == 0, output[-3000:]
    assert "style_grid.png" in {p.name for p in out.iterdir()}
    refused = figures(monkeypatch, capsys, f"ckpt={ckpt}", f"output={bad}", "steps=3", "style_thicknesses=[huge]",
                      f"hydra.run.dir={tmp_path / 'run2'}")  # fmt: skip
    assert_one_line_error(*refused, "thickness='huge' is not a style value")
    assert not bad.exists()
