"""The package as a user installs it: ``pip install .`` (not editable) into a fresh venv, every command run from an
empty folder, its configs found inside the package, a user's own config folder beside them.

Nothing is downloaded: the fresh venv sees this one's site-packages for the dependencies (a ``.pth`` file), and
the project is built from a copy of the checkout without build isolation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from diffusion_lab.config import CONF_DIR, project_root

pytestmark = pytest.mark.slow

#: The commands that compose a config, and all console scripts.
HYDRA_COMMANDS = ("train", "sample", "evaluate", "figures", "export")
COMMANDS = (*HYDRA_COMMANDS, "report")

#: The user's config folder of docs/configuration.md: an experiment of their own and this machine's settings.
USER_EXPERIMENT = """\
# @package _global_
# my-configs/experiment/long.yaml: diffusion-lab-train experiment=long
task_name: train
defaults:
  - override /model: base
trainer:
  max_epochs: 20
"""
USER_LOCAL = "# @package _global_\npaths:\n  data_dir: /scratch/data\n"


def user_env() -> dict[str, str]:
    """A user's environment: no source folder on the path, no project root set."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DIFFUSION_LAB_ROOT", "HYDRA_FULL_ERROR")}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the project installed from a copy of the checkout (``pip install --no-deps .``)."""
    root = tmp_path_factory.mktemp("install")
    source, venv = root / "source", root / "venv"
    checkout = project_root()
    shutil.copytree(checkout / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(checkout / name, source / name)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True, env=user_env(),
    ).stdout.strip()  # fmt: skip
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (Path(site) / "dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    proc = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", str(source)],
        capture_output=True, text=True, env=user_env(), cwd=root, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


def run_all(venv: Path, cwd: Path, calls: Sequence[Sequence[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Each call ``[script, *args]`` with the venv's console script, from ``cwd``, a few at a time."""

    def run(call: Sequence[str]) -> subprocess.CompletedProcess[str]:
        script, *args = call
        return subprocess.run(
            [venv / "bin" / script, *args], capture_output=True, text=True, env=user_env(), cwd=cwd, timeout=600
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, calls))
    for call, proc in zip(calls, results, strict=True):
        assert proc.returncode == 0, f"{' '.join(call)}: {proc.stderr[-3000:]}"
    return results


def test_the_installed_package_holds_every_config_file(venv: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import diffusion_lab.config as c; print(c.CONF_DIR); print(c.project_root())"],
        capture_output=True, text=True, check=True, env=user_env(), cwd=tmp_path,
    ).stdout.split()  # fmt: skip
    conf, root = Path(where[0]), Path(where[1])
    assert conf.is_relative_to(venv) and not conf.is_relative_to(project_root()), "not the checkout's tree"
    assert root == tmp_path, "an installed package keeps data/ and outputs/ in the current folder"
    shipped = sorted(p.relative_to(conf) for p in conf.rglob("*.yaml"))
    expected = sorted(p.relative_to(CONF_DIR) for p in CONF_DIR.rglob("*.yaml") if p != CONF_DIR / "local/default.yaml")
    assert shipped == expected and len(shipped) > 50


def test_every_command_runs_from_an_empty_folder(venv: Path, tmp_path: Path) -> None:
    """``--help`` of every command; a Hydra command's help holds its composed config, as ``--cfg job`` prints it."""
    calls = [
        *([f"diffusion-lab-{name}", "--help"] for name in COMMANDS),
        ["diffusion-lab-train", "--cfg", "job", "--resolve", "data=fashion_mnist"],
    ]
    results = run_all(venv, tmp_path, calls)
    assert "usage: diffusion-lab-report" in results[len(HYDRA_COMMANDS)].stdout
    for name, proc in zip(HYDRA_COMMANDS, results, strict=False):
        assert "== Config ==" in proc.stdout and f"\ntask_name: {name}\n" in proc.stdout, name
    fashion = OmegaConf.create(results[-1].stdout)
    assert (fashion.data.name, fashion.data.batch_size) == ("fashion_mnist", 64), "with its recipe"
    assert fashion.paths.root_dir == str(tmp_path), "data/ and outputs/ in the current folder"
    assert list(tmp_path.iterdir()) == [], "composing a config writes nothing"


def test_a_users_config_folder_extends_the_shipped_tree(venv: Path, tmp_path: Path) -> None:
    """``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]``: the user's experiment and machine settings."""
    mine = tmp_path / "my-configs"
    (mine / "experiment").mkdir(parents=True)
    (mine / "local").mkdir()
    (mine / "experiment" / "long.yaml").write_text(USER_EXPERIMENT)
    (mine / "local" / "default.yaml").write_text(USER_LOCAL)
    calls = [
        ["diffusion-lab-train", "--config-dir", "my-configs", "experiment=long", "--cfg", "job"],
        ["diffusion-lab-train", "hydra.searchpath=[file://my-configs]", "experiment=long", "--cfg", "job"],
        ["diffusion-lab-evaluate", "--config-dir", "my-configs", "--cfg", "job"],
    ]
    configs = [OmegaConf.create(proc.stdout) for proc in run_all(venv, tmp_path, calls)]
    assert all(cfg.paths.data_dir == "/scratch/data" for cfg in configs), "local/default.yaml reaches every command"
    for cfg in configs[:2]:
        assert cfg.trainer.max_epochs == 20 and list(cfg.model.unet.down_chs) == [32, 64, 128], "experiment=long"
