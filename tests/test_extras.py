"""Each optional feature used without its extra stops in one line that names the extra (CLIP: test_clip_score.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import main_in_process, one_error_line, user_env


def extra_line(feature: str, extra: str) -> str:
    """What a command says when ``feature`` is used without ``extra`` (less its ``error: ``)."""
    return f"{feature} needs the [{extra}] extra: pip install 'diffusion-lab[{extra}]'"


@pytest.mark.parametrize(
    ("loggers", "module", "extra"),
    [
        (["logger=wandb"], "wandb", "wandb"),
        (["logger=tensorboard"], "tensorboard", "tensorboard"),
        (["logger=many"], "tensorboard", "tensorboard"),
        (["logger=many", "+logger@logger.wandb=wandb"], "wandb", "wandb"),
    ],
)
def test_a_logger_without_its_extra_is_refused_before_the_run(
    loggers: list[str], module: str, extra: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, "train", *loggers, f"hydra.run.dir={tmp_path / 'run'}")
    assert exit_info.value.code == 1
    assert one_error_line(capsys.readouterr().err) == f"error: {extra_line(loggers[-1].lstrip('+'), extra)}"
    assert not (tmp_path / "run").exists()


def test_each_job_of_a_sweep_without_the_extra_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``-m`` leaves the check to each job: the job fails before it trains, its line names the extra."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, "train", "-m", "logger=wandb", "experiment=smoke", f"hydra.sweep.dir={tmp_path}")
    assert exit_info.value.code == 1
    line = extra_line("logger=wandb", "wandb")
    assert one_error_line(capsys.readouterr().err).endswith(f"failed: {line}")
    assert (tmp_path / "0" / "error.txt").read_text() == f"{line}\n"
    assert not (tmp_path / "0" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("plugin", "choice"),
    [
        ("hydra_plugins.hydra_optuna_sweeper", "hparams_search=optuna"),
        ("hydra_plugins.hydra_submitit_launcher", "hydra/launcher=slurm"),
    ],
)
def test_a_cluster_plugin_without_its_extra_is_refused_in_one_line(plugin: str, choice: str, tmp_path: Path) -> None:
    """Hydra finds no such config without the plugin; the line names the [cluster] extra instead."""
    argv = ["diffusion-lab-train", "-m", choice, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    code = f"import sys\nsys.modules[{plugin!r}] = None\nsys.argv = {argv!r}\n"
    code += "from diffusion_lab.cli.train import main\nmain()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=user_env(), timeout=300)
    assert proc.returncode == 1
    assert one_error_line(proc.stderr) == f"error: {extra_line(choice, 'cluster')}"
    assert not (tmp_path / "sweep").exists()
