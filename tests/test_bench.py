"""The benchmark script runs end to end and writes the keys the speed targets are read from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_lab.config import project_root

#: Their runs and evaluations score samples with the reference classifiers, trained once up front.
pytestmark = pytest.mark.usefixtures("reference_classifiers")


@pytest.mark.slow
def test_bench_writes_table_and_json(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    script = project_root() / "benchmarks" / "bench.py"
    cmd = [sys.executable, str(script), "--presets", "small", "--steps", "3", "--warmup", "1", "--repeats", "1",
           "--host-steps", "3", "--sample-count", "20", "--skip-ddpm", "--output", str(output)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    for key in ("train/small/framework_img_s", "train/small/plain_fp32_img_s", "train/small/host_step_ms",
                "train/small/plain_host_step_ms", "sample/ddim50_s", "sample/default_s"):  # fmt: skip
        assert result[key] > 0, key
    assert result["train/small/framework_step_ms"] == pytest.approx(1000 * 128 / result["train/small/framework_img_s"])
    assert result["sample/default_settings"] == "objective=flow, flow Euler, 20 steps, w=0.3"
    assert result["machine"]["cpu_cores"] >= 1 and result["memory/peak_host_mib"] > 0
    assert "| small |" in proc.stdout and "framework img/s" in proc.stdout and "host ms/step (batch 2)" in proc.stdout


@pytest.mark.slow
def test_time_to_quality_scores_snapshots_along_one_run(tmp_path: Path) -> None:
    output = tmp_path / "ttq.json"
    script = project_root() / "benchmarks" / "time_to_quality.py"
    cmd = [sys.executable, str(script), "--overrides", "experiment=smoke", "--every-s", "1", "--num-per-class", "2",
           "--output", str(output)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    points = result["points"]
    assert len(points) >= 2 and points[-1]["step"] == 20, "a snapshot along the way and one at the end"
    assert [p["seconds"] for p in points] == sorted(p["seconds"] for p in points)
    assert all(0.0 <= p["accuracy"] <= 1.0 and p["fid"] > 0 for p in points)
    floor = result["settings"]["fid_floor"]
    assert floor > 0 and all(p["fid_over_floor"] == pytest.approx(p["fid"] / floor) for p in points)
    assert result["final_accuracy"] == points[-1]["accuracy"]
    reached = [p["minutes"] for p in points if p["accuracy"] >= 0.99 and p["fid_over_floor"] <= 1.5]
    assert result["minutes_to_target"] == (reached[0] if reached else None), "both criteria at once"
    assert "| training minutes |" in proc.stdout and "FID/floor |" in proc.stdout
    assert "99% class accuracy and FID <= 1.5x floor" in proc.stdout
