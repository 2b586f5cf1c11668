"""The benchmark script runs end to end and writes the keys the speed targets are read from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_lab.config import project_root


@pytest.mark.slow
def test_bench_writes_table_and_json(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    script = project_root() / "benchmarks" / "bench.py"
    cmd = [sys.executable, str(script), "--presets", "small", "--steps", "3", "--warmup", "1", "--repeats", "1", "--skip-ddpm",
           "--output", str(output)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    for key in ("train/small/framework_img_s", "train/small/plain_fp32_img_s", "sample/ddim50_s"):
        assert result[key] > 0, key
    assert result["machine"]["cpu_cores"] >= 1 and result["memory/peak_host_mib"] > 0
    assert "| small |" in proc.stdout and "framework img/s" in proc.stdout
