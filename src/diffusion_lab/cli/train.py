"""``diffusion-lab-train``: fit a class-conditioned diffusion model from the composed Hydra config.

The command is :func:`diffusion_lab.training.fit.train`, the function the tests call, plus one-line
errors, a DDP job of a sweep in a process of its own, and the value a sweeper optimises
(``optimized_metric``: null in ``conf/train.yaml``, ``val/loss`` in ``conf/hparams_search/optuna.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping

from hydra.errors import InstantiationException
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from diffusion_lab.cli.app import hydra_app
from diffusion_lab.cli.errors import fail
from diffusion_lab.data.sources import DataError
from diffusion_lab.training.checkpointing import CheckpointWriteError, NonFiniteLossError
from diffusion_lab.training.fit import train
from diffusion_lab.training.sweep_jobs import ChildFailed, needs_own_process, share_cores, train_in_child


def optimized_value(cfg: DictConfig, metrics: Mapping[str, object]) -> float | None:
    """The run's value of ``optimized_metric`` (None when the config names none), for sweepers."""
    name = cfg.get("optimized_metric")
    if name is None:
        return None
    value = metrics.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        keys = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))[:12])
        raise ValueError(
            f"optimized_metric={name} is not among the run's final metrics ({keys}, ...): set optimized_metric "
            "to a key of the run's metrics.json"
        )
    return float(value)


@hydra_app("train", handle_sigterm=False)
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the run's ``optimized_metric`` for sweepers.

    A bad config value or missing data ends the run with one line that names the problem; in a ``-m``
    sweep the job fails alone (:func:`diffusion_lab.cli.errors.fail`).
    """
    share_cores()
    try:
        metrics = train_in_child() if needs_own_process(cfg) else train(cfg)
        return optimized_value(cfg, metrics)
    except (
        CheckpointWriteError, ChildFailed, DataError, InstantiationException, MisconfigurationException,
        NonFiniteLossError, ValueError,
    ) as err:  # fmt: skip
        fail(err)  # also Lightning's own late checks of trainer.* values


if __name__ == "__main__":
    main()
