"""Samplers: diffusers' schedulers fitted to each objective draw the data distribution, and bad ones are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from diffusion_lab.config import CONF_DIR
from diffusion_lab.diffusion.reverse_process import sample
from diffusion_lab.diffusion.samplers import (
    AUTO_SAMPLERS,
    fitting_samplers,
    make_sampler,
    named_samplers,
    scheduler_classes,
)
from tests.toy_models import MU0, MU_STEP, GaussianDenoiser, S, toy_objectives

OBJECTIVES = toy_objectives()
#: Steps at which each named sampler's discretisation error is below the tolerance of the toy test.
TOY_STEPS = {
    "ddim": 200, "ddpm": 1000, "dpm_solver": 50, "unipc": 50, "euler": 200, "euler_ancestral": 400, "heun": 50,
    "edm_euler": 200, "flow_euler": 200, "dpm_solver_sde": 100,
}  # fmt: skip
#: (objective, named sampler) for every pair that fits.
FITTING = [(o, n) for o, objective in OBJECTIVES.items() for n in fitting_samplers(objective)[0]]


def draw_toy(objective_name: str, sampler: str, steps: int, **options: object) -> tuple[torch.Tensor, torch.Tensor]:
    """400 toy samples of classes 0 and 9 from the exact denoiser, and their labels."""
    objective = OBJECTIVES[objective_name]
    labels = torch.tensor([0, 9]).repeat_interleave(200)
    x = sample(
        GaussianDenoiser(objective), objective, labels, sampler=sampler, steps=steps, image_shape=(1, 8, 8),
        generator=torch.Generator().manual_seed(0), **options,
    )  # fmt: skip
    return x, labels


def test_every_objective_has_its_named_samplers() -> None:
    fits = {o: set(fitting_samplers(objective)[0]) for o, objective in OBJECTIVES.items()}
    vp = {"ddim", "ddpm", "dpm_solver", "dpm_solver_sde", "unipc", "euler", "euler_ancestral", "heun"}
    assert fits["eps"] == fits["v"] == vp
    assert fits["flow"] == {"flow_euler", "dpm_solver", "dpm_solver_sde", "unipc"}
    assert fits["edm"] == {"edm_euler"}
    assert all(AUTO_SAMPLERS[o] in fits[o] for o in OBJECTIVES)


@pytest.mark.parametrize(("objective", "sampler"), FITTING)
def test_named_samplers_draw_the_data_distribution(objective: str, sampler: str) -> None:
    """Driven by the exact denoiser of N(mu_y, s^2), each named sampler draws N(mu_y, s^2)."""
    x, labels = draw_toy(objective, sampler, TOY_STEPS[sampler])
    for label in (0, 9):
        values = x[labels == label]
        assert abs(values.mean().item() - (MU0 + MU_STEP * label)) < 0.01, (objective, sampler, label)
        assert abs(values.std().item() - S) < 0.01, (objective, sampler, label)


@pytest.mark.slow
@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_every_fitting_diffusers_scheduler_samples(objective: str) -> None:
    """Not only the named ones: every diffusers class that fits the objective runs and lands near the data."""
    classes = fitting_samplers(OBJECTIVES[objective])[1]
    assert len(classes) >= (2 if objective == "edm" else 7)
    for name in classes:
        x, labels = draw_toy(objective, name, 1000 if name.startswith("DDPM") else 50)
        for label in (0, 9):
            values = x[labels == label]
            assert abs(values.mean().item() - (MU0 + MU_STEP * label)) < 0.05, (name, label)
            assert abs(values.std().item() - S) < 0.03, (name, label)


@pytest.mark.parametrize("path", sorted((CONF_DIR / "sampler").glob("*.yaml")), ids=lambda p: p.stem)
def test_sampler_configs_name_their_schedulers(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    if path.stem == "auto":
        assert config["_target_"].endswith("auto_sampler")
        return
    assert config["name"] in scheduler_classes()
    if path.stem != "diffusers":  # any class by sampler.name; every other file is a named sampler
        settings = {key: value for key, value in config.items() if not key.startswith("_")}
        assert named_samplers()[path.stem] == settings


def test_a_named_sampler_is_one_file_of_the_sampler_group() -> None:
    assert list(named_samplers()) == [
        "ddim", "ddpm", "dpm_solver", "dpm_solver_sde", "edm_euler", "euler", "euler_ancestral", "flow_euler", "heun",
        "unipc",
    ]  # fmt: skip
    ddim = make_sampler("ddim", OBJECTIVES["eps"])
    assert (ddim.name, ddim.default_steps, ddim.step_options) == (
        "DDIMScheduler", 50, {"eta": 0.0, "use_clipped_model_output": True}
    )  # fmt: skip
    assert ddim.scheduler.config.timestep_spacing == "leading" and ddim.scheduler.config.clip_sample
    sde = make_sampler("dpm_solver_sde", OBJECTIVES["flow"], solver_order=1)  # its options, overridable
    assert sde.scheduler.config.algorithm_type == "sde-dpmsolver++" and sde.scheduler.config.solver_order == 1
    assert make_sampler("DEISMultistepScheduler", OBJECTIVES["eps"]).default_steps == 20


def test_deterministic_samplers_do_not_depend_on_batch_size() -> None:
    objective = OBJECTIVES["eps"]
    net = GaussianDenoiser(objective)
    labels = torch.arange(10).repeat(3)
    noise = torch.randn(30, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    sampler = make_sampler("dpm_solver", objective)
    whole = sample(net, objective, labels, sampler=sampler, steps=10, noise=noise, guidance=1.0)
    parts = torch.cat(
        [sample(net, objective, labels[i : i + 7], sampler=sampler, steps=10, noise=noise[i : i + 7], guidance=1.0)
         for i in range(0, 30, 7)]
    )  # fmt: skip
    assert torch.equal(whole, parts)


def test_a_built_sampler_keeps_its_steps_and_restarts_its_solver() -> None:
    objective = OBJECTIVES["flow"]
    net = GaussianDenoiser(objective)
    labels = torch.arange(4)
    noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    sampler = make_sampler("dpm_solver", objective)
    sampler.reset()
    assert sampler.num_steps == 20  # never set: its default
    sampler.reset(7)
    first = sample(net, objective, labels, sampler=sampler, noise=noise)
    assert sampler.num_steps == 7  # no steps given: the 7 it was set to
    second = sample(net, objective, labels, sampler=sampler, noise=noise)
    # A multistep solver's history from the first run does not leak into the second.
    assert torch.equal(first, second)
    assert torch.equal(first, sample(net, objective, labels, sampler="dpm_solver", steps=7, noise=noise))


def test_a_sampler_that_does_not_fit_is_refused_naming_those_that_do() -> None:
    with pytest.raises(ValueError) as err:
        make_sampler("flow_euler", OBJECTIVES["eps"])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("sampler FlowMatchEulerDiscreteScheduler does not fit objective=eps: use sampler=ddim,")
    assert "DEISMultistepScheduler" in message and "FlowMatch" not in message.partition(": ")[2]
    with pytest.raises(ValueError, match="does not fit objective=edm: use sampler=edm_euler, or"):
        make_sampler("ddim", OBJECTIVES["edm"])
    flow_fits = "does not fit objective=flow: use sampler=dpm_solver, dpm_solver_sde, flow_euler, unipc, or"
    with pytest.raises(ValueError, match=flow_fits):
        make_sampler("EulerDiscreteScheduler", OBJECTIVES["flow"])


def test_bad_names_and_options_are_refused_in_one_line() -> None:
    eps = OBJECTIVES["eps"]
    with pytest.raises(ValueError, match="unknown sampler 'eulr': use auto, one of ddim, ddpm"):
        make_sampler("eulr", eps)
    with pytest.raises(ValueError, match=r"sampler\.etaa is not an option of DDIMScheduler: use one of .*eta"):
        make_sampler("ddim", eps, etaa=1.0)
    with pytest.raises(ValueError, match=r"sampler\.prediction_type is set by the model's objective"):
        make_sampler("ddim", eps, prediction_type="sample")
    with pytest.raises(ValueError, match=r"steps must be an integer in 1\.\.1000, got 1001"):
        make_sampler("ddim", eps).set_timesteps(1001)


def test_ddim_eta_goes_to_its_step() -> None:
    deterministic, _ = draw_toy("eps", "ddim", 20)
    noisy, _ = draw_toy("eps", "ddim", 20, eta=1.0)
    again, _ = draw_toy("eps", "ddim", 20, eta=1.0)
    assert not torch.equal(deterministic, noisy)
    assert torch.equal(noisy, again)
