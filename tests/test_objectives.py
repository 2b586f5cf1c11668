"""Objectives: training targets and conversions against their definitions and against diffusers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EDMEulerScheduler, FlowMatchEulerDiscreteScheduler

from diffusion_lab.diffusion.objectives import EDMObjective, EpsilonObjective, FlowObjective, VObjective
from diffusion_lab.diffusion.schedules import cosine
from diffusion_lab.models.checkpoints import CONFIG_KEY
from diffusion_lab.models.diffusion_module import DiffusionModule
from tests.helpers import main_in_process
from tests.toy_models import toy_objectives

SCHEDULE = cosine(1000)
OBJECTIVE_CLASSES = toy_objectives()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(6, 1, 8, 8, generator=generator) * 2 - 1, torch.randn(6, 1, 8, 8, generator=generator)


def _scale(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def test_epsilon_training_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x0, noise = batch
    objective = EpsilonObjective(SCHEDULE)
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    ab = _scale(SCHEDULE.alphas_cumprod[t])
    b = objective.training_batch(x0, t, noise)
    torch.testing.assert_close(b.x_in, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    torch.testing.assert_close(b.x_in, SCHEDULE.q_sample(x0, t, noise), rtol=0, atol=0)  # the one forward process
    torch.testing.assert_close(b.target, noise)
    torch.testing.assert_close(b.snr, (ab / (1 - ab)).flatten())


def test_v_training_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x0, noise = batch
    objective = VObjective(SCHEDULE)
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    ab = _scale(SCHEDULE.alphas_cumprod[t])
    b = objective.training_batch(x0, t, noise)
    torch.testing.assert_close(b.x_in, SCHEDULE.q_sample(x0, t, noise), rtol=0, atol=0)
    torch.testing.assert_close(b.target, ab.sqrt() * noise - (1 - ab).sqrt() * x0)


def test_flow_training_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x0, noise = batch
    objective = FlowObjective()
    t = torch.tensor([0.01, 0.2, 0.4, 0.5, 0.8, 0.99])
    b = objective.training_batch(x0, t, noise)
    torch.testing.assert_close(b.x_in, (1 - _scale(t)) * x0 + _scale(t) * noise)
    torch.testing.assert_close(b.target, noise - x0)
    torch.testing.assert_close(b.time, 1000 * t)
    torch.testing.assert_close(objective.sigma(b.time), t / (1 - t))


def test_edm_preconditioning_and_target(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x0, noise = batch
    objective = EDMObjective()
    sigma = torch.tensor([0.002, 0.05, 0.5, 1.0, 10.0, 80.0])
    b = objective.training_batch(x0, sigma, noise)
    sd = 0.5
    x = x0 + _scale(sigma) * noise
    c_skip = sd**2 / (_scale(sigma) ** 2 + sd**2)
    c_out = _scale(sigma) * sd / (_scale(sigma) ** 2 + sd**2).sqrt()
    torch.testing.assert_close(b.x_in, x / (_scale(sigma) ** 2 + sd**2).sqrt())
    torch.testing.assert_close(b.target, (x0 - c_skip * x) / c_out)
    timestep = 0.25 * sigma.log()  # c_noise, the timestep diffusers' EDM schedulers pass
    torch.testing.assert_close(objective.sigma(timestep), sigma)
    torch.testing.assert_close(objective.network_time(timestep), b.time, atol=1e-3, rtol=1e-5)
    low, high = math.log(0.002), math.log(80.0)
    torch.testing.assert_close(b.time, 1000 * (sigma.log() - low) / (high - low))


@pytest.mark.parametrize("objective", [EpsilonObjective(SCHEDULE), VObjective(SCHEDULE)], ids=["eps", "v"])
def test_the_target_is_the_output_the_fitted_ddim_expects(objective: EpsilonObjective, batch: tuple) -> None:
    """DDIM fitted to the objective takes the training target at the training input for x_0 (its
    ``pred_original_sample``), and gives the network the time it was trained with."""
    x0, noise = batch
    scheduler = DDIMScheduler(**objective.scheduler_config(DDIMScheduler), clip_sample=False)
    scheduler.set_timesteps(50)
    for t in scheduler.timesteps[[0, 10, 25, 49]]:
        b = objective.training_batch(x0, t.repeat(len(x0)), noise)
        torch.testing.assert_close(objective.network_time(t.repeat(len(x0))), b.time.float())
        predicted = scheduler.step(b.target, t, b.x_in).pred_original_sample
        torch.testing.assert_close(predicted, x0, atol=2e-3, rtol=1e-3)


def test_the_flow_target_is_the_velocity_flow_match_euler_steps_with(batch: tuple) -> None:
    """FlowMatchEuler fitted to the objective steps from a training input with its target to sigma = 0: x_0."""
    x0, noise = batch
    objective = FlowObjective()
    scheduler = FlowMatchEulerDiscreteScheduler(**objective.scheduler_config(FlowMatchEulerDiscreteScheduler))
    for t in (0.3, 0.6, 0.9):
        scheduler.set_timesteps(sigmas=[t])
        timestep = scheduler.timesteps[0]
        b = objective.training_batch(x0, torch.full((len(x0),), t), noise)
        torch.testing.assert_close(objective.network_time(timestep.repeat(len(x0))), b.time)
        torch.testing.assert_close(scheduler.step(b.target, timestep, b.x_in).prev_sample, x0, atol=1e-5, rtol=1e-5)


def test_the_edm_target_is_the_output_diffusers_preconditions(batch: tuple) -> None:
    """EDMEuler fitted to the objective scales the noisy image to the training input, and its preconditioned
    output of the training target is x_0."""
    x0, noise = batch
    objective = EDMObjective()
    scheduler = EDMEulerScheduler(**objective.scheduler_config(EDMEulerScheduler))
    for sigma in (0.01, 0.7, 20.0):
        s = torch.tensor(sigma)
        b = objective.training_batch(x0, s.repeat(len(x0)), noise)
        x = x0 + s * noise
        torch.testing.assert_close(scheduler.precondition_inputs(x, s), b.x_in)
        timestep = scheduler.precondition_noise(s).reshape(1).repeat(len(x0))
        torch.testing.assert_close(objective.network_time(timestep), b.time, atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(scheduler.precondition_outputs(x, b.target, s), x0, atol=1e-4, rtol=1e-4)


def test_min_snr_weights() -> None:
    snr = torch.tensor([0.1, 1.0, 5.0, 50.0])
    torch.testing.assert_close(EpsilonObjective(SCHEDULE, 5.0).min_snr_weight(snr), snr.clamp(max=5) / snr)
    torch.testing.assert_close(VObjective(SCHEDULE, 5.0).min_snr_weight(snr), snr.clamp(max=5) / (snr + 1))


@pytest.mark.parametrize("cls", [FlowObjective, EDMObjective])
def test_min_snr_refused_where_undefined(cls: type) -> None:
    with pytest.raises(ValueError, match=r"Min-SNR weighting is defined for objective=eps and v, not .*: set "
                                         r"objective.min_snr_gamma=null"):  # fmt: skip
        cls(min_snr_gamma=5.0)


def test_bad_settings_refused() -> None:
    with pytest.raises(ValueError, match=r"objective\.time_distribution must be one of logit_normal, uniform"):
        FlowObjective(time_distribution="normal")
    with pytest.raises(ValueError, match=r"objective\.min_snr_gamma must be a positive number or null"):
        EpsilonObjective(SCHEDULE, min_snr_gamma=0.0)


def test_training_levels_follow_the_config() -> None:
    generator = torch.Generator().manual_seed(0)
    uniform = FlowObjective(time_distribution="uniform").sample_levels(20000, torch.device("cpu"), generator)
    logit = FlowObjective(logit_mean=0.5, logit_std=1.0).sample_levels(20000, torch.device("cpu"), generator)
    assert uniform.min() >= 0 and uniform.max() <= 1 and abs(uniform.mean() - 0.5) < 0.01
    assert abs(torch.logit(logit).mean() - 0.5) < 0.03 and abs(torch.logit(logit).std() - 1.0) < 0.03
    sigmas = EDMObjective(p_mean=-1.2, p_std=1.2).sample_levels(20000, torch.device("cpu"), generator)
    assert abs(sigmas.log().mean() + 1.2) < 0.03 and abs(sigmas.log().std() - 1.2) < 0.03
    steps = EpsilonObjective(SCHEDULE).sample_levels(20000, torch.device("cpu"), generator)
    assert steps.dtype == torch.long and steps.min() >= 0 and steps.max() <= 999


#: Two samplers that fit each objective (their command-line overrides), for the end-to-end runs.
TWO_SAMPLERS = {
    "eps": (["sampler=dpm_solver"], ["sampler=ddim"]),
    "v": (["sampler=unipc"], ["sampler=euler"]),
    "flow": (["sampler=flow_euler"], ["sampler=dpm_solver"]),
    "edm": (["sampler=edm_euler"], ["sampler=diffusers", "sampler.name=EDMDPMSolverMultistepScheduler"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["eps", "v", "flow", "edm"])
def test_each_objective_trains_and_samples_through_the_entry_points(
    objective: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short run of each objective, its checkpoint recording it, then sampling it with two samplers."""
    run_dir = tmp_path / "run"
    main_in_process(
        monkeypatch, "train", "experiment=smoke", f"objective={objective}", "logger=none",
        "~callbacks.sample_quality", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=True)[CONFIG_KEY]["objective"]
    assert stored["_target_"].rpartition(".")[2] == type(OBJECTIVE_CLASSES[objective]).__name__
    assert DiffusionModule.load_checkpoint(ckpt).objective.name == objective
    for k, sampler in enumerate(TWO_SAMPLERS[objective]):
        out = tmp_path / f"samples{k}"
        main_in_process(
            monkeypatch, "sample", f"ckpt={ckpt}", "label=[3,7]", "num_samples=2", "steps=4", *sampler,
            f"output={out}", f"hydra.run.dir={tmp_path / f'sample{k}'}",
        )  # fmt: skip
        images = np.load(f"{out}.npz")["images"]
        assert images.shape == (4, 28, 28) and images.dtype == np.uint8
