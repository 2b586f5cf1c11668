"""The sweeper of ``hparams_search=optuna``: hydra-optuna-sweeper's, continuing a stored study where it stopped.

hydra-optuna-sweeper loads a study that its storage already holds, but then runs ``n_trials`` more and numbers
its jobs from 0 again, training over the folders of the first trials. This sweeper continues the study:

- ``n_trials`` is the study's total: a rerun launches only the trials still to go (finished ones count,
  whether they completed or failed);
- a trial that an interrupted search left running runs again as itself (same number, same parameters, same
  job folder ``SWEEP_DIR/N``), where training continues from its ``last.ckpt`` (the search passes
  ``resume=true``);
- job numbers go on from the study's trials, so job folder ``N`` always holds trial ``N``.

The sweep folder exists before Optuna opens a storage in it (``sqlite:///${hydra.sweep.dir}/optuna.db``).
Without the ``[cluster]`` extra (hydra-optuna-sweeper) there is nothing to extend and this module defines
no plugin.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:
    OptunaSweeper = None

log = logging.getLogger(__name__)


def continue_study(sweeper: Any) -> None:
    """Set the trials still to go and the next job number of ``sweeper`` (hydra-optuna-sweeper's
    ``OptunaSweeperImpl``) from the study its storage holds, and queue the trials left running to run again."""
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.get_storage(sweeper.storage)
    try:
        study_id = storage.get_study_id_from_name(sweeper.study_name)
    except KeyError:  # a new study
        return
    trials = storage.get_all_trials(study_id, deepcopy=False)
    stopped = [trial for trial in trials if trial.state == TrialState.RUNNING]
    for trial in stopped:  # study.ask() takes waiting trials first, with the parameters they already have
        storage.set_trial_state(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number),
                                TrialState.WAITING)  # fmt: skip
    finished = sum(trial.state.is_finished() for trial in trials)
    total = sweeper.n_trials
    sweeper.n_trials = max(0, total - finished)
    sweeper.job_idx = min((trial.number for trial in stopped), default=len(trials))
    log.info(
        "Continuing study %s: %d of %d trials finished, %d interrupted to run again, %d to go from job %d",
        sweeper.study_name, finished, total, len(stopped), sweeper.n_trials, sweeper.job_idx,
    )  # fmt: skip


if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        """``OptunaSweeper`` (same settings) whose stored study a rerun of the same search continues."""

        def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

        def sweep(self, arguments: list[str]) -> None:
            if self.sweeper.storage is not None:
                continue_study(self.sweeper)
            return super().sweep(arguments)
