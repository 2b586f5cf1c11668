"""The rules the tree keeps: every module says what it is for, the report command stays light, old checkpoints
still load (import directions: ``test_import_graph.py``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import diffusion_lab
from diffusion_lab.pipeline import load_model
from diffusion_lab.reports.images import to_uint8
from tests.helpers import main_in_process

PACKAGE = Path(diffusion_lab.__file__).parent
FIXTURES = Path(__file__).parent / "fixtures"
#: A checkpoint written by ``diffusion-lab-train experiment=smoke model.unet.down_chs=[4,8]
#: model.style_conditioning=true trainer.max_steps=10`` at version 0.1.0, before the modules moved, and
#: the images that version drew from it (``plain``: every class twice, DDIM-5, seed 3; ``styled``: four 7s
#: at slant -15 and bold, DPM-Solver-4, w=1, seed 5). That version had its own samplers; diffusers' do the
#: same arithmetic in another order, so a pixel may now differ by a few of 255 levels, and rarely.
OLD_CHECKPOINT = FIXTURES / "tiny_styled_v0.1.ckpt"
OLD_SAMPLES = FIXTURES / "tiny_styled_v0.1_samples.npz"


def assert_nearly_equal(now: np.ndarray, then: np.ndarray) -> None:
    """The same uint8 images but for float rounding: at most 1 % of pixels off, by at most 8 of 255 levels."""
    assert now.shape == then.shape
    difference = np.abs(now.astype(int) - then.astype(int))
    assert (difference > 0).mean() <= 0.01 and difference.max() <= 8, (float((difference > 0).mean()), difference.max())


def test_every_module_has_a_docstring_and_every_package_an_init() -> None:
    config_groups = PACKAGE / "conf"  # a package for Hydra's pkg:// source; its groups are plain folders of yaml
    folders = [
        p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__" and config_groups not in p.parents
    ]
    for folder in [PACKAGE, *folders]:
        assert (folder / "__init__.py").is_file(), folder
    for path in PACKAGE.rglob("*.py"):
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path.relative_to(PACKAGE)} says what it is for"


def test_the_report_command_loads_neither_torch_nor_lightning() -> None:
    code = (
        "import sys\nfrom diffusion_lab.cli import report\n"
        "try:\n    report.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'lightning', 'hydra') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: diffusion-lab-report" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_the_notebook_api_is_one_import_away() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, diffusion_lab; print('torch' in sys.modules, len(diffusion_lab.__all__))"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.stdout.split() == ["False", str(len(diffusion_lab.__all__))], "import diffusion_lab stays light"
    for name in ("load_model", "generate", "generate_number", "generate_with_seed", "show_noise_progression",
                 "visualize_generation_steps", "ClassConditionalPipeline"):  # fmt: skip
        assert callable(getattr(diffusion_lab, name))


def test_a_checkpoint_of_version_0_1_loads_and_draws_the_images_it_drew_then() -> None:
    pipe = load_model(OLD_CHECKPOINT)
    assert pipe.dataset == "mnist" and pipe.model.style_conditioning and pipe.image_shape == (1, 28, 28)
    assert pipe.model.run_config["model"]["_target_"] == "diffusion_lab.models.diffusion_module.DiffusionModule"
    plain = pipe(list(range(10)) * 2, seed=3, steps=5)
    styled = pipe(
        [7] * 4, seed=5, sampler="dpm_solver", steps=4, guidance=1.0, style={"slant": -15, "thickness": "bold"}
    )
    with np.load(OLD_SAMPLES) as then:
        assert_nearly_equal(to_uint8(plain), then["plain"])
        assert_nearly_equal(to_uint8(styled), then["styled"])
    stored = torch.load(OLD_CHECKPOINT, weights_only=True)["diffusion_lab_config"]
    assert stored["model"]["_target_"] == "diffusion_lab.diffusion_module.DiffusionModule", "the fixture is the old one"


def test_the_sample_command_draws_from_a_checkpoint_of_version_0_1(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "old"
    labels = ",".join(map(str, list(range(10)) * 2))
    main_in_process(monkeypatch, "sample", f"ckpt={OLD_CHECKPOINT}", f"label=[{labels}]", "num_samples=1", "seed=3",
                    "steps=5", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    with np.load(f"{out}.npz") as drawn, np.load(OLD_SAMPLES) as then:
        assert_nearly_equal(drawn["images"], then["plain"])
