"""``diffusion-lab-report SWEEP_DIR``: one table of every job of a ``diffusion-lab-train -m`` sweep.

Each job folder of the sweep (``SWEEP_DIR/<job number>``, with its ``.hydra/overrides.yaml``) gives a
row: its overrides, parameter count, wall time, best ``val/loss``, and the sample-quality metrics of
its ``metrics.json`` when there are any (``eval/classifier_accuracy``, ``eval/fid``). A job that has
not finished (no ``metrics.json``) is listed with empty cells. The command prints the table and
writes into ``SWEEP_DIR`` (or ``--output``):

* ``report.md`` and ``report.csv``: the table;
* ``val_loss.png``: the validation-loss curve of every job (from its ``csv/metrics.csv``);
* ``quality.png``: the quality metric (class accuracy when evaluated, else best ``val/loss``)
  against parameters and against wall time.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from omegaconf import OmegaConf

from diffusion_lab.checkpointing import atomic_write_text
from diffusion_lab.figures import save_figure

#: Report columns after the job and its overrides: (metrics.json key, column title).
COLUMNS = (
    ("params", "params"),
    ("time/fit_s", "wall time (s)"),
    ("best/val/loss", "best val/loss"),
    ("eval/classifier_accuracy", "class accuracy"),
    ("eval/fid", "FID"),
)


class ReportError(ValueError):
    """The sweep folder cannot be reported on."""


@dataclass
class Job:
    """One job of a sweep: its folder, overrides, final metrics and validation-loss curve."""

    name: str
    path: Path
    overrides: list[str]
    metrics: dict[str, float | str] = field(default_factory=dict)
    #: ``(step, val/loss)`` pairs in logging order.
    val_curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The overrides that tell this job apart (``-`` for none)."""
        return " ".join(self.overrides) or "-"

    def value(self, key: str) -> float | None:
        """A numeric metric, or None when the job has none (not finished, not evaluated)."""
        value = self.metrics.get(key)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _job_number(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (sys.maxsize, path.name)


def _val_curve(csv_path: Path) -> list[tuple[int, float]]:
    """``(step, val/loss)`` of a CSV log; empty when there is none."""
    if not csv_path.is_file():
        return []
    curve = []
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val/loss") and row.get("step"):
                curve.append((int(float(row["step"])), float(row["val/loss"])))
    return curve


def load_sweep(sweep_dir: str | Path) -> list[Job]:
    """Every job folder of ``sweep_dir`` (those with ``.hydra/overrides.yaml``), in job order.

    Raises:
        ReportError: one line, when the folder does not exist or holds no job.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ReportError(f"sweep folder not found: {sweep_dir}")
    folders = sorted((p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")), key=_job_number)
    if not folders:
        raise ReportError(
            f"{sweep_dir} holds no job folders (<job>/.hydra/overrides.yaml): pass the folder of a "
            "diffusion-lab-train -m sweep, e.g. outputs/multirun/<date_time>"
        )
    jobs = []
    for folder in folders:
        overrides = [str(o) for o in OmegaConf.load(folder / ".hydra" / "overrides.yaml")]
        metrics_path = folder / "metrics.json"
        try:
            metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        except json.JSONDecodeError as err:
            raise ReportError(f"{metrics_path} is not valid JSON ({err}): delete it or rerun that job") from None
        jobs.append(Job(folder.name, folder, _distinct(overrides), metrics, _val_curve(folder / "csv" / "metrics.csv")))
    _keep_differences(jobs)
    return jobs


def _distinct(overrides: list[str]) -> list[str]:
    """Overrides minus Hydra's own bookkeeping (``hydra.*``)."""
    return [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]


def _keep_differences(jobs: list[Job]) -> None:
    """Drop the overrides every job shares (the sweep's common settings), so each label names what varies."""
    if len(jobs) < 2:
        return
    common = set(jobs[0].overrides).intersection(*(job.overrides for job in jobs[1:]))
    for job in jobs:
        job.overrides = [o for o in job.overrides if o not in common]


def _cell(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    if key == "params":
        return f"{int(value):,}"
    if key == "eval/classifier_accuracy":
        return f"{value:.1%}"
    if key == "time/fit_s":
        return f"{value:.0f}"
    return f"{value:.4g}"


def table_rows(jobs: Sequence[Job]) -> tuple[list[str], list[list[str]]]:
    """The header and one row of formatted cells per job."""
    header = ["job", "overrides", *(title for _, title in COLUMNS)]
    rows = [[job.name, job.label, *(_cell(job.value(key), key) for key, _ in COLUMNS)] for job in jobs]
    return header, rows


def markdown(jobs: Sequence[Job], sweep_dir: Path) -> str:
    """``report.md``: the table and the two figures."""
    header, rows = table_rows(jobs)
    lines = [
        f"# Sweep {sweep_dir}",
        "",
        f"{len(jobs)} jobs; the overrides shown are those that differ between them.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        "![validation loss](val_loss.png)",
        "",
        "![quality](quality.png)",
        "",
    ]
    return "\n".join(lines)


def csv_text(jobs: Sequence[Job]) -> str:
    """``report.csv``: the same columns with raw numbers (empty where missing)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["job", "overrides", *(key for key, _ in COLUMNS)])
    for job in jobs:
        writer.writerow([job.name, job.label, *("" if job.value(k) is None else job.value(k) for k, _ in COLUMNS)])
    return out.getvalue()


def val_loss_figure(jobs: Sequence[Job]) -> Figure:
    """The validation-loss curve of every job against the training step."""
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    for job in jobs:
        if job.val_curve:
            steps, losses = zip(*job.val_curve, strict=True)
            ax.plot(steps, losses, marker=".", label=f"{job.name}: {job.label}")
    ax.set_xlabel("training step")
    ax.set_ylabel("val/loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.suptitle("Validation loss per job")
    return fig


def quality_figure(jobs: Sequence[Job]) -> Figure:
    """Each job's quality (class accuracy when evaluated, else best val/loss) against parameters and wall time."""
    key, title = (
        ("eval/classifier_accuracy", "class accuracy")
        if any(job.value("eval/classifier_accuracy") is not None for job in jobs)
        else ("best/val/loss", "best val/loss")
    )
    fig = Figure(figsize=(9.0, 3.8), layout="constrained")
    axes_keys = (("params", "parameters"), ("time/fit_s", "wall time (s)"))
    for ax, (x_key, x_title) in zip(fig.subplots(1, 2), axes_keys, strict=True):
        for job in jobs:
            x, y = job.value(x_key), job.value(key)
            if x is not None and y is not None:
                ax.scatter(x, y)
                ax.annotate(job.name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(x_title)
        ax.set_ylabel(title)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} against size and time (labels: job numbers)")
    return fig


def write_report(sweep_dir: str | Path, output: str | Path | None = None) -> tuple[list[Job], Path]:
    """Load the sweep and write ``report.md``, ``report.csv``, ``val_loss.png`` and ``quality.png``."""
    sweep_dir = Path(sweep_dir)
    jobs = load_sweep(sweep_dir)
    out = Path(output) if output is not None else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    save_figure(val_loss_figure(jobs), out / "val_loss.png")
    save_figure(quality_figure(jobs), out / "quality.png")
    atomic_write_text(out / "report.csv", csv_text(jobs))
    atomic_write_text(out / "report.md", markdown(jobs, sweep_dir))
    return jobs, out


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: print the table, write the files; a bad folder ends it with one line."""
    parser = argparse.ArgumentParser(prog="diffusion-lab-report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="folder of a diffusion-lab-train -m sweep (outputs/multirun/<date_time>)")
    parser.add_argument("--output", help="folder for the report files (default: the sweep folder)")
    args = parser.parse_args(argv)
    try:
        jobs, out = write_report(args.sweep_dir, args.output)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    header, rows = table_rows(jobs)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"Wrote {out / 'report.md'}, report.csv, val_loss.png and quality.png")


if __name__ == "__main__":
    main()
