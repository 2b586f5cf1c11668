"""``diffusion-lab-figures``: draw the lab figures as PNGs (:func:`diffusion_lab.reports.figure_files.make_figures`).

See ``conf/figures.yaml`` for what is drawn; everything is drawn before the first file is written, so
a bad setting leaves no partial output.
"""

from __future__ import annotations

from hydra.errors import InstantiationException
from omegaconf import DictConfig

from diffusion_lab.cli.app import hydra_app
from diffusion_lab.cli.errors import fail
from diffusion_lab.data.sources import DataError
from diffusion_lab.reports.figure_files import make_figures


@hydra_app("figures")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of ``diffusion-lab-figures``; a bad setting or missing data ends it with one line."""
    try:
        make_figures(cfg)
    except (InstantiationException, DataError, ValueError, FileNotFoundError) as err:
        fail(err)


if __name__ == "__main__":
    main()
