"""What a setting takes, stated once: the rules both the commands' config check and the library apply.

A :class:`Rule` tests one value and says in one line what the key takes, with an example::

    guidance must be a finite number >= 0 (0: the plain conditional model), got -1 (e.g. guidance=2.0)

:mod:`diffusion_lab.config_schema` builds each command's schema from these rules and checks a whole
config before a run starts; the constructors and the pipeline call :meth:`Rule.check` on the same
rules, so a notebook's ``pipe(..., guidance=-1)`` is refused with the same line. Imports nothing of the
project, so every layer may use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """What a key takes: ``test`` accepts a resolved value, ``what`` says it in words, ``example`` is a good value.

    ``low`` and ``high`` are a number's bounds (``open_low``/``open_high``: the bound itself is refused);
    ``integer`` says it must be whole. They also tell the suite which values lie just outside the range.
    """

    test: Callable[[Any], bool]
    what: str
    example: Any
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    integer: bool = False

    def message(self, key: str, value: Any) -> str:
        return f"{key} must be {self.what}, got {value!r} (e.g. {key}={override_text(self.example)})"

    def check(self, key: str, value: Any) -> None:
        """Raise a one-line ``ValueError`` (:meth:`message`) when ``value`` of ``key`` fails the rule."""
        if not self.test(value):
            raise ValueError(self.message(key, value))


def override_text(value: Any) -> str:
    """``value`` as a command line writes it: ``true``, ``null``, ``[16,32]``."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    return str(value)


def is_int(value: Any) -> bool:
    """A whole number given as an int (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool, NaN or infinity)."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _range_words(low: float | None, high: float | None, open_low: bool, open_high: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    if low is not None:
        return f"{'>' if open_low else '>='} {low:g}"
    assert high is not None
    return f"{'<' if open_high else '<='} {high:g}"


def integer(low: int | None = None, high: int | None = None, *, example: int, what: str | None = None) -> Rule:
    """A whole number (not a bool) in ``[low, high]``; every numeric rule has at least one bound."""
    words = what or (
        "a positive integer" if (low, high) == (1, None) else f"an integer {_range_words(low, high, False, False)}"
    )

    def test(value: Any) -> bool:
        return is_int(value) and (low is None or value >= low) and (high is None or value <= high)

    return Rule(test, words, example, low=low, high=high, integer=True)


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    example: float,
    what: str | None = None,
) -> Rule:
    """A finite int or float in the range, its ends included unless ``open_low``/``open_high``."""
    positive = (low, high, open_low) == (0, None, True)
    words = what or ("a positive number" if positive else f"a number {_range_words(low, high, open_low, open_high)}")

    def test(value: Any) -> bool:
        if not is_number(value):
            return False
        above = low is None or (value > low if open_low else value >= low)
        below = high is None or (value < high if open_high else value <= high)
        return above and below

    return Rule(test, words, example, low=low, high=high, open_low=open_low, open_high=open_high)


def optional(rule: Rule) -> Rule:
    """``rule``, or null."""
    return Rule(
        lambda value: value is None or rule.test(value), f"{rule.what} or null", rule.example,
        rule.low, rule.high, rule.open_low, rule.open_high, rule.integer,
    )  # fmt: skip


def either(first: Rule, second: Rule, what: str) -> Rule:
    """A value that passes ``first`` or ``second`` (e.g. a step count or a fraction of an epoch)."""
    bounds = first if first.low is not None or first.high is not None else second
    return Rule(
        lambda value: first.test(value) or second.test(value), what, first.example,
        bounds.low, bounds.high, bounds.open_low, bounds.open_high, bounds.integer,
    )  # fmt: skip


def choice(*options: Any, example: Any = None) -> Rule:
    """One of ``options`` (compared as given: ``32`` and ``"32"`` are both listed where both work)."""
    names = ", ".join(dict.fromkeys(str(option) for option in options))

    def test(value: Any) -> bool:
        return any(value == option and type(value) is type(option) for option in options)

    return Rule(test, f"one of {names}", options[0] if example is None else example)


def list_of(item: Rule, *, example: list[Any], non_empty: bool = False, what: str | None = None) -> Rule:
    """A list whose every item passes ``item``."""
    words = what or f"a {'non-empty ' if non_empty else ''}list of {item.what.removeprefix('a ').removeprefix('an ')}s"

    def test(value: Any) -> bool:
        return isinstance(value, list) and (len(value) > 0 or not non_empty) and all(item.test(v) for v in value)

    return Rule(test, words, example)


BOOLEAN = Rule(lambda value: isinstance(value, bool), "true or false", True)
TEXT = Rule(lambda value: isinstance(value, str) and value.strip() != "", "a non-empty string", "name")
PATH = Rule(lambda value: isinstance(value, str) and value.strip() != "", "a path", "outputs/run")
TARGET = Rule(
    lambda value: isinstance(value, str) and all(part.isidentifier() for part in value.split(".")),
    "a dotted import path", "torch.optim.AdamW",
)  # fmt: skip

# --------------------------------------------------------------------------- settings the library checks too

#: T, the forward process's number of steps (``diffusion.timesteps``; the schedules).
TIMESTEPS = integer(1, example=1000)
#: ``model.cond_drop_prob`` / ``model.style_drop_prob``: how often training drops the condition.
DROP_PROB = number(0, 1, open_high=True, example=0.1)
#: ``data.val_fraction``: the share of the training set held out for validation.
VAL_FRACTION = number(0, 1, open_low=True, open_high=True, example=0.1)
#: ``callbacks.guide_snapshot.fraction``: where in the run autoguidance's guide is kept.
GUIDE_FRACTION = number(0, 1, open_low=True, open_high=True, example=0.33)
#: ``objective.min_snr_gamma``: the gamma of Min-SNR loss weighting (null: none).
MIN_SNR_GAMMA = optional(number(0, open_low=True, example=5.0))
#: ``objective.time_distribution``: how the flow objective draws training times.
TIME_DISTRIBUTION = choice("logit_normal", "uniform")
#: How often a callback runs, in epochs.
EVERY_N_EPOCHS = integer(1, example=1)
#: Images of each class in a sample grid.
GRID_PER_CLASS = integer(1, example=8)
#: Images of each class a FID (and each per-class metric) is computed on: two at least.
FID_PER_CLASS = integer(2, example=100)
#: The classifier-free guidance weight w.
GUIDANCE = number(0, example=2.0, what="a finite number >= 0 (0: the plain conditional model)")
#: ``autoguidance``: the weight of the guide's difference (0: off).
AUTOGUIDANCE = number(0, example=1.0, what="a finite number >= 0 (0: no autoguidance)")
#: ``guidance_rescale``: Lin et al.'s phi.
GUIDANCE_RESCALE = number(0, 1, example=0.0)
#: Images per network pass while sampling.
BATCH_SIZE = integer(1, example=128)
#: The network's precision while sampling (bf16 autocast, or float32).
SAMPLING_PRECISION = choice(32, "32", "bf16", example="bf16")


def _interval(value: Any) -> bool:
    if value is None:
        return True
    if not (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and is_number(value[0])):
        return False
    high = math.inf if value[1] is None else value[1]
    return (is_number(high) or high == math.inf) and 0 <= value[0] <= high


#: ``guidance_interval``: null, or ``[SIGMA_LO, SIGMA_HI]`` with 0 <= SIGMA_LO <= SIGMA_HI; SIGMA_HI null or
#: ``.inf``: no upper end (the flow objective's first step has sigma = infinity).
GUIDANCE_INTERVAL = Rule(
    _interval, "[SIGMA_LO, SIGMA_HI] with 0 <= SIGMA_LO <= SIGMA_HI (SIGMA_HI null: no upper end), or null", [0.3, 5.0]
)
