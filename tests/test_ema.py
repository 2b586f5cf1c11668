"""FusedEMA averages exactly as Lightning's EMAWeightAveraging does, and resumes from its checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from torch import nn

from diffusion_lab.training.ema import FusedEMA


class Regression(L.LightningModule):
    """A tiny model with a buffer, trained on fixed random data."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        gen = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(64, 4, generator=gen), torch.randn(64, 1, generator=gen))
        return torch.utils.data.DataLoader(data, batch_size=8)


def fit(callbacks: list[L.Callback], tmp_path: Path, max_steps: int, ckpt_path: Path | None = None) -> L.Trainer:
    torch.manual_seed(0)
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    trainer = L.Trainer(
        max_steps=max_steps, callbacks=callbacks, default_root_dir=tmp_path, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=checkpointing,
    )  # fmt: skip
    trainer.fit(Regression(), ckpt_path=ckpt_path)
    return trainer


def averaged_state(callback: EMAWeightAveraging) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in callback._average_model.module.state_dict().items()}


@pytest.mark.parametrize(
    "settings",
    [
        {"decay": 0.9, "update_starting_at_step": 3},
        {"decay": 0.8, "update_every_n_steps": 3},
        {"decay": 0.7, "update_every_n_steps": 0, "update_starting_at_epoch": 1},  # once an epoch, from the second
    ],
)
def test_fused_ema_matches_lightnings_ema(tmp_path: Path, settings: dict[str, float]) -> None:
    fused, reference = FusedEMA(**settings), EMAWeightAveraging(**settings)
    fit([fused], tmp_path / "fused", max_steps=24)  # three epochs of 8 batches
    fit([reference], tmp_path / "reference", max_steps=24)
    got, expected = averaged_state(fused), averaged_state(reference)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if value.is_floating_point():
            torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-7, msg=key)
        else:  # integer buffers (BatchNorm's batch count) are averaged as Lightning averages them
            assert torch.equal(got[key], value), key
    raw = Regression()
    assert any(not torch.equal(got[k], v) for k, v in raw.state_dict().items()), "the average moved"
    assert fused._latest_update_step == reference._latest_update_step
    assert fused._average_model.n_averaged == reference._average_model.n_averaged > 1


@pytest.mark.parametrize("written_by", [EMAWeightAveraging, FusedEMA])
def test_fused_ema_resumes_a_checkpoint(tmp_path: Path, written_by: type[EMAWeightAveraging]) -> None:
    """A run checkpointed mid-way with either callback continues under FusedEMA as if never stopped."""
    whole = written_by(decay=0.9)
    every_epoch = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=8, save_top_k=-1)  # 8 batches an epoch
    fit([whole, every_epoch], tmp_path, max_steps=16)
    path = tmp_path / "ckpt" / "epoch=0-step=8.ckpt"
    assert torch.load(path, weights_only=True)["callbacks"]["EMAWeightAveraging"] == {"latest_update_step": 8}

    resumed = FusedEMA(decay=0.9)
    fit([resumed], tmp_path / "resumed", max_steps=16, ckpt_path=path)
    assert resumed._latest_update_step == 16
    got = averaged_state(resumed)
    for key, value in averaged_state(whole).items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)
