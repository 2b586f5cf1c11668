"""Style conditioning: the attributes measured on images, their statistics, the styled U-Net and module,
sampling with styles (API and CLI), and a styled training run end to end."""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion_lab.config_schema import check_config
from diffusion_lab.data.datamodule import MNISTDataModule
from diffusion_lab.data.sources import load_arrays
from diffusion_lab.data.styles import (
    STYLE_NAMES,
    StyleStats,
    class_requests,
    control_metrics,
    measure,
    slant,
    thickness,
    uniform_requests,
)
from diffusion_lab.diffusion.objectives import EpsilonObjective
from diffusion_lab.diffusion.reverse_process import guided_output
from diffusion_lab.diffusion.schedules import cosine
from diffusion_lab.models.diffusion_module import DiffusionModule
from diffusion_lab.models.unet import ConditionalUNet
from diffusion_lab.pipeline import ClassConditionalPipeline, generate, load_model
from diffusion_lab.training.fit import train
from tests.helpers import main_in_process, one_error_line

# --------------------------------------------------------------------------- synthetic images of known style


def _supersampled(distance: Callable[[Tensor, Tensor], Tensor], width: float, size: int = 28, up: int = 8) -> Tensor:
    """``[size, size]`` in [0, 1]: the pixels within ``width / 2`` of a shape, anti-aliased by supersampling."""
    coords = (torch.arange(size * up, dtype=torch.float64) + 0.5) / up
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    inside = (distance(xs - size / 2, ys - size / 2) <= width / 2).float()
    return inside.reshape(size, up, size, up).mean(dim=(1, 3))


def stroke(angle: float, width: float, length: float = 18.0) -> Tensor:
    """A straight stroke with round ends, ``angle`` degrees from the vertical (positive: top to the right)."""
    a = math.radians(angle)
    dx, dy = math.sin(a), -math.cos(a)  # up the stroke; rows grow downwards

    def distance(x: Tensor, y: Tensor) -> Tensor:
        along = (x * dx + y * dy).clamp(-length / 2, length / 2)
        return ((x - along * dx) ** 2 + (y - along * dy) ** 2).sqrt()

    return _supersampled(distance, width)


def ring(radius: float, width: float) -> Tensor:
    """A circle of ``radius`` drawn ``width`` wide: a curved stroke with no ends."""
    return _supersampled(lambda x, y: ((x**2 + y**2).sqrt() - radius).abs(), width)


@pytest.fixture(scope="module")
def digits(data_dir: Path) -> Tensor:
    """The first 200 MNIST test digits, ``[200, 1, 28, 28]`` in [0, 1]."""
    arrays = load_arrays("mnist", data_dir)
    return torch.from_numpy(arrays["test_images"][:200]).float().div(255).unsqueeze(1)


# --------------------------------------------------------------------------- the attributes


@pytest.mark.parametrize("width", [1.5, 3.0])
@pytest.mark.parametrize("angle", [-35, -20, -5, 0, 10, 25, 40])
def test_slant_of_a_straight_stroke_is_its_angle(angle: float, width: float) -> None:
    assert slant(stroke(angle, width)[None]).item() == pytest.approx(angle, abs=1.5)


def test_shearing_digits_adds_the_shear_angle_to_their_slant(digits: Tensor) -> None:
    """Real digits sheared by 20 degrees to the right measure about 20 degrees more slant."""
    shear = math.tan(math.radians(20))
    # grid_sample reads output pixel (x, y) from input (x + shear * y): x grows as y falls, the top moves right.
    theta = torch.tensor([[1.0, shear, 0.0], [0.0, 1.0, 0.0]]).expand(len(digits), 2, 3)
    grid = F.affine_grid(theta, list(digits.shape), align_corners=False)
    sheared = F.grid_sample(digits, grid, align_corners=False)
    change = slant(sheared) - slant(digits)
    assert change.median().item() == pytest.approx(20.0, abs=3.0)
    assert (change > 10).float().mean() > 0.95


@pytest.mark.parametrize("angle", [0, 20, 45, 70])
def test_thickness_of_a_straight_stroke_is_its_width(angle: float) -> None:
    for width in (2.5, 3.0, 4.0, 5.0):
        assert thickness(stroke(angle, width)[None]).item() == pytest.approx(width, rel=0.08)


@pytest.mark.parametrize("radius", [5.0, 8.0])
def test_thickness_of_a_curved_stroke_is_its_width(radius: float) -> None:
    for width in (2.5, 3.0, 4.0):
        assert thickness(ring(radius, width)[None]).item() == pytest.approx(width, rel=0.12)


def test_thickness_grows_with_the_stroke_and_not_with_the_slant() -> None:
    widths = torch.stack([stroke(15, w) for w in (2.0, 2.5, 3.0, 3.5, 4.0, 5.0)])
    assert (thickness(widths).diff() > 0).all()
    angles = torch.stack([stroke(a, 3.0) for a in (-30, -10, 0, 10, 30)])
    assert thickness(angles).std().item() < 0.1


def test_dilated_digits_are_thicker(digits: Tensor) -> None:
    bolder = F.max_pool2d(digits, 3, stride=1, padding=1)
    change = thickness(bolder) - thickness(digits)
    assert (change > 0).float().mean() > 0.95
    assert 0.8 < change.median().item() < 3.0


def test_measure_stacks_slant_and_thickness(digits: Tensor) -> None:
    values = measure(digits)
    assert values.shape == (len(digits), 2)
    assert torch.equal(values[:, 0], slant(digits)) and torch.equal(values[:, 1], thickness(digits))
    assert torch.allclose(measure(digits[:, 0]), values)  # [N, H, W] works too


def test_an_empty_image_has_zero_slant_and_thickness() -> None:
    assert measure(torch.zeros(1, 1, 28, 28)).tolist() == [[0.0, 0.0]]


def test_measure_refuses_colour_images() -> None:
    with pytest.raises(ValueError, match="one-channel images"):
        measure(torch.zeros(2, 3, 28, 28))


# --------------------------------------------------------------------------- statistics and requests


@pytest.fixture(scope="module")
def mnist_data(data_dir: Path) -> MNISTDataModule:
    data = MNISTDataModule("mnist", data_dir, styles=True)
    data.setup()
    return data


def test_datamodule_measures_every_split_and_keeps_the_training_distribution(mnist_data: MNISTDataModule) -> None:
    train_split, val_split, test_split = mnist_data.splits()
    for split in (train_split, val_split, test_split):
        assert split.styles.shape == (len(split), 2)
    assert torch.allclose(val_split.styles[:50], measure((val_split.images[:50] + 1) / 2))
    stats = mnist_data.style_stats
    assert stats.attributes["slant"].mean == pytest.approx(float(train_split.styles[:, 0].double().mean()))
    # Handwriting leans right on average and strokes are 2-4 px wide.
    assert 2 < stats.attributes["slant"].mean < 10 and 2 < stats.attributes["thickness"].percentiles[50] < 4
    images, _, styles = next(iter(mnist_data.train_dataloader()))
    assert styles.shape == (len(images), 2) and torch.allclose(styles, measure((images + 1) / 2))


def test_datamodule_without_styles_gives_pairs(data_dir: Path) -> None:
    data = MNISTDataModule("mnist", data_dir)
    data.setup()
    assert len(next(iter(data.train_dataloader()))) == 2 and data.style_stats is None


def test_normalised_training_styles_have_zero_mean_and_unit_deviation(mnist_data: MNISTDataModule) -> None:
    normalised = mnist_data.style_stats.normalize(mnist_data.splits()[0].styles)
    assert torch.allclose(normalised.double().mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(normalised.double().std(0), torch.ones(2, dtype=torch.float64), atol=1e-4)
    assert normalised.new_tensor([math.nan, 1.0]).isnan().tolist() == [True, False]


def test_named_levels_are_percentiles_and_upright_is_zero(mnist_data: MNISTDataModule) -> None:
    stats = mnist_data.style_stats
    thick = stats.attributes["thickness"].percentiles
    assert stats.value("thickness", "bold") == stats.value("thickness", "high") == thick[90]
    assert stats.value("thickness", "thin") == stats.value("thickness", "LOW") == thick[10]
    assert stats.value("thickness", "regular") == thick[50]
    assert stats.value("slant", "left") == stats.attributes["slant"].percentiles[10]
    assert stats.value("slant", "upright") == 0.0
    assert stats.value("slant", -15) == stats.value("slant", "-15") == -15.0


@pytest.mark.parametrize(
    ("name", "request_", "message"),
    [("thickness", "huge", "thickness='huge' is not a style value: use a number of pixels in"),
     ("slant", 200, "slant=200 is outside what the model was trained on"),
     ("slant", math.nan, "is not a style value"), ("slant", True, "is not a style value"),
     ("thickness", -1, "outside what the model was trained on"),
     ("colour", 1, "unknown style attribute 'colour': use one of slant, thickness")],
)  # fmt: skip
def test_bad_style_values_are_refused_naming_what_works(
    mnist_data: MNISTDataModule, name: str, request_: object, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        mnist_data.style_stats.request(3, **{name: request_})
    assert "\n" not in str(info.value)
    if name != "colour":
        assert "bold" in str(info.value) or "left" in str(info.value)  # names the levels


def test_requests_leave_unasked_attributes_as_nan(mnist_data: MNISTDataModule) -> None:
    raw = mnist_data.style_stats.request(4, slant=12)
    assert raw.shape == (4, 2) and raw[:, 0].tolist() == [12.0] * 4 and raw[:, 1].isnan().all()


def test_stats_survive_a_round_trip_through_plain_containers(mnist_data: MNISTDataModule) -> None:
    stats = mnist_data.style_stats
    assert StyleStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


def test_uniform_requests_cover_the_middle_of_each_distribution(mnist_data: MNISTDataModule) -> None:
    stats = mnist_data.style_stats
    requests = uniform_requests(stats, 2000, seed=3)
    assert torch.equal(requests, uniform_requests(stats, 2000, seed=3))
    for i, name in enumerate(STYLE_NAMES):
        low, high = stats.attributes[name].percentiles[10], stats.attributes[name].percentiles[90]
        column = requests[:, i]
        assert low <= column.min() and column.max() <= high
        assert column.quantile(0.05) < low + 0.1 * (high - low) and column.quantile(0.95) > high - 0.1 * (high - low)
    assert abs(torch.corrcoef(requests.T)[0, 1].item()) < 0.1  # independent


def test_class_requests_stay_within_each_class_s_own_range() -> None:
    # Class 0 is upright and thin, class 1 slanted and bold: a class-independent range would mix them.
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(1000, 2, generator=generator)
    values = noise + torch.tensor([[0.0, 1.0]] * 500 + [[20.0, 4.0]] * 500)
    value_labels = torch.arange(2).repeat_interleave(500)
    labels = torch.tensor([1, 0] * 300)
    requests = class_requests(values, value_labels, labels, seed=3)
    assert torch.equal(requests, class_requests(values, value_labels, labels, seed=3))
    for index in (0, 1):
        own, asked = values[value_labels == index], requests[labels == index]
        low, high = own.quantile(0.1, dim=0), own.quantile(0.9, dim=0)
        assert (asked >= low - 1e-4).all() and (asked <= high + 1e-4).all(), index
        assert (asked.max(0).values - asked.min(0).values > 0.7 * (high - low)).all(), "the whole range is asked for"


def test_control_metrics_score_agreement() -> None:
    asked = torch.stack([torch.linspace(-20, 20, 50), torch.linspace(2, 4, 50)], dim=-1)
    perfect = control_metrics(asked, asked)
    assert perfect["style/slant_correlation"] == pytest.approx(1.0) and perfect["style/thickness_mae"] == 0.0
    shifted = control_metrics(asked, asked + torch.tensor([5.0, 0.0]))
    assert shifted["style/slant_bias"] == pytest.approx(5.0) and shifted["style/slant_correlation"] == pytest.approx(1)
    noise = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    assert control_metrics(asked, noise)["style/slant_correlation"] < 0.5


# --------------------------------------------------------------------------- the styled U-Net and module


def _spread(module: torch.nn.Module) -> torch.nn.Module:
    """Random non-zero weights everywhere (the U-Net's output layer starts at zero)."""
    torch.manual_seed(0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return module


@pytest.fixture
def styled_unet() -> ConditionalUNet:
    return _spread(ConditionalUNet(down_chs=(8, 16), num_classes=10, num_styles=2)).eval()


def test_styled_unet_takes_any_subset_of_styles(styled_unet: ConditionalUNet) -> None:
    x, t, labels = torch.randn(3, 1, 28, 28), torch.tensor([10, 500, 900]), torch.tensor([1, 7, 10])
    styles = torch.tensor([[0.5, -1.0], [math.nan, 2.0], [math.nan, math.nan]])
    out = styled_unet(x, t, labels, styles)
    assert out.shape == x.shape and out.isfinite().all()
    none = styled_unet(x, t, labels)
    assert torch.equal(none, styled_unet(x, t, labels, torch.full((3, 2), math.nan)))  # None = nothing given
    assert torch.equal(out[2], none[2])
    other = styled_unet(x, t, labels, styles + torch.tensor([1.0, 0.0]))
    assert not torch.allclose(other[0], out[0]) and torch.equal(other[1], out[1])  # a NaN value is ignored


def test_unet_refuses_styles_of_the_wrong_shape_or_on_an_unstyled_model(styled_unet: ConditionalUNet) -> None:
    x, t, labels = torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.tensor([3, 4])
    with pytest.raises(ValueError, match=r"styles must be \[2, 2\], got \[2, 3\]"):
        styled_unet(x, t, labels, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="trained without style conditions"):
        ConditionalUNet(down_chs=(8, 16))(x, t, labels, torch.zeros(2, 2))


def test_config_switch_builds_a_styled_model_and_data(compose_train) -> None:
    plain = compose_train()
    assert plain.model.unet.num_styles == 0 and plain.data.styles is False
    cfg = compose_train("model=base", "model.style_conditioning=true")
    assert cfg.model.unet.num_styles == 2 and cfg.data.styles is True


@pytest.mark.parametrize(
    ("override", "message"),
    [("model.style_conditioning=yes", "model.style_conditioning must be true or false, got 'yes'"),
     ("model.style_drop_prob=1.5", "model.style_drop_prob must be a number in [0, 1), got 1.5")],
)  # fmt: skip
def test_bad_style_settings_are_refused_naming_the_key(compose_train, override: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_config(compose_train("model.style_conditioning=true", override), "train")


def test_module_refuses_a_unet_without_style_inputs() -> None:
    with pytest.raises(
        ValueError, match=re.escape("model.unet.num_styles is 0 but model.style_conditioning=True needs 2")
    ):
        DiffusionModule(
            ConditionalUNet(down_chs=(8, 16)), EpsilonObjective(cosine(50)), torch.optim.AdamW, style_conditioning=True
        )


@pytest.fixture
def styled_module(mnist_data: MNISTDataModule) -> DiffusionModule:
    module = DiffusionModule(
        ConditionalUNet(down_chs=(8, 16), num_styles=2), EpsilonObjective(cosine(100)),
        functools.partial(torch.optim.AdamW, lr=1e-3), style_conditioning=True, cond_drop_prob=0.2, style_drop_prob=0.3,
    )  # fmt: skip
    _spread(module.unet)
    module.style_stats = mnist_data.style_stats
    module.run_config = {"data": {"name": "mnist"}}
    return module


def test_training_drops_styles_with_the_label_and_each_alone(styled_module: DiffusionModule) -> None:
    seen: list[tuple[Tensor, Tensor]] = []
    forward = styled_module.unet.forward

    def spy(x: Tensor, t: Tensor, labels: Tensor, styles: Tensor | None) -> Tensor:
        seen.append((labels, styles))
        return forward(x, t, labels, styles)

    styled_module.unet.forward = spy
    styled_module.log = lambda *args, **kwargs: None
    n = 4000
    raw = torch.stack([torch.linspace(-20, 30, n), torch.linspace(2, 4, n)], dim=-1)
    styled_module.training_step((torch.zeros(n, 1, 8, 8), torch.full((n,), 3), raw), 0)
    labels, styles = seen[0]
    dropped = labels == 10
    assert 0.17 < dropped.float().mean() < 0.23
    assert styles[dropped].isnan().all()
    kept = styles[~dropped]
    alone = kept.isnan().float().mean(0)
    assert ((alone > 0.26) & (alone < 0.34)).all()  # each attribute is also dropped on its own (style_drop_prob)
    given = kept.isfinite()
    expected = styled_module.style_stats.normalize(raw)[~dropped]
    assert torch.allclose(kept[given], expected[given])


def test_validation_conditions_on_every_style(styled_module: DiffusionModule) -> None:
    seen: list[Tensor] = []
    forward = styled_module.unet.forward
    styled_module.unet.forward = lambda x, t, labels, styles: seen.append(styles) or forward(x, t, labels, styles)
    styled_module.log = lambda *args, **kwargs: None
    raw = torch.tensor([[5.0, 3.0], [-10.0, 2.0]])
    styled_module.validation_step((torch.zeros(2, 1, 28, 28), torch.tensor([1, 2]), raw), 0)
    assert torch.allclose(seen[0], styled_module.style_stats.normalize(raw))


def test_a_styled_module_refuses_batches_without_styles(styled_module: DiffusionModule) -> None:
    with pytest.raises(ValueError, match=re.escape("needs batches with styles: set data.styles=true")):
        styled_module.training_step((torch.zeros(2, 1, 8, 8), torch.tensor([1, 2])), 0)


def test_guidance_drops_the_styles_with_the_label(styled_unet: ConditionalUNet) -> None:
    seen: list[tuple[Tensor, Tensor]] = []
    forward = styled_unet.forward
    styled_unet.forward = lambda x, t, labels, styles: seen.append((labels, styles)) or forward(x, t, labels, styles)
    styles = torch.tensor([[0.5, -1.0], [1.0, math.nan]])
    guided_output(styled_unet, torch.randn(2, 1, 28, 28), torch.tensor([5, 5]), torch.tensor([2, 3]), 2.0, styles)
    labels, both = seen[0]
    assert labels.tolist() == [2, 3, 10, 10]
    assert torch.equal(both[:2].nan_to_num(7), styles.nan_to_num(7)) and both[2:].isnan().all()


# --------------------------------------------------------------------------- sampling with styles


def test_generate_takes_levels_numbers_or_per_image_values(styled_module: DiffusionModule) -> None:
    model = ClassConditionalPipeline(styled_module)
    kwargs = {"steps": 4, "seed": 1, "precision": "32"}
    named = generate(model, [7, 7], style={"slant": -15, "thickness": "bold"}, **kwargs)
    raw = model.style_stats.request(2, slant=-15, thickness="bold")
    assert torch.equal(named, generate(model, [7, 7], style=raw, **kwargs))
    assert not torch.equal(named, generate(model, [7, 7], **kwargs))
    assert not torch.equal(named, generate(model, [7, 7], style={"slant": 25, "thickness": "bold"}, **kwargs))
    with pytest.raises(ValueError, match=r"styles must be \[2, 2\]"):
        generate(model, [7, 7], style=raw[:1], **kwargs)


def test_generate_with_a_style_on_an_unstyled_model_names_the_fix() -> None:
    model = ClassConditionalPipeline(
        DiffusionModule(ConditionalUNet(down_chs=(8, 16)), EpsilonObjective(cosine(50)), torch.optim.AdamW)
    )
    with pytest.raises(
        ValueError, match=re.escape("trained without style conditions: train one with model.style_conditioning")
    ):
        generate(model, [1], style={"slant": 10}, steps=2)


def test_sample_cli_draws_the_asked_style(
    make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = make_checkpoint("model.style_conditioning=true")
    out = tmp_path / "sevens"
    main_in_process(monkeypatch, "sample", f"ckpt={ckpt}", "label=7", "slant=-15", "thickness=high", "num_samples=3",
                    "steps=4", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    bold = load_model(ckpt).style_stats.attributes["thickness"].percentiles[90]
    with np.load(out.with_suffix(".npz")) as data:
        assert data["images"].shape == (3, 28, 28) and data["labels"].tolist() == [7, 7, 7]
        assert np.allclose(data["styles"], [[-15.0, bold]] * 3)
    main_in_process(monkeypatch, "sample", f"ckpt={ckpt}", "label=7", "num_samples=3", "steps=4",
                    f"output={tmp_path / 'plain'}", f"hydra.run.dir={tmp_path / 'run2'}")  # fmt: skip
    with np.load(tmp_path / "plain.npz") as plain:
        assert "styles" not in plain


@pytest.mark.parametrize(
    ("styled", "override", "message"),
    [(True, "thickness=huge", "thickness='huge' is not a style value: use a number of pixels in"),
     (True, "slant=95", "slant=95 is outside what the model was trained on"),
     (True, "slant=sideways", "slant='sideways' is not a style value"),
     (False, "slant=10", "this checkpoint was trained without style conditions")],
)  # fmt: skip
def test_sample_cli_refuses_a_bad_style_in_one_line_and_writes_nothing(
    make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, styled: bool,
    override: str, message: str,
) -> None:  # fmt: skip
    ckpt = make_checkpoint(*(["model.style_conditioning=true"] if styled else []))
    out = tmp_path / "out" / "samples"
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, "sample", f"ckpt={ckpt}", "label=7", override, f"output={out}",
                     f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert exit_info.value.code == 1
    assert message in one_error_line(capsys.readouterr().err)
    assert not out.parent.exists()


# --------------------------------------------------------------------------- a styled training run


@pytest.mark.slow
@pytest.mark.usefixtures("mnist_classifier")
def test_styled_training_run_records_the_style_distribution_and_samples_with_styles(
    compose_train, mnist_data: MNISTDataModule, tmp_path: Path
) -> None:
    cfg = compose_train("experiment=smoke", "logger=none", "model.style_conditioning=true")
    train(cfg)
    model = load_model(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert model.model.style_conditioning and model.style_stats == mnist_data.style_stats
    images = generate(model, [3, 3], style={"slant": "right", "thickness": 3.0}, steps=3)
    assert images.shape == (2, 1, 28, 28)
