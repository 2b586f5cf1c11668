"""Start-up checks of a training config: a bad value is refused before any work, naming its key and the fix.

Constructors check what they own (a schedule its betas, the U-Net its activation); this module
checks the values that would otherwise fail late (in the middle of ``fit``) or with a message that
does not name the config key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

_MISSING = object()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def positive_number(value: Any) -> bool:
    return _is_number(value) and value > 0


def non_negative_number(value: Any) -> bool:
    return _is_number(value) and value >= 0


def fraction_open(value: Any) -> bool:
    return _is_number(value) and 0 < value < 1


def probability(value: Any) -> bool:
    """A number in [0, 1): a dropout or drop rate (1 would drop everything)."""
    return _is_number(value) and 0 <= value < 1


def boolean(value: Any) -> bool:
    return isinstance(value, bool)


def steps_limit(value: Any) -> bool:
    return value is None or (_is_int(value) and value >= -1)


def channel_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(positive_int(c) for c in value)


def optional_non_negative(value: Any) -> bool:
    return value is None or non_negative_number(value)


def val_check_interval(value: Any) -> bool:
    return positive_int(value) or (_is_number(value) and 0 < value <= 1)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "bf16", "16-mixed", "16-true", "16", "64-true", "64")

#: (config key, test, what the value must be). Keys a config does not have are skipped.
CHECKS: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", _is_int, "an integer"),
    ("diffusion.timesteps", positive_int, "a positive integer"),
    ("data.batch_size", positive_int, "a positive integer"),
    ("data.eval_batch_size", positive_int, "a positive integer"),
    ("data.val_fraction", fraction_open, "a number strictly between 0 and 1"),
    ("model.unet.down_chs", channel_list, "a non-empty list of positive channel counts, e.g. [16,32,64]"),
    ("model.unet.num_res_blocks", positive_int, "a positive integer"),
    ("model.unet.dropout", probability, "a number in [0, 1)"),
    ("model.cond_drop_prob", probability, "a number in [0, 1)"),
    ("model.style_drop_prob", probability, "a number in [0, 1)"),
    ("model.min_snr_gamma", lambda v: v is None or (_is_number(v) and v > 0), "a positive number or null"),
    ("model.compile", boolean, "true or false"),
    ("model.style_conditioning", boolean, "true or false"),
    ("model.compile_mode", lambda v: v in COMPILE_MODES, f"one of {', '.join(COMPILE_MODES)}"),
    ("model.optimizer.lr", positive_number, "a positive number, e.g. 2e-3"),
    ("model.optimizer.weight_decay", non_negative_number, "a number >= 0"),
    ("trainer.max_epochs", steps_limit, "an integer >= -1 (-1: no limit)"),
    ("trainer.max_steps", steps_limit, "an integer >= -1 (-1: no limit)"),
    ("trainer.precision", lambda v: str(v) in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    ("trainer.gradient_clip_val", optional_non_negative, "a number >= 0 or null"),
    ("trainer.val_check_interval", val_check_interval, "a fraction of an epoch in (0, 1] or a step count"),
    ("trainer.log_every_n_steps", positive_int, "a positive integer"),
    ("callbacks.ema.decay", fraction_open, "a number strictly between 0 and 1, e.g. 0.995"),
    ("callbacks.early_stopping.patience", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("callbacks.sample_quality.num_per_class", lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    ("callbacks.sample_quality.every_n_epochs", positive_int, "a positive integer"),
]


def validate_train_config(cfg: DictConfig) -> None:
    """Raise ``ValueError("KEY must be WHAT, got VALUE")`` for the first bad value of ``cfg``."""
    for key, test, what in CHECKS:
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is _MISSING:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_object(value)
        if not test(value):
            raise ValueError(f"{key} must be {what}, got {value!r}")
    if cfg.get("resume") and cfg.get("ckpt_path"):
        raise ValueError("resume=true and ckpt_path are exclusive: resume continues the run dir's last.ckpt")
