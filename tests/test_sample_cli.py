"""``diffusion-lab-sample``: PNG + NPZ output, reproducible seeds, and one-line refusals of bad input."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_lab import sample


def run_sample(*overrides: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "diffusion_lab.sample", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def main_in_process(monkeypatch: pytest.MonkeyPatch, *overrides: str) -> None:
    monkeypatch.setattr(sys, "argv", ["diffusion-lab-sample", *overrides])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    sample.main()


@pytest.mark.slow
def test_same_seed_gives_bit_identical_files_across_processes(
    make_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    ckpt = make_checkpoint("data=fashion_mnist")
    common = [f"ckpt={ckpt}", "label=trouser", "num_samples=4", "steps=10", f"hydra.run.dir={tmp_path / 'run'}"]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        proc = run_sample(*common, f"seed={seed}", f"output={tmp_path / name}")
        assert proc.returncode == 0, proc.stderr[-2000:]
    a, b, c = (np.load(tmp_path / f"{name}.npz") for name in "abc")
    assert a["images"].shape == (4, 28, 28) and a["images"].dtype == np.uint8
    assert a["labels"].tolist() == [1, 1, 1, 1] and a["labels"].dtype == np.int64
    assert np.array_equal(a["images"], b["images"])
    assert not np.array_equal(a["images"], c["images"])
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert "Wrote" in proc.stderr + proc.stdout


@pytest.mark.parametrize(("sampler", "steps"), [("ddim", "5"), ("ddpm", "null"), ("dpm_solver", "5")])
def test_label_all_gives_every_class_in_rows(
    make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampler: str, steps: str
) -> None:
    out = tmp_path / "all"
    main_in_process(
        monkeypatch, f"ckpt={make_checkpoint()}", "label=all", "num_samples=3", f"sampler={sampler}", f"steps={steps}",
        f"output={out}", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    with np.load(out.with_suffix(".npz")) as data:
        assert data["labels"].tolist() == [d for d in range(10) for _ in range(3)]
        assert data["images"].shape == (30, 28, 28)
    assert Image.open(out.with_suffix(".png")).size == (3 * 30 + 2, 10 * 30 + 2)


def test_label_list_and_default_output(make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    main_in_process(monkeypatch, f"ckpt={make_checkpoint()}", "label=[3,8]", "num_samples=2", "steps=4",
                    f"hydra.run.dir={run_dir}")  # fmt: skip
    with np.load(run_dir / "samples.npz") as data:
        assert data["labels"].tolist() == [3, 3, 8, 8]
    assert (run_dir / "samples.png").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("override", "message"),
    [("label=truck", "unknown label 'truck'"), ("label=10", "label 10 is out of range: use 0..9"),
     ("num_samples=0", "num_samples must be a positive integer"), ("guidance=nan", "guidance must be a finite number"),
     ("guidance=-2", "guidance must be a finite number >= 0"), ("steps=101", "steps must be in 1..100"),
     ("sampler.eta=-1", "DDIM eta must be >= 0"), ("sampler.timestep_spacing=even", "unknown timestep_spacing"),
     ("device=tpu", "unknown device 'tpu'"), ("precision=16", "precision must be one of 32, bf16"),
     ("sampler=euler", "sampler=euler is not an option: use one of ddim, ddpm, dpm_solver"),
     ("lable=3", "Could not override 'lable'")],
)  # fmt: skip
def test_bad_input_is_one_clear_line_and_writes_nothing(
    make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, override: str,
    message: str,
) -> None:  # fmt: skip
    out = tmp_path / "out" / "samples"
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, f"ckpt={make_checkpoint()}", override, f"output={out}",
                        f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0], err
    assert "Traceback" not in err
    assert not out.parent.exists()


@pytest.mark.parametrize(
    ("ckpt", "message"),
    [
        (None, "ckpt=PATH is required"),
        ("missing.ckpt", "checkpoint not found"),
        ("junk.ckpt", "not a readable checkpoint"),
    ],
)
def test_bad_checkpoint_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, ckpt: str | None, message: str
) -> None:
    (tmp_path / "junk.ckpt").write_bytes(b"\x00" * 100)
    args = [f"ckpt={tmp_path / ckpt}"] if ckpt else []
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, *args, f"output={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert exit_info.value.code == 1
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert not list(tmp_path.glob("out*"))
