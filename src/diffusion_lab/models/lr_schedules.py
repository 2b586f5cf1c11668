"""Learning-rate schedules that span a run whose length the module fills in."""

from __future__ import annotations

import functools
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _cosine(start: float, end: float, fraction: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1.0)


def one_cycle_factor(
    step: int, total_steps: int, pct_start: float, div_factor: float, final_div_factor: float
) -> float:
    """Multiplier of the peak lr at ``step``: ``OneCycleLR``'s cosine warm-up and anneal, held at its end.

    Rises from ``1 / div_factor`` to 1 over the first ``pct_start`` of ``total_steps``, then falls to
    ``1 / (div_factor * final_div_factor)`` at step ``total_steps - 1``, and stays there after it.
    """
    initial, final = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)
    peak_step = float(pct_start * total_steps) - 1
    step = min(step, total_steps - 1)
    if step <= peak_step:
        return _cosine(initial, 1.0, step / peak_step) if peak_step > 0 else 1.0
    return _cosine(1.0, final, (step - peak_step) / max(total_steps - 1 - peak_step, 1e-12))


def one_cycle(
    optimizer: Optimizer,
    total_steps: int,
    pct_start: float = 0.1,
    div_factor: float = 25.0,
    final_div_factor: float = 100.0,
) -> LambdaLR:
    """One-cycle schedule over ``total_steps`` optimizer steps, peaking at the optimizer's lr.

    The same curve as ``torch.optim.lr_scheduler.OneCycleLR`` (cosine both ways, no momentum
    cycling), but a run continued past ``total_steps`` (a resume with a larger ``max_steps``) keeps
    the final lr instead of failing, and its length comes from the run that loads it: a checkpoint
    continued with a longer run stretches the curve to the new length.
    """
    if not 0.0 < pct_start < 1.0 or div_factor <= 0 or final_div_factor <= 0 or total_steps < 1:
        raise ValueError(
            "pct_start must be in (0, 1), div_factor and final_div_factor positive, "
            f"total_steps >= 1; got {pct_start}, {div_factor}, {final_div_factor}, {total_steps}"
        )
    factor = functools.partial(
        one_cycle_factor, total_steps=total_steps, pct_start=pct_start, div_factor=div_factor,
        final_div_factor=final_div_factor,
    )  # fmt: skip
    return LambdaLR(optimizer, factor)
