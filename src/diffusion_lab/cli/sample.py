"""``diffusion-lab-sample``: draw images of chosen classes from a checkpoint (:func:`diffusion_lab.sampling.sample`).

Writes ``OUTPUT.png`` and ``OUTPUT.npz`` (and with ``select_top`` the CLIP scores in ``OUTPUT.json``); see
``conf/sample.yaml`` and :mod:`diffusion_lab.sampling` for what each holds.
"""

from __future__ import annotations

from hydra.errors import InstantiationException
from omegaconf import DictConfig

from diffusion_lab.cli.app import hydra_app
from diffusion_lab.cli.errors import fail
from diffusion_lab.data.sources import DataError
from diffusion_lab.sampling import sample


@hydra_app("sample")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a bad label, setting or checkpoint ends the run with one line."""
    try:
        sample(cfg)
    except (InstantiationException, ValueError, DataError) as err:
        fail(err)


if __name__ == "__main__":
    main()
