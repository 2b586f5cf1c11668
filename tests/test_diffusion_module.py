"""The LightningModule's losses: label dropping for guidance and a repeatable validation loss."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from diffusion_lab.diffusion_module import DiffusionModule
from diffusion_lab.schedules import cosine
from diffusion_lab.unet import ConditionalUNet


def make_module(**kwargs: object) -> DiffusionModule:
    torch.manual_seed(0)
    unet = ConditionalUNet(down_chs=(8, 16), num_classes=10)
    return DiffusionModule(unet, cosine(100), functools.partial(torch.optim.AdamW, lr=1e-3), **kwargs)


def test_validation_loss_is_repeatable() -> None:
    module = make_module()
    data = TensorDataset(torch.rand(64, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (64,)))
    loader = DataLoader(data, batch_size=16)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    first = trainer.validate(module, loader, verbose=False)[0]["val/loss"]
    torch.manual_seed(123)  # the global RNG must not matter
    second = trainer.validate(module, loader, verbose=False)[0]["val/loss"]
    assert first == second
    assert 0.5 < first < 2.0, "an untrained network predicts ~0, so the loss is ~E[eps^2] = 1"


def test_labels_are_dropped_to_the_null_class_at_the_configured_rate() -> None:
    module = make_module(cond_drop_prob=0.25)
    seen: list[torch.Tensor] = []
    forward = module.unet.forward

    def spy(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        seen.append(labels)
        return forward(x, t, labels)

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
