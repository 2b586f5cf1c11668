"""The run's loggers: built from ``logger`` (one, several or none), a CSV log that survives a resumed run (it
keeps the rows written before the restart), a wandb logger that says in one line what an online run lacks, and
the final metrics beside the hyper-parameters in TensorBoard's HParams view."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from diffusion_lab.extras import require


def instantiate_loggers(logger_cfg: Mapping[str, Any] | None) -> list[Logger]:
    """The loggers of a ``logger`` config: one logger's config (``_target_`` at its top: ``logger=csv``), a
    mapping of them (``logger=many``: ``logger.csv``, ``logger.tensorboard``, ``logger.wandb``), or none
    (``logger=none``, null); an entry set to null (``logger.csv=null``) is left out."""
    if not logger_cfg:
        return []
    if "_target_" in logger_cfg:
        return [instantiate(logger_cfg)]
    return [instantiate(c) for c in logger_cfg.values() if isinstance(c, Mapping) and "_target_" in c]


def log_final_metrics(loggers: list[Logger], metrics: Mapping[str, float], step: int) -> None:
    """Give TensorBoard the run's final ``metrics`` beside its hyper-parameters, for its HParams view.

    Logged at the final ``step``: an earlier step would make TensorBoard drop the later points of those
    curves as orphaned. The other loggers keep the last value of every metric themselves.
    """
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and metrics:
            logger.log_hyperparams(logger.hparams, metrics=dict(metrics), step=step)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` grows across ``resume=true`` restarts of the same run.

    Steps logged after the last checkpoint and before a kill are logged again by the resumed run,
    so such steps can appear twice.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class CheckedWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger``, whose online run (``logger.offline=false``) fails fast and clearly.

    - No API key: one line naming ``wandb login``, ``WANDB_API_KEY`` and the offline default, raised
      when the run starts, before any training step.
    - A key but no server within ``init_timeout`` seconds (no network, a firewall): a warning, and the run
      logs offline instead (``wandb sync`` uploads it later) rather than hanging or failing.

    Args:
        init_timeout: seconds wandb may take to start an online run before the run goes offline.
        **kwargs: ``WandbLogger``'s.

    Raises:
        MissingExtra: wandb is not installed (the ``[wandb]`` extra).
    """

    def __init__(self, *args: Any, init_timeout: float = 30.0, **kwargs: Any) -> None:
        require("wandb", "logger=wandb")
        super().__init__(*args, **kwargs)
        if not self._offline and "settings" not in self._wandb_init:
            import wandb

            self._wandb_init["settings"] = wandb.Settings(init_timeout=init_timeout)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is not None or self._offline:
            return WandbLogger.experiment.fget(self)
        import wandb

        try:
            return WandbLogger.experiment.fget(self)
        except wandb.errors.UsageError as err:
            if "api key" not in str(err).lower():
                raise
            raise ValueError(
                "logger.offline=false needs a wandb API key: run `wandb login` or set WANDB_API_KEY, or keep the "
                "offline default (logger.offline=true) and upload later with `wandb sync`"
            ) from None
        except wandb.errors.CommError as err:
            reason = " ".join(str(err).split())[:200]
            rank_zero_warn(
                f"wandb could not start an online run ({reason}): logging offline instead; `wandb sync "
                f"{self.save_dir}/wandb/offline-run-*` uploads it later"
            )
            wandb.teardown()  # ends the session that still holds the failed run's id
            self._offline = True
            self._wandb_init.pop("settings", None)
            self._wandb_init["mode"] = "offline"
            return WandbLogger.experiment.fget(self)
