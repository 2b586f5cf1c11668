"""Noise schedules and the forward process."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from diffusion_lab.diffusion import schedules

FACTORIES = {"linear": schedules.linear, "quadratic": schedules.quadratic, "cosine": schedules.cosine}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("timesteps", [50, 100, 300, 1000, 4000])
def test_alpha_bar_decreases_to_near_zero(name: str, timesteps: int) -> None:
    s = FACTORIES[name](timesteps)
    ab = s.alphas_cumprod.double()
    assert s.timesteps == timesteps
    assert bool((ab[1:] < ab[:-1]).all())
    assert 0.99 < ab[0] < 1.0
    assert ab[-1] < schedules.ALPHA_BAR_T_WARN
    assert bool(((s.betas > 0) & (s.betas < 1)).all())


def test_linear_endpoints_scale_with_timesteps() -> None:
    s = schedules.linear(1000)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    s = schedules.linear(250)
    assert s.betas[0].item() == pytest.approx(4e-4) and s.betas[-1].item() == pytest.approx(0.08)


def test_quadratic_formula() -> None:
    s = schedules.quadratic(1000, beta_start=1e-4, beta_end=0.02)
    expected = torch.linspace(math.sqrt(1e-4), math.sqrt(0.02), 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(s.betas, expected.float())


def test_cosine_matches_closed_form() -> None:
    s = schedules.cosine(1000)
    t = torch.tensor([100, 500, 900])
    f = lambda u: math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = torch.tensor([f(int(u) + 1) / f(0) for u in t])
    torch.testing.assert_close(s.alphas_cumprod[t], expected, rtol=1e-4, atol=1e-6)


def test_warns_when_schedule_keeps_signal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="diffusion_lab.diffusion.schedules"):
        schedules.linear(300, scale_to_timesteps=False)
    assert "alpha_bar_T=0.0481" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffusion_lab.diffusion.schedules"):
        schedules.linear(300)
    assert caplog.text == ""


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_bad_timesteps_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r"diffusion.timesteps must be a positive integer"):
        schedules.cosine(bad)  # type: ignore[arg-type]


def test_betas_above_one_refused() -> None:
    with pytest.raises(ValueError, match="every beta must lie in"):
        schedules.linear(10)


def test_q_sample_statistics() -> None:
    s = schedules.linear(1000)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((20_000, 1, 2, 2), 0.5)
    for t_idx in (0, 250, 999):
        t = torch.full((len(x0),), t_idx)
        xt = s.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
        ab = s.alphas_cumprod[t_idx].item()
        assert xt.mean().item() == pytest.approx(0.5 * math.sqrt(ab), abs=0.01)
        assert xt.var().item() == pytest.approx(1 - ab, abs=0.01 + 0.02 * (1 - ab))
