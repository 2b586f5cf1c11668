"""``diffusion-lab-report``: a table of a sweep's jobs, from a real 2x2 multirun and from edge cases."""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from diffusion_lab.cli.report import main
from diffusion_lab.reports.sweep_report import (
    evaluation_figure,
    load_sweep,
    pareto_figure,
    quality_figure,
    write_report,
)

#: Their runs and evaluations score MNIST samples with its reference classifier, trained once up front.
pytestmark = pytest.mark.usefixtures("mnist_classifier")

TRAIN = [sys.executable, "-m", "diffusion_lab.cli.train"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2x2 ``diffusion-lab-train -m`` sweep of smoke runs (two schedules x two U-Net sizes), two at a time."""
    sweep_dir = tmp_path_factory.mktemp("sweep") / "multirun"
    cmd = [*TRAIN, "-m", "hydra/launcher=parallel", "experiment=smoke", "schedule=linear,cosine",
           "model.unet.down_chs=[8,16],[16,32]", "trainer.max_steps=6", "trainer.limit_train_batches=6",
           "trainer.val_check_interval=3", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir


@pytest.mark.slow
def test_a_2x2_sweep_leaves_four_jobs_and_a_four_row_report(sweep: Path, capsys) -> None:
    cores = os.cpu_count() or 1
    for job in "0123":
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert (sweep / job / "metrics.json").is_file()
        threads = max(1, cores // min(2, cores))
        assert (
            f"joblib launcher: {min(2, cores)} jobs at once, {threads} torch threads each"
            in (sweep / job / "train.log").read_text()
        )
    main([str(sweep)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:4] == ["job", "overrides", "status", "params"] and len(printed) == 1 + 4 + 1
    with (sweep / "report.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["job"] for row in rows] == ["0", "1", "2", "3"]
    assert [row["overrides"] for row in rows] == [
        "schedule=linear model.unet.down_chs=[8,16]", "schedule=linear model.unet.down_chs=[16,32]",
        "schedule=cosine model.unet.down_chs=[8,16]", "schedule=cosine model.unet.down_chs=[16,32]",
    ]  # fmt: skip
    for row in rows:
        metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
        assert float(row["best/val/loss"]) == pytest.approx(metrics["best/val/loss"])
        assert float(row["time/fit_s"]) > 0 and 0 <= float(row["eval/classifier_accuracy"]) <= 1
    assert float(rows[1]["params"]) > 3 * float(rows[0]["params"]), "wider U-Net, more parameters"
    assert rows[0]["params"] == rows[2]["params"]
    report = (sweep / "report.md").read_text()
    assert report.count("| schedule=") == 4 and "![validation loss](val_loss.png)" in report
    for name in ("val_loss.png", "quality.png"):
        with Image.open(sweep / name) as image:
            assert image.format == "PNG" and image.size[0] > 400
    jobs = load_sweep(sweep)
    assert all(len(job.val_curve) >= 2 for job in jobs), "one point per validation (every 3 steps)"


def _job(sweep: Path, name: str, overrides: list[str], metrics: dict | None) -> None:
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (sweep / name / "metrics.json").write_text(json.dumps(metrics))


def test_unfinished_and_unevaluated_jobs_get_empty_cells(tmp_path: Path) -> None:
    _job(tmp_path, "0", ["model=small", "seed=1"], {"params": 10, "time/fit_s": 2.0, "best/val/loss": 0.05})
    _job(tmp_path, "1", ["model=base", "seed=1"], None)
    _job(tmp_path, "10", ["model=large", "seed=1"], {"params": 99, "best/val/loss": 0.04})
    jobs, _ = write_report(tmp_path)
    assert [job.name for job in jobs] == ["0", "1", "10"], "numeric job order"
    assert [job.label for job in jobs] == ["model=small", "model=base", "model=large"], "shared seed=1 left out"
    assert jobs[1].value("best/val/loss") is None and jobs[0].value("eval/fid") is None
    assert "| 1 | model=base | unfinished | - | - | - | - | - |" in (tmp_path / "report.md").read_text()
    assert quality_figure(jobs).axes[0].get_ylabel() == "best val/loss", "no evaluation: quality is val/loss"


def test_a_failed_job_shows_its_reason(tmp_path: Path, capsys) -> None:
    _job(tmp_path, "0", ["model.optimizer.lr=2e-3"], {"params": 10, "time/fit_s": 2.0, "best/val/loss": 0.05})
    _job(tmp_path, "1", ["model.optimizer.lr=-1"], None)
    reason = "model.optimizer.lr must be a positive number, got -1 (e.g. model.optimizer.lr=0.002)"
    (tmp_path / "1" / "error.txt").write_text(reason + "\n")
    main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert "failed: job 1 (model.optimizer.lr=-1): model.optimizer.lr must be a positive number" in printed
    report = (tmp_path / "report.md").read_text()
    assert (
        "| 1 | model.optimizer.lr=-1 | failed | - |" in report and "- job 1 (model.optimizer.lr=-1): model." in report
    )
    with (tmp_path / "report.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["status"], row["error"][:18]) for row in rows] == [("done", ""), ("failed", "model.optimizer.lr")]


def test_an_evaluation_sweep_reports_sample_metrics_against_the_swept_weight(tmp_path: Path) -> None:
    """A guidance sweep: evaluation columns (none for metrics no job measured), quality against w."""
    for job, (w, acc, fid) in enumerate([(0.0, 0.88, 30.0), (2.0, 0.99, 35.0), (0.5, 0.93, 25.0)]):
        metrics = {"guidance": w, "generated/classifier_accuracy": acc, "generated/fid": fid, "generated/kid": 0.01,
                   "time/sampling_s": 12.0, "real/fid": 1.0}  # fmt: skip
        _job(tmp_path, str(job), [f"guidance={w:g}", "ckpt=run/last.ckpt"], metrics)
    jobs, _ = write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "| job | overrides | status | class accuracy | FID | KID | sampling (s) |" in report
    assert "| 1 | guidance=2 | done | 99.0% | 35 | 0.01 | 12 |" in report and "3 evaluation jobs" in report
    assert not (tmp_path / "val_loss.png").exists() and "val_loss.png" not in report
    fig = evaluation_figure(jobs)
    assert [ax.get_xlabel() for ax in fig.axes] == ["guidance", "guidance"]
    xs, ys = fig.axes[0].lines[0].get_data()
    assert list(xs) == [0.0, 0.5, 2.0] and list(ys) == [0.88, 0.93, 0.99], "accuracy in order of w"


def test_an_evaluation_sweep_plots_precision_against_recall_and_accuracy_against_fid_over_floor(
    tmp_path: Path,
) -> None:
    """One labelled point per job, joined in order of w, beside the real images' point."""
    for job, (w, precision, recall, acc, fid) in enumerate([(2.0, 0.9, 0.3, 1.0, 20.0), (0.0, 0.6, 0.7, 0.9, 10.0)]):
        metrics = {"generated/precision": precision, "generated/recall": recall, "generated/classifier_accuracy": acc,
                   "generated/fid": fid, "real/fid": 5.0, "real/precision": 0.75, "real/recall": 0.76,
                   "real/classifier_accuracy": 0.99, "generated/cas": 0.95}  # fmt: skip
        _job(tmp_path, str(job), [f"guidance={w:g}", "ckpt=run/last.ckpt"], metrics)
    jobs, _ = write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "![precision against recall, accuracy against FID](pareto.png)" in report
    assert "| precision | recall |" in report and "| CAS |" in report and "| 95.0% |" in report
    assert Image.open(tmp_path / "pareto.png").size[0] > 500
    left, right = pareto_figure(jobs).axes
    assert (left.get_xlabel(), left.get_ylabel()) == ("recall (variety)", "precision (fidelity)")
    assert [list(v) for v in left.lines[0].get_data()] == [[0.7, 0.3], [0.6, 0.9]], "in order of w"
    assert [t.get_text() for t in left.texts] == ["guidance=0", "guidance=2", "real images"]
    assert list(left.collections[0].get_offsets()[0]) == [0.76, 0.75], "the real sample's point"
    assert [list(v) for v in right.lines[0].get_data()] == [[2.0, 4.0], [0.9, 1.0]], "FID over its floor"
    assert list(right.collections[0].get_offsets()[0]) == [1.0, 0.99]


@pytest.mark.parametrize(
    ("setup", "message"),
    [("missing", "sweep folder not found"), ("empty", "holds no job folders"), ("bad_json", "is not valid JSON")],
)
def test_a_bad_sweep_folder_is_one_line(tmp_path: Path, capsys, setup: str, message: str) -> None:
    folder = tmp_path / "sweep"
    if setup != "missing":
        folder.mkdir()
    if setup == "bad_json":
        _job(folder, "0", ["seed=1"], None)
        (folder / "0" / "metrics.json").write_text("{")
    with pytest.raises(SystemExit) as exit_info:
        main([str(folder)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (folder / "report.md").exists()


def test_a_sweep_folder_that_cannot_be_written_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # fmt: skip
    """A sweep folder one may read but not write (a read-only mount, someone else's): one line naming --output."""
    _job(tmp_path, "0", ["seed=1"], {"params": 10, "time/fit_s": 2.0, "best/val/loss": 0.05})
    real_replace = os.replace

    def read_only(src: str, dst: str) -> None:
        if Path(dst).parent == tmp_path:
            raise OSError(errno.EROFS, "Read-only file system")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot write {tmp_path / 'val_loss.png'} (Read-only file system): pass --output a "
                   "folder you can write to"]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0"]
