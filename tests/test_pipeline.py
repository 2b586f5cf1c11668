"""The pipeline and the notebook API: load a checkpoint, name classes, generate reproducibly, save PNG + NPZ."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lab.data.sources import dataset_info
from diffusion_lab.models.checkpoints import CONFIG_KEY
from diffusion_lab.pipeline import ClassConditionalPipeline, generate, generate_number, generate_with_seed, load_model
from diffusion_lab.reports.images import save_samples, to_uint8

FASHION = dataset_info("fashion_mnist").class_names
DIGITS = dataset_info("mnist").class_names


@pytest.fixture
def model(make_checkpoint: Callable[..., Path]) -> ClassConditionalPipeline:
    return load_model(make_checkpoint())


def test_class_names_come_from_the_checkpoint(make_checkpoint: Callable[..., Path]) -> None:
    fashion = load_model(make_checkpoint("data=fashion_mnist"))
    assert (fashion.class_names, fashion.dataset, fashion.image_shape) == (FASHION, "fashion_mnist", (1, 28, 28))
    assert load_model(make_checkpoint(name="digits.ckpt")).class_names == DIGITS


@pytest.mark.parametrize(("sampler", "steps"), [("ddim", 10), ("ddpm", None), ("dpm_solver", 8)])
def test_same_seed_same_images_other_seed_other_images(
    model: ClassConditionalPipeline, sampler: str, steps: int | None
) -> None:
    labels = [0, 3, 7]
    a = generate(model, labels, seed=5, sampler=sampler, steps=steps)
    b = generate(model, labels, seed=5, sampler=sampler, steps=steps)
    c = generate(model, labels, seed=6, sampler=sampler, steps=steps)
    assert a.shape == (3, 1, 28, 28) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_a_generator_draws_as_its_seed_and_goes_on_from_where_it_is(model: ClassConditionalPipeline) -> None:
    """diffusers' way to seed: a generator seeded with S gives the images of seed=S, stochastic steps included."""
    generator = torch.Generator().manual_seed(5)
    first = model([0, 3], sampler="ddpm", steps=5, generator=generator)
    assert torch.equal(first, model([0, 3], seed=5, sampler="ddpm", steps=5))
    assert not torch.equal(first, model([0, 3], sampler="ddpm", steps=5, generator=generator))


def test_deterministic_samplers_do_not_depend_on_batch_size(model: ClassConditionalPipeline) -> None:
    labels = list(range(10))
    whole = generate(model, labels, seed=1, steps=10)
    batched = generate(model, labels, seed=1, steps=10, batch_size=3)
    torch.testing.assert_close(whole, batched)


def test_lab_helpers(model: ClassConditionalPipeline) -> None:
    sevens = generate_number(model, 7, n=4, steps=5)
    assert sevens.shape == (4, 1, 28, 28)
    one = generate_with_seed(model, 7, seed=42, steps=5)
    assert torch.equal(one, generate(model, [7], seed=42, steps=5))
    assert torch.equal(one, generate_with_seed(model, "7", seed=42, steps=5))
    assert not torch.equal(one, generate_with_seed(model, 7, seed=43, steps=5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"guidance": float("nan")}, "guidance must be a finite number"), ({"guidance": float("inf")}, "guidance"),
     ({"guidance": -1.0}, "guidance"), ({"steps": 101}, r"steps must be an integer in 1\.\.100"),
     ({"steps": 0}, "steps"),
     ({"sampler": "eulr"}, "unknown sampler 'eulr'"), ({"labels": [12]}, "label 12 is out of range"),
     ({"labels": torch.tensor([10])}, r"labels must lie in 0\.\.9"), ({"labels": []}, "non-empty"),
     ({"precision": "fp16"}, "precision must be one of 32, bf16"),
     ({"batch_size": 0}, "batch_size must be a positive integer")],
)  # fmt: skip
def test_bad_generation_settings_refused(model: ClassConditionalPipeline, kwargs: dict, message: str) -> None:
    kwargs = {"labels": [1], **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(model, **kwargs)


def test_save_samples_writes_grid_and_arrays(tmp_path: Path) -> None:
    images = torch.rand(6, 1, 28, 28)
    labels = torch.tensor([1, 1, 1, 4, 4, 4])
    png, npz = save_samples(images, labels, tmp_path / "out" / "grid.png", nrow=3)
    assert (png.name, npz.name) == ("grid.png", "grid.npz")
    with np.load(npz) as data:
        assert data["images"].dtype == np.uint8 and data["images"].shape == (6, 28, 28)
        assert data["labels"].dtype == np.int64 and data["labels"].tolist() == labels.tolist()
        np.testing.assert_array_equal(data["images"], to_uint8(images))
    assert Image.open(png).size == (3 * 30 + 2, 2 * 30 + 2)
    assert sorted(p.name for p in png.parent.iterdir()) == ["grid.npz", "grid.png"]


def test_to_uint8_scale() -> None:
    images = torch.tensor([0.0, 0.5, 1.0, 1.2]).view(1, 1, 2, 2)
    assert to_uint8(images).tolist() == [[[0, 128], [255, 255]]]


def test_unreadable_checkpoints_refused(tmp_path: Path, make_checkpoint: Callable[..., Path]) -> None:
    with pytest.raises(ValueError, match="checkpoint not found"):
        load_model(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        load_model(junk)
    good = make_checkpoint()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        load_model(truncated)
    other = torch.load(good, weights_only=True)
    other[CONFIG_KEY]["model"]["unet"]["down_chs"] = [8, 16, 32]
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="does not match the model its config describes"):
        load_model(tmp_path / "other.ckpt")
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(ValueError, match="was not written by diffusion-lab-train"):
        load_model(plain)


def test_precision_sets_autocast_and_stays_deterministic(model: ClassConditionalPipeline, monkeypatch) -> None:
    seen: list[bool] = []
    forward = model.model.unet.forward

    def spy(*args: torch.Tensor) -> torch.Tensor:
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(*args)

    monkeypatch.setattr(model.model.unet, "forward", spy)
    full = generate(model, [2, 5], seed=3, steps=4, precision="32")
    assert seen == [False] * 4
    half = generate(model, [2, 5], seed=3, steps=4, precision="bf16")
    assert seen[4:] == [True] * 4
    assert torch.equal(half, generate(model, [2, 5], seed=3, steps=4, precision="bf16"))
    assert (full - half).abs().mean() < 0.05


def test_the_step_callback_sees_every_step_of_every_batch_and_reads_the_latents(
    model: ClassConditionalPipeline,
) -> None:
    seen: list[tuple[int, int, list[int], torch.Tensor]] = []

    def callback(pipe: ClassConditionalPipeline, step: int, timestep: torch.Tensor, tensors: dict) -> dict:
        assert pipe is model
        seen.append((step, int(timestep), tensors["labels"].tolist(), tensors["latents"].clone()))
        return tensors

    images = model([3, 5, 7], seed=2, sampler="ddim", steps=4, batch_size=2, callback_on_step_end=callback,
                   callback_on_step_end_tensor_inputs=["latents", "labels"])  # fmt: skip
    timesteps = [75, 50, 25, 0]
    assert [(s, t, y) for s, t, y, _ in seen] == [
        *((s, t, [3, 5]) for s, t in enumerate(timesteps)),
        *((s, t, [7]) for s, t in enumerate(timesteps)),
    ]
    last = torch.cat([seen[3][3], seen[7][3]])
    assert torch.equal(images, ((last.clamp(-1, 1) + 1) / 2).clamp(0, 1)), "the last latents are the images"
    assert torch.equal(images, generate(model, [3, 5, 7], seed=2, sampler="ddim", steps=4, batch_size=2))

    def flatten(pipe: ClassConditionalPipeline, step: int, timestep: torch.Tensor, tensors: dict) -> dict:
        return {"latents": torch.zeros_like(tensors["latents"])}

    assert torch.equal(generate(model, [3], steps=2, callback_on_step_end=flatten), torch.full((1, 1, 28, 28), 0.5))
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs has 'noise_pred': use latents, labels"):
        generate(model, [3], callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["noise_pred"])


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_the_progress_bar_shows_on_a_terminal_only_and_can_be_silenced(
    model: ClassConditionalPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    generate(model, [1, 2, 3], steps=3, batch_size=2)
    shown = terminal.getvalue()
    assert "sampling 3 images" in shown and "6/6" in shown and "batch 2/2" in shown
    assert re.search(r"\d\d:\d\d<\d\d:\d\d", shown), "elapsed<remaining: the ETA"
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    generate(model, [1, 2, 3], steps=3, batch_size=2)
    assert piped.getvalue() == "", "quiet when stderr is not a terminal"
    monkeypatch.setattr(sys, "stderr", terminal := Terminal())
    model.set_progress_bar_config(disable=True)
    generate(model, [1], steps=3)
    assert terminal.getvalue() == ""
    shown_anywhere = io.StringIO()
    model.set_progress_bar_config(disable=False, file=shown_anywhere)
    generate(model, [1], steps=3)
    assert "sampling 1 image:" in shown_anywhere.getvalue()
