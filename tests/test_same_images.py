"""The same seeds give the same images, bit for bit, as the files under ``tests/fixtures/same_images/`` record.

Those files were written once, from small untrained checkpoints of every objective (also in that folder), by the
sampling paths of the time: the pipeline under CFG, autoguidance, guidance intervals, fp32 and bf16 and several
samplers, and the lab figure of the generation steps. Any change of the library that moves one image by one bit
fails here: a refactor must keep what users' seeds give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diffusion_lab import load_model
from diffusion_lab.reports.lab_figures import visualize_generation_steps

FIXTURES = Path(__file__).parent / "fixtures" / "same_images"
LABELS = list(range(10))

#: Per objective: the samplers it fits, in the order the cases use them (stochastic ones included).
SAMPLERS = {
    "eps": ["ddim", "dpm_solver", "euler_ancestral"],
    "v": ["ddim", "unipc", "ddpm"],
    "flow": ["flow_euler", "dpm_solver", "dpm_solver_sde"],
    "edm": ["edm_euler", "EDMDPMSolverMultistepScheduler", "edm_euler"],
}


def cases(objective: str) -> dict[str, dict[str, Any]]:
    """The pipeline calls recorded for one objective, by name."""
    first, second, third = SAMPLERS[objective]
    return {
        "default": {},
        "cfg_fp32": {"sampler": first, "steps": 5, "guidance": 1.0, "precision": "32"},
        "unguided": {"sampler": second, "steps": 4, "guidance": 0.0, "batch_size": 3},
        "stochastic": {"sampler": third, "steps": 6, "guidance": 0.5, "seed": 7},
        "auto": {"sampler": first, "steps": 4, "guidance": 0.0, "autoguidance": 0.5},
        "auto_cfg_interval": {
            "sampler": first,
            "steps": 4,
            "guidance": 0.3,
            "autoguidance": 1.0,
            "guidance_interval": (0.5, None),
        },
        "rescale": {"sampler": second, "steps": 4, "guidance": 2.0, "guidance_rescale": 0.7},
    }


def render(objective: str) -> dict[str, np.ndarray]:
    """Every recorded image set of one objective's checkpoint, and the arrays of its generation-steps figure."""
    pipe = load_model(FIXTURES / f"{objective}.ckpt", guide=FIXTURES / f"{objective}_guide.ckpt")
    out = {name: pipe(LABELS, **kwargs).numpy() for name, kwargs in cases(objective).items()}
    figure = visualize_generation_steps(pipe, labels=[1, 7], num_snapshots=3, steps=4, seed=3)
    out["figure"] = np.stack([np.asarray(ax.images[0].get_array()) for ax in figure.axes if ax.images])
    return out


@pytest.mark.parametrize("objective", sorted(SAMPLERS))
def test_the_same_seeds_give_the_recorded_images(objective: str) -> None:
    """Every recorded case of every objective reproduces its images exactly."""
    with np.load(FIXTURES / f"{objective}.npz") as recorded:
        expected = dict(recorded)
    got = render(objective)
    assert sorted(got) == sorted(expected)
    for name, images in expected.items():
        assert np.array_equal(got[name], images), f"{objective}/{name}: max diff {np.abs(got[name] - images).max()}"
