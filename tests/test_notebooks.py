"""``notebooks/``: stored without outputs, and run end to end through a real Jupyter kernel (nbclient)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from diffusion_lab.config import project_root

NOTEBOOKS = project_root() / "notebooks"
CKPT = Path(__file__).parent / "fixtures" / "tiny_styled_v0.1.ckpt"
#: Seconds any one cell may take before the run fails.
CELL_TIMEOUT = 180
#: The kernel the notebooks run in: this interpreter, whatever kernels the machine has installed.
KERNEL = "diffusion-lab-tests"


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec of this interpreter (ipykernel), under a name no other Jupyter install on the machine uses."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def execute(name: str, kernel: str, cwd: Path) -> nbformat.NotebookNode:
    """Run ``notebooks/NAME`` in a fresh ``kernel`` with ``cwd`` as its folder; a failing cell raises."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    cwd.mkdir(exist_ok=True)
    resources = {"metadata": {"path": cwd}}
    NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name=kernel, resources=resources).execute()
    return notebook


def outputs(notebook: nbformat.NotebookNode, kind: str) -> list[str]:
    """The ``kind`` outputs (``image/png``, ``text/plain``, ``text/markdown``) of every code cell, and stream text."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if kind == "stream" and output.output_type == "stream":
                found.append(output.text)
            elif kind in output.get("data", {}):
                found.append(output.data[kind])
    return found


@pytest.mark.parametrize("name", ["lab.ipynb", "sweeps.ipynb"])
def test_stored_without_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


@pytest.mark.slow
@pytest.mark.usefixtures("mnist_classifier")
def test_lab_runs_end_to_end_with_figures_inline(kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFUSION_LAB_CKPT", str(CKPT))  # the default path trains experiment=smoke first
    cwd = tmp_path / "cwd"
    notebook = execute("lab.ipynb", kernel, cwd)
    text = "".join(outputs(notebook, "stream"))
    assert "mnist, classes 0, 1, 2" in text and "11,817 parameters" in text
    assert "seed 42 twice, the same image: True | seed 43, another: True" in text
    assert "No CLIP top-N selection: CLIP is unavailable" in text or "highest CLIP score" in text
    # generate_number, the seeds, noise progression, generation steps, guidance sweep, style grid
    assert len(outputs(notebook, "image/png")) >= 6
    (table,) = outputs(notebook, "text/markdown")
    assert "| classifier_accuracy |" in table and "| fid |" in table
    assert not list(cwd.iterdir()), "the lab writes nothing when given a checkpoint"


def _job(sweep: Path, name: str, overrides: list[str], metrics: dict, val_losses: list[float]) -> None:
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (sweep / name / "metrics.json").write_text(json.dumps(metrics))
    (sweep / name / "csv").mkdir()
    rows = "".join(f"{10 * (i + 1)},{loss}\n" for i, loss in enumerate(val_losses))
    (sweep / name / "csv" / "metrics.csv").write_text("step,val/loss\n" + rows)


@pytest.mark.slow
def test_sweeps_shows_the_table_and_plots(kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = tmp_path / "multirun"
    for job, schedule, loss in (("0", "linear", 0.08), ("1", "cosine", 0.06)):
        metrics = {"params": 1000, "time/fit_s": 3.0, "best/val/loss": loss, "eval/classifier_accuracy": 0.5}
        _job(sweep, job, [f"schedule={schedule}", "seed=0"], metrics, [loss + 0.02, loss])
    monkeypatch.setenv("DIFFUSION_LAB_SWEEP", str(sweep))
    before = sorted(p.relative_to(sweep) for p in sweep.rglob("*"))
    notebook = execute("sweeps.ipynb", kernel, tmp_path / "cwd")
    assert f"{sweep}: 2 jobs, 2 done" in "".join(outputs(notebook, "stream"))
    (table,) = outputs(notebook, "text/markdown")
    assert "| 0 | schedule=linear |" in table and "| 1 | schedule=cosine |" in table
    assert len(outputs(notebook, "image/png")) == 2  # validation loss, quality
    assert sorted(p.relative_to(sweep) for p in sweep.rglob("*")) == before, "the notebook writes nothing"
