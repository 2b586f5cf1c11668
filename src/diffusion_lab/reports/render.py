"""What every report and figure shares: Markdown tables and PNG figures written atomically.

Torch-free, so ``diffusion-lab-report`` starts without loading torch or Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from diffusion_lab.utils.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Resolution of written PNGs.
DPI = 120


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table of ``rows`` under ``header``; cells as given (``str()``), ``None`` as ``-``."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join("-" if cell is None else str(cell) for cell in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)])


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` (folders created), atomically, on a white background."""
    return atomic_write(path, lambda file: fig.savefig(file, format="png", dpi=DPI, facecolor="white"))
