"""The evaluation report of ``diffusion-lab-evaluate``: ``report.md`` and the per-class chart.

Each number stands beside the same number on real images (see :mod:`diffusion_lab.evaluation.evaluator`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from diffusion_lab.data.labels import class_keys
from diffusion_lab.data.sources import dataset_info
from diffusion_lab.data.styles import STYLE_NAMES, STYLE_UNITS
from diffusion_lab.reports.render import markdown_table

#: Images per class in the report's grids.
GRID_COLUMNS = 10
#: The overall metrics of the report's main table, in order, with their direction.
SUMMARY = (
    ("classifier_accuracy", "higher is better"),
    ("fid", "lower is better (classifier features)"),
    ("kid", "lower is better (classifier features)"),
    ("inception_fid", "lower is better (InceptionV3 pool features)"),
    ("precision", "fidelity: share of samples inside the real manifold, higher is better"),
    ("recall", "variety: share of real images inside the samples' manifold, higher is better"),
    ("density", "fidelity: about 1 for real images, above 1 where samples crowd typical ones"),
    ("coverage", "variety: share of real images with a sample nearby, higher is better"),
    ("cas", "accuracy on real test images of a classifier trained on the samples only"),
    ("clip_score", "higher is better"),
    ("clip_zero_shot_accuracy", "higher is better"),
    ("clip_good_fraction", "higher is better"),
)


def per_class(metrics: dict[str, float], prefix: str, name: str, keys: Sequence[str]) -> list[float | None]:
    """The per-class values of ``PREFIX/NAME/KEY`` in class order (None where absent)."""
    return [metrics.get(f"{prefix}/{name}/{key}") for key in keys]


def per_class_chart(metrics: dict[str, float], dataset: str) -> Figure:
    """Bars of per-class classifier accuracy (and CLIP zero-shot accuracy when scored), generated vs real."""
    keys, names = class_keys(dataset), dataset_info(dataset).class_names
    panels = [("classifier_accuracy", "classifier accuracy")]
    if "generated/clip_zero_shot_accuracy" in metrics:
        panels.append(("clip_zero_shot_accuracy", "CLIP zero-shot accuracy"))
    fig = Figure(figsize=(10, 3.2 * len(panels)), layout="constrained")
    x = np.arange(len(keys))
    for ax, (name, title) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels, strict=True):
        for offset, prefix, color in ((-0.2, "generated", "tab:blue"), (0.2, "real", "tab:gray")):
            values = [v if v is not None else np.nan for v in per_class(metrics, prefix, name, keys)]
            ax.bar(x + offset, values, width=0.4, label=f"{prefix} ({metrics[f'{prefix}/{name}']:.1%})", color=color)
        ax.set_xticks(x, names, rotation=30 if dataset != "mnist" else 0)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Per class: generated ({metrics['settings']}) vs real test images")
    return fig


def _fmt(value: float | None, name: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if name.endswith(("accuracy", "fraction", "cas")) else f"{value:.3g}"


def summary_table(metrics: dict[str, Any]) -> str:
    """The overall metrics of ``metrics.json`` as a Markdown table, each beside its floor on real images."""
    return markdown_table(
        ["metric", "generated", "real", ""],
        [
            [name, _fmt(metrics[f"generated/{name}"], name), _fmt(metrics.get(f"real/{name}"), name), direction]
            for name, direction in SUMMARY
            if f"generated/{name}" in metrics
        ],
    )


def timing_line(metrics: dict[str, Any]) -> str:
    """How long sampling (or reading ``samples``) and each metric took."""
    parts = [
        f"{name.removeprefix('time/').removesuffix('_s')} {value:.1f} s"
        for name, value in metrics.items()
        if name.startswith("time/") and name not in ("time/sampling_s", "time/metrics_s", "time/total_s")
    ]
    source = f"Reading {metrics['samples']}" if metrics.get("samples") else "Sampling"
    return (
        f"{source} took {metrics['time/sampling_s']:.1f} s, the metrics {metrics['time/metrics_s']:.1f} s "
        f"({', '.join(parts)})."
    )


def report_markdown(metrics: dict[str, Any], dataset: str) -> str:
    """``report.md``: settings, the overall table, the per-class table and the figures."""
    lines = [
        f"# Evaluation of {metrics['ckpt']}",
        "",
        f"{dataset}, {metrics['num_per_class']} images per class against {metrics['reference_images']} held-out "
        f"test images; {metrics['settings']}.",
        f"Reference classifier: {metrics['classifier/test_accuracy']:.2%} on the full test set. "
        f"CLIP: {metrics['clip/status']}.",
        "`real` scores real images the same way: accuracy and CLIP on held-out test images, distances of "
        "as many training images against the same test reference (the floor a perfect model would reach); "
        "precision, recall, density and coverage use k=3 neighbours in the classifier's features.",
        "",
        summary_table(metrics),
    ]
    keys, names = class_keys(dataset), dataset_info(dataset).class_names
    shown = ("classifier_accuracy", "precision", "recall", "clip_score", "clip_zero_shot_accuracy")
    columns = [c for c in shown if f"generated/{c}" in metrics]
    per_class_rows = [
        [name, *(_fmt(metrics.get(f"{side}/{c}/{key}"), c) for c in columns for side in ("generated", "real"))]
        for key, name in zip(keys, names, strict=True)
    ]
    header = ["class", *(f"{c} {side}" for c in columns for side in ("gen", "real"))]
    lines += ["", "## Per class", "", markdown_table(header, per_class_rows)]
    if "style/classifier_accuracy" in metrics:
        lines += [
            "",
            "## Style control",
            "",
            "Each styled sample asked for a slant and a thickness drawn uniformly between the training set's "
            "10th and 90th percentiles (class-independent), or between its own class's (class-aware); both are "
            "measured again on the sample.",
            "",
            markdown_table(
                ["attribute", "correlation (asked, measured)", "mean abs. error", "bias"],
                [
                    [
                        f"{name}{title}",
                        f"{metrics[f'{prefix}/{name}_correlation']:.3f}",
                        f"{metrics[f'{prefix}/{name}_mae']:.2f} {STYLE_UNITS[name]}",
                        f"{metrics[f'{prefix}/{name}_bias']:+.2f} {STYLE_UNITS[name]}",
                    ]
                    for prefix, title in (("style", ""), ("style/class_aware", " (class-aware)"))
                    for name in STYLE_NAMES
                    if f"{prefix}/{name}_correlation" in metrics
                ],
            ),
            "",
            f"Class accuracy with styles asked for: {metrics['style/classifier_accuracy']:.2%}; "
            f"without: {metrics['generated/classifier_accuracy']:.2%}.",
        ]
    lines += [
        "",
        "![per-class accuracy](per_class.png)",
        "",
        "## Generated (first 10 per class)",
        "",
        "![generated](generated.png)",
        "",
        "## Real test images",
        "",
        "![real](real.png)",
        "",
        timing_line(metrics),
        "",
    ]
    return "\n".join(lines)
