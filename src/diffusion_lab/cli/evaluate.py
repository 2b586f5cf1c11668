"""``diffusion-lab-evaluate``: score a checkpoint's samples (:func:`diffusion_lab.evaluation.run.evaluate`).

Writes ``metrics.json``, ``report.md``, the grids, the per-class chart and ``samples.npz`` into ``output``;
see ``conf/evaluate.yaml`` and :mod:`diffusion_lab.evaluation.run` for what each holds.
"""

from __future__ import annotations

from hydra.errors import InstantiationException
from omegaconf import DictConfig

from diffusion_lab.cli.app import hydra_app
from diffusion_lab.cli.errors import fail
from diffusion_lab.data.sources import DataError
from diffusion_lab.evaluation.classifier import ClassifierError
from diffusion_lab.evaluation.inception import InceptionWeightsError
from diffusion_lab.evaluation.run import evaluate


@hydra_app("evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a bad setting, checkpoint or missing data ends the run with one line."""
    try:
        evaluate(cfg)
    except (InstantiationException, ValueError, DataError, InceptionWeightsError, ClassifierError) as err:
        fail(err)


if __name__ == "__main__":
    main()
