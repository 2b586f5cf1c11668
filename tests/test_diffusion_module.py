"""The LightningModule's losses: label dropping for guidance and a repeatable validation loss."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from diffusion_lab.diffusion.objectives import EDMObjective, EpsilonObjective, FlowObjective, VObjective
from diffusion_lab.diffusion.schedules import cosine
from diffusion_lab.models.diffusion_module import DiffusionModule
from diffusion_lab.models.lr_schedules import one_cycle
from diffusion_lab.models.unet import ConditionalUNet


def make_module(min_snr_gamma: float | None = None, objective: str = "eps", **kwargs: object) -> DiffusionModule:
    torch.manual_seed(0)
    unet = ConditionalUNet(down_chs=(8, 16), num_classes=10)
    built = {
        "eps": lambda: EpsilonObjective(cosine(100), min_snr_gamma),
        "v": lambda: VObjective(cosine(100), min_snr_gamma),
        "flow": FlowObjective,
        "edm": EDMObjective,
    }[objective]()
    return DiffusionModule(unet, built, functools.partial(torch.optim.AdamW, lr=1e-3), **kwargs)


@pytest.mark.parametrize("objective", ["eps", "v", "flow", "edm"])
def test_validation_loss_is_repeatable(objective: str) -> None:
    module = make_module(objective=objective)
    data = TensorDataset(torch.rand(64, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (64,)))
    loader = DataLoader(data, batch_size=16)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    first = trainer.validate(module, loader, verbose=False)[0]["val/loss"]
    torch.manual_seed(123)  # the global RNG must not matter
    second = trainer.validate(module, loader, verbose=False)[0]["val/loss"]
    assert first == second
    assert 0.1 < first < 4.0, "an untrained network predicts ~0, so the loss is about the target's variance"


def test_labels_are_dropped_to_the_null_class_at_the_configured_rate() -> None:
    module = make_module(cond_drop_prob=0.25)
    seen: list[torch.Tensor] = []
    forward = module.unet.forward

    def spy(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, styles: torch.Tensor | None) -> torch.Tensor:
        seen.append(labels)
        return forward(x, t, labels, styles)

    module.unet.forward = spy
    module.log = lambda *args, **kwargs: None
    batch = (torch.zeros(4000, 1, 8, 8), torch.full((4000,), 3))
    module.training_step(batch, 0)
    labels = seen[0]
    assert set(labels.unique().tolist()) == {3, module.unet.null_class}
    assert (labels == module.unet.null_class).float().mean().item() == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize("prob", [-0.1, 1.0])
def test_bad_cond_drop_prob_refused(prob: float) -> None:
    with pytest.raises(ValueError, match="cond_drop_prob"):
        make_module(cond_drop_prob=prob)


def _onecycle() -> functools.partial:
    return functools.partial(one_cycle, pct_start=0.25, div_factor=10, final_div_factor=100)


class LearningRates(L.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_one_cycle_schedule_spans_the_whole_run_and_steps_every_batch() -> None:
    """A scheduler that takes total_steps gets the run's length from the Trainer: warm-up, peak, annealed end."""
    module = make_module(lr_scheduler=_onecycle())
    loader = DataLoader(TensorDataset(torch.rand(64, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (64,))), batch_size=8)
    lrs = LearningRates()
    trainer = L.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[lrs],
    )  # fmt: skip
    trainer.fit(module, loader)
    assert len(lrs.seen) == 16  # 2 epochs x 8 batches, one scheduler step each
    assert lrs.seen[0] == pytest.approx(1e-4)  # max_lr / div_factor
    assert max(lrs.seen) == pytest.approx(1e-3, rel=0.05) and lrs.seen.index(max(lrs.seen)) in (3, 4)
    assert lrs.seen[-1] < 2e-5 and lrs.seen == sorted(lrs.seen[:4]) + lrs.seen[4:]


def test_one_cycle_schedule_without_a_run_length_is_refused() -> None:
    module = make_module(lr_scheduler=_onecycle())
    loader = DataLoader(TensorDataset(torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)), batch_size=8)
    trainer = L.Trainer(max_epochs=-1, max_steps=-1, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"set trainer\.max_epochs or max_steps"):
        trainer.fit(module, loader)


@pytest.mark.slow
def test_compiled_unet_matches_eager_and_keeps_plain_checkpoint_keys() -> None:
    eager, compiled = make_module(), make_module(compile=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints load in either mode
    x, t, y = torch.randn(4, 1, 28, 28), torch.randint(0, 100, (4,)), torch.randint(0, 11, (4,))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y), eager(x, t, y), rtol=1e-4, atol=1e-5)


def test_min_snr_weighting_scales_each_image_and_leaves_validation_unweighted() -> None:
    module = make_module(min_snr_gamma=5.0)
    x0, labels = torch.rand(6, 1, 28, 28) * 2 - 1, torch.arange(6)
    t, noise = torch.tensor([0, 10, 30, 50, 70, 99]), torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        schedule = module.objective.schedule
        error = (module(schedule.q_sample(x0, t, noise), t, labels) - noise).square().mean(dim=(1, 2, 3))
        snr = schedule.alphas_cumprod[t] / (1 - schedule.alphas_cumprod[t])
        expected = (error * torch.clamp(snr, max=5.0) / snr).mean()
        assert module.diffusion_loss(x0, labels, t, noise, weighted=True) == pytest.approx(float(expected), rel=1e-5)
        assert module.diffusion_loss(x0, labels, t, noise) == pytest.approx(float(error.mean()), rel=1e-5)
    assert snr[0] > 5.0 > snr[-1], "the test spans both sides of gamma"


def test_bad_min_snr_gamma_refused() -> None:
    with pytest.raises(ValueError, match="min_snr_gamma"):
        make_module(min_snr_gamma=0.0)


@pytest.mark.parametrize("total", [7, 20, 1263])
def test_one_cycle_is_torchs_curve_and_holds_its_end_past_the_run(total: int) -> None:
    ours, torchs = (torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-3) for _ in range(2))
    schedule = one_cycle(ours, total)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        torchs, max_lr=2e-3, total_steps=total, pct_start=0.1, cycle_momentum=False, div_factor=25,
        final_div_factor=100,
    )  # fmt: skip
    for step in range(total):
        assert ours.param_groups[0]["lr"] == pytest.approx(torchs.param_groups[0]["lr"], rel=1e-9), step
        for stepper in (ours, torchs, schedule):
            stepper.step()
        if step < total - 1:
            reference.step()
    for _ in range(5):  # a resumed run with a larger max_steps: torch's raises, ours keeps the final lr
        ours.step()
        schedule.step()
        assert ours.param_groups[0]["lr"] == pytest.approx(2e-3 / 2500, rel=1e-9)
