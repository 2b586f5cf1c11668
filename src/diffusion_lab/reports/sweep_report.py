"""The sweep report: one table of every job of a ``-m`` sweep of training or evaluation (``diffusion-lab-report``).

Each job folder of the sweep (``SWEEP_DIR/<job number>``, with its ``.hydra/overrides.yaml``) gives a
row: its overrides, its status, and the numbers of its ``metrics.json``. For a ``diffusion-lab-train -m``
sweep these are the parameter count, wall time, best ``val/loss`` and, when the job scored samples,
``eval/classifier_accuracy`` and ``eval/fid``; for a ``diffusion-lab-evaluate -m`` sweep (such as
``experiment=guidance_sweep``) the sample metrics it measured. A job still running (no
``metrics.json``) has empty cells; a failed one shows the reason it left in ``error.txt``. The command
prints the table and writes into ``SWEEP_DIR`` (or ``--output``):

* ``report.md`` and ``report.csv``: the table;
* ``val_loss.png`` (training sweeps): the validation-loss curve of every job (``history/val/loss`` of its
  ``metrics.json``, whatever logger the job had; a job still running: its ``csv/metrics.csv``, if any);
* ``quality.png``: for training, the quality metric (class accuracy when evaluated, else best
  ``val/loss``) against parameters and against wall time; for evaluation, class accuracy and FID
  against the swept value (e.g. the guidance weight) when one number varies, else against each other;
* ``pareto.png`` (evaluation sweeps): the trade-offs, one labelled point per job: precision (fidelity)
  against recall (variety), and class accuracy against FID over its real floor, each beside the
  real images' own point, so the jobs on the Pareto front stand out.
"""

from __future__ import annotations

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

from diffusion_lab.reports.render import markdown_table, save_figure
from diffusion_lab.utils.files import JOB_ERROR_FILE, atomic_write_text

#: The ``metrics.json`` key of a training run's validation-loss curve: ``[step, val/loss]`` pairs.
HISTORY_VAL_LOSS = "history/val/loss"
#: Report columns of a training sweep after the job, its overrides and status: (metrics.json key, title).
COLUMNS = (
    ("params", "params"),
    ("time/fit_s", "wall time (s)"),
    ("best/val/loss", "best val/loss"),
    ("eval/classifier_accuracy", "class accuracy"),
    ("eval/fid", "FID"),
)
#: The same for an evaluation sweep; a column no job measured (Inception FID, CLIP) is left out.
EVALUATE_COLUMNS = (
    ("generated/classifier_accuracy", "class accuracy"),
    ("generated/fid", "FID"),
    ("generated/kid", "KID"),
    ("generated/inception_fid", "Inception FID"),
    ("generated/precision", "precision"),
    ("generated/recall", "recall"),
    ("generated/density", "density"),
    ("generated/coverage", "coverage"),
    ("generated/cas", "CAS"),
    ("generated/clip_score", "CLIP score"),
    ("style/slant_correlation", "slant corr."),
    ("style/thickness_correlation", "thickness corr."),
    ("time/sampling_s", "sampling (s)"),
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
    #: Why the job failed (its ``error.txt``), or None.
    error: str | None = None
    #: A job of ``diffusion-lab-evaluate`` (it measured ``generated/*``, or its Hydra job is ``evaluate``).
    evaluation: bool = False

    @property
    def status(self) -> str:
        """``failed``, ``done`` (it wrote ``metrics.json``) or ``unfinished``."""
        return "failed" if self.error else "done" if self.metrics else "unfinished"

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
            f"{sweep_dir} holds no job folders (<job>/.hydra/overrides.yaml): pass the folder of a -m "
            "sweep, e.g. outputs/multirun/<date_time> or outputs/evaluate-multirun/<date_time>"
        )
    jobs = []
    for folder in folders:
        overrides = [str(o) for o in OmegaConf.load(folder / ".hydra" / "overrides.yaml")]
        metrics_path = folder / "metrics.json"
        try:
            metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        except json.JSONDecodeError as err:
            raise ReportError(f"{metrics_path} is not valid JSON ({err}): delete it or rerun that job") from None
        error_path = folder / JOB_ERROR_FILE
        error = error_path.read_text().strip() if error_path.is_file() else None
        recorded = metrics.get(HISTORY_VAL_LOSS)
        curve = (
            [(int(step), float(loss)) for step, loss in recorded]
            if isinstance(recorded, list)
            else _val_curve(folder / "csv" / "metrics.csv")
        )
        hydra_file = folder / ".hydra" / "hydra.yaml"
        evaluation = "generated/classifier_accuracy" in metrics or (
            hydra_file.is_file() and OmegaConf.load(hydra_file).hydra.job.name == "evaluate"
        )
        jobs.append(Job(folder.name, folder, _distinct(overrides), metrics, curve, error, evaluation))
    _keep_differences(jobs)
    return jobs


def is_evaluation(jobs: Sequence[Job]) -> bool:
    """True for a ``diffusion-lab-evaluate -m`` sweep."""
    return any(job.evaluation for job in jobs)


def columns(jobs: Sequence[Job]) -> tuple[tuple[str, str], ...]:
    """The metric columns of this sweep's kind (evaluation: only those some job has)."""
    if not is_evaluation(jobs):
        return COLUMNS
    kept = tuple(c for c in EVALUATE_COLUMNS if any(job.value(c[0]) is not None for job in jobs))
    return kept or EVALUATE_COLUMNS[:2]


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
    if key.endswith(("classifier_accuracy", "cas")):
        return f"{value:.1%}"
    if key.startswith("time/"):
        return f"{value:.0f}"
    return f"{value:.4g}"


def table_rows(jobs: Sequence[Job]) -> tuple[list[str], list[list[str]]]:
    """The header and one row of formatted cells per job."""
    cols = columns(jobs)
    header = ["job", "overrides", "status", *(title for _, title in cols)]
    rows = [[job.name, job.label, job.status, *(_cell(job.value(key), key) for key, _ in cols)] for job in jobs]
    return header, rows


def failures(jobs: Sequence[Job]) -> list[str]:
    """``job N (overrides): reason`` for every failed job."""
    return [f"job {job.name} ({job.label}): {job.error}" for job in jobs if job.error]


def markdown(jobs: Sequence[Job], sweep_dir: Path) -> str:
    """``report.md``: the table, why jobs failed, and the figures."""
    header, rows = table_rows(jobs)
    kind = "evaluation" if is_evaluation(jobs) else "training"
    lines = [
        f"# Sweep {sweep_dir}",
        "",
        f"{len(jobs)} {kind} jobs; the overrides shown are those that differ between them.",
        "",
        markdown_table(header, rows),
        "",
    ]
    if failed := failures(jobs):
        lines += ["Failed jobs:", "", *(f"- {line}" for line in failed), ""]
    if kind == "training":
        lines += ["![validation loss](val_loss.png)", ""]
    lines += ["![quality](quality.png)", ""]
    if kind == "evaluation":
        lines += ["![precision against recall, accuracy against FID](pareto.png)", ""]
    return "\n".join(lines)


def csv_text(jobs: Sequence[Job]) -> str:
    """``report.csv``: the same columns with raw numbers (empty where missing), and the failure reason."""
    cols = columns(jobs)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["job", "overrides", "status", *(key for key, _ in cols), "error"])
    for job in jobs:
        values = ("" if job.value(k) is None else job.value(k) for k, _ in cols)
        writer.writerow([job.name, job.label, job.status, *values, job.error or ""])
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


def swept_value(jobs: Sequence[Job]) -> tuple[str, list[float | None]] | None:
    """``(key, value per job)`` when the jobs differ in one numeric override (``guidance=0.5``), else None."""
    keys = {o.split("=", 1)[0] for job in jobs for o in job.overrides}
    if len(keys) != 1 or not all(len(job.overrides) == 1 for job in jobs):
        return None
    try:
        return keys.pop(), [float(job.overrides[0].split("=", 1)[1]) for job in jobs]
    except ValueError:
        return None


def evaluation_figure(jobs: Sequence[Job]) -> Figure:
    """Class accuracy and FID against the swept value (guidance weight...), or against each other."""
    acc, fid = "generated/classifier_accuracy", "generated/fid"
    fig = Figure(figsize=(9.0, 3.8), layout="constrained")
    if (swept := swept_value(jobs)) is not None:
        key, xs = swept
        for ax, (metric, title) in zip(fig.subplots(1, 2), ((acc, "class accuracy"), (fid, "FID")), strict=True):
            values = (job.value(metric) for job in jobs)
            points = sorted((x, y) for x, y in zip(xs, values, strict=True) if y is not None)
            if points:
                ax.plot(*zip(*points, strict=True), marker="o")
            ax.set_xlabel(key)
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
        fig.suptitle(f"Class accuracy and FID (classifier features) against {key}")
        return fig
    ax = fig.subplots()
    for job in jobs:
        x, y = job.value(fid), job.value(acc)
        if x is not None and y is not None:
            ax.scatter(x, y)
            ax.annotate(job.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("FID (classifier features)")
    ax.set_ylabel("class accuracy")
    ax.grid(alpha=0.3)
    fig.suptitle("Class accuracy against FID, per job")
    return fig


def _ordered(jobs: Sequence[Job]) -> list[Job]:
    """The jobs in the order of the swept value when one number varies (a line joins neighbours), else as they are."""
    if (swept := swept_value(jobs)) is None or None in swept[1]:
        return list(jobs)
    return [job for _, job in sorted(zip(swept[1], jobs, strict=True), key=lambda pair: pair[0])]


def _fid_over_floor(job: Job, prefix: str) -> float | None:
    """``PREFIX/fid`` over the job's real floor ``real/fid`` (1 for the real sample itself)."""
    fid, floor = job.value(f"{prefix}/fid"), job.value("real/fid")
    return fid / floor if fid is not None and floor else None


#: The panels of :func:`pareto_figure`: x and y of a job's ``generated`` or ``real`` side, and their titles.
PARETO_PANELS = (
    (lambda job, prefix: job.value(f"{prefix}/recall"), lambda job, prefix: job.value(f"{prefix}/precision"),
     "recall (variety)", "precision (fidelity)"),
    (_fid_over_floor, lambda job, prefix: job.value(f"{prefix}/classifier_accuracy"),
     "FID / real floor (classifier features)", "class accuracy"),
)  # fmt: skip


def pareto_figure(jobs: Sequence[Job]) -> Figure:
    """Precision against recall, class accuracy against FID/floor: a labelled point per job, a star for real images."""
    fig = Figure(figsize=(10.0, 4.2), layout="constrained")
    for ax, (x_of, y_of, x_title, y_title) in zip(fig.subplots(1, 2), PARETO_PANELS, strict=True):
        points = [(x_of(job, "generated"), y_of(job, "generated"), job.label) for job in _ordered(jobs)]
        points = [p for p in points if p[0] is not None and p[1] is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="tab:blue", alpha=0.8)
            for x, y, label in points:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        real = next(((x, y) for job in jobs if None not in (x := x_of(job, "real"), y := y_of(job, "real"))), None)
        if real is not None:
            ax.scatter(*real, marker="*", s=140, color="tab:gray", zorder=3)
            ax.annotate("real images", real, textcoords="offset points", xytext=(4, -12), fontsize=8)
        ax.set_xlabel(x_title)
        ax.set_ylabel(y_title)
        ax.grid(alpha=0.3)
    fig.suptitle("Fidelity against variety per job; the star: real training images against the same reference")
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
    """Load the sweep and write ``report.md``, ``report.csv``, ``quality.png`` and ``val_loss.png`` (training) or
    ``pareto.png`` (evaluation)."""
    sweep_dir = Path(sweep_dir)
    jobs = load_sweep(sweep_dir)
    out = Path(output) if output is not None else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    if is_evaluation(jobs):
        save_figure(evaluation_figure(jobs), out / "quality.png")
        save_figure(pareto_figure(jobs), out / "pareto.png")
    else:
        save_figure(val_loss_figure(jobs), out / "val_loss.png")
        save_figure(quality_figure(jobs), out / "quality.png")
    atomic_write_text(out / "report.csv", csv_text(jobs))
    atomic_write_text(out / "report.md", markdown(jobs, sweep_dir))
    return jobs, out
