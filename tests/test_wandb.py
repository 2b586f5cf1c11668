"""``logger=wandb``: offline runs under the run directory, with config, history, images and tables."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

#: Their runs and evaluations score samples with the reference classifiers, trained once up front.
pytestmark = pytest.mark.usefixtures("reference_classifiers")

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

#: The offline run file is a LevelDB-style log: 32 KiB blocks of records (crc32, length, type) after a 7-byte header.
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    """Every protobuf ``Record`` of an offline ``run-*.wandb`` file."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending + chunk)
            records.append(record)
            pending = b""
        elif kind in (FIRST, MIDDLE):
            pending += chunk
    return records


def key(item: object) -> str:
    """A config or history item's key (wandb writes ``nested_key`` parts in place of ``key``)."""
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow
@pytest.mark.parametrize("ddp", [False, True], ids=["one_process", "ddp_two_cpu_processes"])
def test_offline_sweep_runs_share_a_group_and_hold_config_history_images_and_tables(ddp: bool, tmp_path: Path) -> None:
    """One wandb run per job, also when each job trains on two DDP processes (rank 0 logs)."""
    sweep_dir = tmp_path / "multirun"
    trainer = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"] if ddp else []
    cmd = [sys.executable, "-m", "diffusion_lab.cli.train", "-m", "experiment=smoke", "logger=wandb",
           "schedule=linear,cosine", *trainer, f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, schedule in (("0", "linear"), ("1", "cosine")):
        runs = list((sweep_dir / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, "offline by default, under the run directory"
        records = read_records(next(runs[0].glob("run-*.wandb")))
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert run.run_group == "sweep-multirun" and list(run.tags) == ["mnist", "small", schedule]
        ddp_name = "trainer.accelerator=cpu,trainer.devices=2,trainer=ddp," if ddp else ""
        assert run.display_name == f"experiment=smoke,logger=wandb,schedule={schedule},{ddp_name}".rstrip(",")
        config = {key(item) for r in records if r.WhichOneof("record_type") == "config" for item in r.config.update}
        assert {"data", "model", "schedule", "trainer"} <= config
        history = {key(item) for r in records if r.WhichOneof("record_type") == "history" for item in r.history.item}
        assert {"train/loss", "val/loss", "eval/classifier_accuracy", "eval/fid"} <= history
        media = runs[0] / "files" / "media"
        assert list((media / "images" / "samples").glob("grid_*.png")), "sample grids as images"
        assert list((media / "table" / "eval").glob("per_class_*.table.json")), "per-class metric table"
