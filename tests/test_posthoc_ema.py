"""Post-hoc EMA: the tracked averages are power-function EMAs, any other length is synthesised from their snapshots
as closely as a directly tracked EMA, snapshots survive a resume, and ``diffusion-lab-evaluate`` sweeps the length."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file
from torch import nn

from diffusion_lab.models.posthoc_ema import (
    gamma_of,
    read_snapshots,
    save_snapshot,
    snapshot_weights,
    synthesize,
)  # fmt: skip
from diffusion_lab.pipeline import load_model
from diffusion_lab.training.fit import train
from diffusion_lab.training.posthoc_ema import PostHocEMASnapshots
from tests.helpers import main_in_process, one_error_line


class Regression(L.LightningModule):
    """A tiny model whose weights keep moving for hundreds of SGD steps on fixed data (no shuffling, no randomness)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.sin(x.sum(1, keepdim=True))), 8)


class RecordWeights(L.Callback):
    """The weights after every optimizer step, flattened in ``state_dict`` order."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.weights.append(flat(pl_module.state_dict()))


class Crash(L.Callback):
    """Stops the run with an error after ``step``, as a kill after the last checkpoint does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("killed")


KEYS = list(Regression().state_dict())


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[key].detach().flatten() for key in KEYS]).double()


def direct_ema(weights: list[torch.Tensor], sigma_rel: float, step: int) -> torch.Tensor:
    """The power-function EMA of the weights after ``step`` optimizer steps, from its definition: weight s gets
    the profile ``(gamma + 1) tau**gamma / t**(gamma + 1)`` integrated over (s - 1, s]."""
    gamma, s = gamma_of(sigma_rel), torch.arange(1, step + 1, dtype=torch.float64)
    profile = (s / step) ** (gamma + 1) - ((s - 1) / step) ** (gamma + 1)
    return (profile[:, None] * torch.stack(weights[:step])).sum(0)


def fit(callbacks: list[L.Callback], root: Path, max_steps: int, ckpt_path: Path | None = None) -> None:
    torch.manual_seed(0)
    trainer = L.Trainer(
        max_steps=max_steps, callbacks=callbacks, default_root_dir=root, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )  # fmt: skip
    trainer.fit(Regression(), ckpt_path=ckpt_path, weights_only=True)


def snapshot_files(folder: Path) -> dict[tuple[int, float], dict[str, torch.Tensor]]:
    return {(s.step, s.sigma_rel): load_file(s.path) for s in read_snapshots(folder)}


def test_the_synthesised_average_equals_a_directly_tracked_ema_of_the_same_length(tmp_path: Path) -> None:
    snapshots, record = PostHocEMASnapshots(tmp_path / "posthoc", every_n_steps=20), RecordWeights()
    fit([snapshots, record], tmp_path, max_steps=400)
    assert len(record.weights) == 400
    for (step, sigma_rel), state in snapshot_files(tmp_path / "posthoc").items():  # the tracked ones, exactly
        torch.testing.assert_close(flat(state), direct_ema(record.weights, sigma_rel, step), rtol=0, atol=1e-6)
    raw = record.weights[-1]
    for sigma_rel in (0.03, 0.05, 0.07, 0.1, 0.15, 0.2):
        state, ema = synthesize(tmp_path / "posthoc", sigma_rel)
        assert (ema.step, ema.num_snapshots) == (400, 40)
        expected = direct_ema(record.weights, sigma_rel, 400)
        error = float((flat(state) - expected).norm())
        # Within 5 % of the difference to an EMA 20 % longer, which is itself small next to the raw weights'.
        longer = float((direct_ema(record.weights, 1.2 * sigma_rel, 400) - expected).norm())
        assert error < 0.05 * longer < 0.05 * float((expected - raw).norm()), (sigma_rel, error, longer)
        if sigma_rel in snapshots.sigma_rels:  # a tracked length is its own last snapshot
            assert error < 1e-5, sigma_rel


def test_an_earlier_step_uses_only_the_snapshots_up_to_it(tmp_path: Path) -> None:
    fit([PostHocEMASnapshots(tmp_path / "posthoc", every_n_steps=20)], tmp_path, max_steps=100)
    state, ema = synthesize(tmp_path / "posthoc", 0.07, step=75)  # between snapshots: the latest before it
    assert (ema.step, ema.num_snapshots) == (60, 6)
    for snapshot in read_snapshots(tmp_path / "posthoc"):
        if snapshot.step > 60:
            snapshot.path.unlink()
    alone, _ = synthesize(tmp_path / "posthoc", 0.07)
    for name, value in alone.items():
        assert torch.equal(state[name], value), name


def test_weights_that_never_changed_come_back_unchanged_at_any_length(tmp_path: Path) -> None:
    weights = {"w": torch.randn(3, 4, generator=torch.Generator().manual_seed(0))}
    for step in (10, 20, 30):
        for sigma_rel in (0.05, 0.1):
            save_snapshot(tmp_path, step, sigma_rel, weights)
    for sigma_rel in (0.01, 0.07, 0.25):
        state, _ = synthesize(tmp_path, sigma_rel)
        torch.testing.assert_close(state["w"], weights["w"], rtol=0, atol=1e-6)
    coefficients = snapshot_weights(read_snapshots(tmp_path), 0.1, 30)
    assert coefficients.sum().item() == pytest.approx(1) and coefficients.argmax().item() == 5


def test_snapshots_are_written_at_the_asked_interval_and_at_the_end(tmp_path: Path) -> None:
    fit([PostHocEMASnapshots(tmp_path / "posthoc", sigma_rels=[0.05, 0.1, 0.2], every_n_steps=10)], tmp_path, 25)
    files = sorted(path.name for path in (tmp_path / "posthoc").iterdir())
    assert {(s.step, s.sigma_rel) for s in read_snapshots(tmp_path / "posthoc")} == {
        (step, sigma_rel) for step in (10, 20, 25) for sigma_rel in (0.05, 0.1, 0.2)
    }
    assert files[0] == "step00000010-sigma_rel0.05.safetensors" and len(files) == 9, "no temporary files are left"


def test_a_resumed_run_writes_the_same_snapshots_as_an_uninterrupted_one(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    fit([PostHocEMASnapshots(whole / "posthoc", every_n_steps=10)], whole, max_steps=40)

    run = tmp_path / "run"
    every_epoch = ModelCheckpoint(run / "ckpt", every_n_train_steps=8, save_top_k=-1)  # 8 batches an epoch
    with pytest.raises(RuntimeError, match="killed"):  # killed at step 20, after the snapshot, before a checkpoint
        fit([PostHocEMASnapshots(run / "posthoc", every_n_steps=10), every_epoch, Crash(20)], run, max_steps=40)
    assert {s.step for s in read_snapshots(run / "posthoc")} == {10, 20}
    save_snapshot(run / "posthoc", 35, 0.05, load_file(run / "posthoc" / "step00000020-sigma_rel0.05.safetensors"))
    last = run / "ckpt" / "epoch=1-step=16.ckpt"
    state = torch.load(last, weights_only=True)["callbacks"]["PostHocEMASnapshots"]
    assert state["step"] == 16 and state["sigma_rels"] == [0.05, 0.1]

    fit([PostHocEMASnapshots(run / "posthoc", every_n_steps=10)], run, max_steps=40, ckpt_path=last)
    got, expected = snapshot_files(run / "posthoc"), snapshot_files(whole / "posthoc")
    assert got.keys() == expected.keys() == {(step, s) for step in (10, 20, 30, 40) for s in (0.05, 0.1)}
    for key, tensors in expected.items():
        for name, value in tensors.items():
            torch.testing.assert_close(got[key][name], value, rtol=1e-6, atol=1e-7, msg=str((key, name)))

    with pytest.raises(ValueError, match=r"resume with callbacks.posthoc_ema.sigma_rels=\[0.05,0.1\]"):
        fit([PostHocEMASnapshots(tmp_path / "other", sigma_rels=[0.05, 0.2])], tmp_path / "other", 40, ckpt_path=last)


def test_a_run_resumed_from_a_checkpoint_without_snapshots_keeps_none(tmp_path: Path) -> None:
    fit([ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=8, save_top_k=-1)], tmp_path, max_steps=8)
    with pytest.warns(UserWarning, match="Post-hoc EMA snapshots are off for this run: it resumed at step 8"):
        fit([PostHocEMASnapshots(tmp_path / "posthoc", every_n_steps=2)], tmp_path, 16,
            ckpt_path=tmp_path / "ckpt" / "epoch=0-step=8.ckpt")  # fmt: skip
    assert not (tmp_path / "posthoc").exists()


def test_a_checkpoint_without_snapshots_is_refused_in_one_line(
    make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    ckpt, out = make_checkpoint(), tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, "evaluate", f"ckpt={ckpt}", "ema_length=0.1", "clip=none", f"output={out}",
                        f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert exit_info.value.code == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{ckpt} comes from a run that kept no post-hoc EMA snapshots" in line
    assert "callbacks.posthoc_ema" in line and "ema_length=null" in line
    assert not out.exists()
    with pytest.raises(ValueError, match="is an exported model folder, which keeps one set of weights"):
        load_model(tmp_path, ema_length=0.1)


@pytest.mark.slow
@pytest.mark.usefixtures("mnist_classifier")
def test_evaluate_sweeps_the_ema_length_of_a_trained_run(
    compose_train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    quiet = ("logger=none", "callbacks.sample_grid=null", "callbacks.sample_quality=null")
    small = ("data.batch_size=16", "data.eval_batch_size=50")  # the snapshots do not depend on the batch size
    train(compose_train("experiment=smoke", *quiet, *small, "callbacks.posthoc_ema.every_n_steps=5"))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert {s.step for s in read_snapshots(tmp_path / "checkpoints" / "posthoc_ema")} == {5, 10, 15, 20}
    sweep = tmp_path / "sweep"
    main_in_process(monkeypatch, "evaluate", "-m", f"ckpt={ckpt}", "ema_length=0.05,0.2,null", "num_per_class=2",
                    "steps=2", "inception=false", "clip=none", f"hydra.sweep.dir={sweep}")  # fmt: skip
    jobs = [json.loads((sweep / str(job) / "metrics.json").read_text()) for job in range(3)]
    assert [(m["ema_length"], m["ema_step"]) for m in jobs] == [(0.05, 20), (0.2, 20), (None, None)]
    assert "EMA sigma_rel 0.05 (post-hoc, step 20)" in jobs[0]["settings"] and "post-hoc" not in jobs[2]["settings"]
    assert "EMA sigma_rel 0.2 (post-hoc, step 20)" in (sweep / "1" / "report.md").read_text()
    images = [np.load(sweep / str(job) / "samples.npz")["images"] for job in range(3)]
    assert (images[0] != images[1]).any() and (images[1] != images[2]).any(), "each length samples its own images"
