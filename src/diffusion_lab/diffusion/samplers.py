"""Samplers: diffusers' schedulers, each fitted to the model's objective (its schedule and ``prediction_type``).

``sampler=NAME`` picks a named scheduler (:func:`named_samplers`: one file of the ``sampler`` config group
each), ``sampler=diffusers sampler.name=CLASS`` any other; every option of ``sampler`` goes to the scheduler's
constructor or to its ``step``. A scheduler that does not fit the model's objective (a flow scheduler on a DDPM
model, a DDPM one on an EDM model) is refused in one line naming those that do.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from importlib.resources import files
from typing import Any

import diffusers
import torch
from omegaconf import OmegaConf
from torch import Tensor

from diffusion_lab import conf
from diffusion_lab.diffusion.objectives import OBJECTIVES, Objective
from diffusion_lab.diffusion.objectives.base import DiscreteObjective, init_parameters
from diffusion_lab.rules import is_int

#: The ``sampler`` config group (``diffusion_lab/conf/sampler/NAME.yaml``): each file is a named sampler, but for
#: ``auto`` (the objective's own, :func:`auto_sampler`) and ``diffusers`` (any scheduler class by ``sampler.name``).
SAMPLER_GROUP = "sampler"
AUTO, ANY_SCHEDULER = "auto", "diffusers"
#: ``sampler=auto``: the named sampler each objective samples with by default (its ``default_sampler``).
AUTO_SAMPLERS: dict[str, str] = {name: cls.default_sampler for name, cls in OBJECTIVES.items()}
#: Titles of figures, by scheduler class.
TITLES = {
    "DDIMScheduler": "DDIM",
    "DDPMScheduler": "DDPM",
    "DPMSolverMultistepScheduler": "DPM-Solver++(2M)",
    "UniPCMultistepScheduler": "UniPC",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler ancestral",
    "HeunDiscreteScheduler": "Heun",
    "EDMEulerScheduler": "EDM Euler",
    "FlowMatchEulerDiscreteScheduler": "flow Euler",
}
#: Arguments of a scheduler's ``step`` that the sampling loop passes itself.
STEP_ARGUMENTS = {"self", "model_output", "timestep", "sample", "generator", "return_dict"}


@functools.cache
def scheduler_classes() -> dict[str, type]:
    """Every scheduler class diffusers exports whose dependencies are installed, by name."""
    found = {}
    for name in dir(diffusers):
        if not name.endswith("Scheduler") or name.startswith("Scheduler"):
            continue
        try:
            cls = getattr(diffusers, name)
            usable = inspect.isclass(cls) and hasattr(cls, "step") and hasattr(cls, "set_timesteps")
            inspect.signature(cls.__init__)
        except (ImportError, AttributeError, TypeError, ValueError):  # a placeholder whose backend is missing
            continue
        if usable:
            found[name] = cls
    return found


@functools.cache
def named_samplers() -> dict[str, dict[str, Any]]:
    """The named samplers of the packaged ``sampler`` config group, read once, in name order: NAME -> the
    :class:`Sampler` arguments ``NAME.yaml`` gives (``name``, the diffusers class; ``default_steps``; its options),
    so ``make_sampler(NAME, objective)`` builds what ``sampler=NAME`` builds. Shared: do not modify it."""
    group = files(conf) / SAMPLER_GROUP
    found = {}
    for entry in sorted(group.iterdir(), key=lambda entry: entry.name):
        name = entry.name.removesuffix(".yaml")
        if entry.name.endswith(".yaml") and name not in (AUTO, ANY_SCHEDULER):
            config = OmegaConf.to_container(OmegaConf.create(entry.read_text()), resolve=True)
            found[name] = {key: value for key, value in config.items() if not key.startswith("_")}
    return found


def fitting_samplers(objective: Objective) -> tuple[list[str], list[str]]:
    """The named samplers and the diffusers scheduler classes that fit ``objective``."""
    classes = scheduler_classes()
    named = [n for n, s in named_samplers().items() if objective.scheduler_config(classes[s["name"]]) is not None]
    return named, sorted(n for n, c in classes.items() if objective.scheduler_config(c) is not None)


def _refusal(name: str, objective: Objective) -> str:
    named, classes = fitting_samplers(objective)
    named_classes = {settings["name"] for settings in named_samplers().values()}
    return (
        f"sampler {name} does not fit objective={objective.name}: use sampler={', '.join(named)}, or "
        f"sampler={ANY_SCHEDULER} sampler.name= one of {', '.join(c for c in classes if c not in named_classes)}"
    )


class Sampler:
    """A diffusers scheduler fitted to a model's objective, with the settings its sampling loop needs.

    Call :meth:`set_timesteps`, then for each entry ``t`` of :attr:`timesteps`: the network on
    ``scale_model_input(x, t)`` at time ``objective.network_time(t)``, then :meth:`step`
    (``diffusion.reverse_process.denoise`` does this on a :meth:`fresh` copy).

    Args:
        objective: the model's objective (it fits the scheduler: betas or sigmas, ``prediction_type``).
        name: the diffusers scheduler class, e.g. ``DDIMScheduler``.
        default_steps: steps when :meth:`set_timesteps` gets None (at most the model's T; None: all T).
        options: the scheduler's constructor arguments (``timestep_spacing``, ``solver_order``...) or its
            ``step`` arguments (DDIM's ``eta``).
    """

    def __init__(self, objective: Objective, name: str, default_steps: int | None = 20, **options: Any) -> None:
        classes = scheduler_classes()
        if name not in classes:
            raise ValueError(
                f"unknown diffusers scheduler sampler.name={name}: use a class name such as "
                f"{', '.join(sorted(fitting_samplers(objective)[1]))}"
            )
        cls = classes[name]
        fitted = objective.scheduler_config(cls)
        if fitted is None:
            raise ValueError(_refusal(name, objective))
        init_options = init_parameters(cls) - {"self"}
        step_options = set(inspect.signature(cls.step).parameters) - STEP_ARGUMENTS
        unknown = sorted(set(options) - init_options - step_options)
        if unknown:
            options_text = ", ".join(sorted(init_options | step_options))
            raise ValueError(f"sampler.{unknown[0]} is not an option of {name}: use one of {options_text}")
        fixed = sorted(set(options) & set(fitted))
        if fixed:
            raise ValueError(f"sampler.{fixed[0]} is set by the model's objective: remove it from the sampler options")
        self.objective = objective
        self.name = name
        self.default_steps = default_steps
        self.step_options = {k: v for k, v in options.items() if k in step_options}
        #: Whether ``step`` draws noise (and so takes the generator).
        self.stochastic = "generator" in inspect.signature(cls.step).parameters
        self.scheduler = cls(**fitted, **{k: v for k, v in options.items() if k in init_options})
        self.num_steps = 0

    @property
    def title(self) -> str:
        """``DDIM, 50 steps``; ``... (stochastic), 20 steps`` for a scheduler set to add noise: for figures."""
        config = self.scheduler.config
        noisy = config.get("stochastic_sampling") or str(config.get("algorithm_type", "")).startswith("sde")
        return f"{TITLES.get(self.name, self.name)}{' (stochastic)' if noisy else ''}, {self.num_steps} steps"

    def set_timesteps(self, steps: int | None = None, device: torch.device | str = "cpu") -> None:
        """Walk ``steps`` steps (None: :attr:`default_steps`, at most T), and reset the scheduler's solver state."""
        limit = self.objective.timesteps if isinstance(self.objective, DiscreteObjective) else None
        if steps is None:
            steps = min(filter(None, (self.default_steps, limit))) if self.default_steps or limit else 20
        if not is_int(steps) or steps < 1 or (limit and steps > limit):
            raise ValueError(f"steps must be an integer in 1..{limit or 'inf'}, got {steps!r}")
        self.scheduler.set_timesteps(steps, device=device)
        self.num_steps = steps

    def reset(self, steps: int | None = None, device: torch.device | str = "cpu") -> None:
        """:meth:`set_timesteps` for a new run: ``steps`` steps, or with None the steps it was set to before
        (its default when it was never set); clears a multistep solver's history either way."""
        self.set_timesteps(steps if steps is not None or not self.num_steps else self.num_steps, device=device)

    def fresh(self) -> Sampler:
        """A copy to walk one run with: the timesteps as set, an empty solver history. This sampler stays as set,
        so one set sampler serves every batch of a call without setting its steps again."""
        run = copy.copy(self)
        run.scheduler = copy.deepcopy(self.scheduler)
        return run

    @property
    def timesteps(self) -> Tensor:
        """``[n]`` the timesteps the loop walks (second-order schedulers visit most of them twice)."""
        return self.scheduler.timesteps

    @property
    def num_evaluations(self) -> int:
        """Network evaluations per image (a guided pass counts once)."""
        return len(self.scheduler.timesteps)

    @property
    def init_noise_sigma(self) -> float:
        """The scale of the starting noise x_T relative to N(0, I)."""
        return float(getattr(self.scheduler, "init_noise_sigma", 1.0))  # flow schedulers start at N(0, I)

    def scale_model_input(self, x: Tensor, timestep: Tensor) -> Tensor:
        """The network input at ``timestep`` (the scheduler's input scaling, identity for most)."""
        scale = getattr(self.scheduler, "scale_model_input", None)  # flow schedulers have none: identity
        return x if scale is None else scale(x, timestep)

    def step(self, output: Tensor, timestep: Tensor, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One scheduler step from ``x`` with the network's ``output`` there: the next sample."""
        extra = {"generator": generator} if self.stochastic else {}
        return self.scheduler.step(output, timestep, x, **extra, **self.step_options).prev_sample


#: What a ``sampler`` config group instantiates to (``_partial_: true``): ``factory(objective=...)``.
SamplerFactory = Callable[..., Sampler]


def make_sampler(sampler: str | Sampler, objective: Objective, **options: Any) -> Sampler:
    """A sampler by name (``auto``, one of :func:`named_samplers` with its config's settings, which ``options``
    override, or a diffusers class name) fitted to ``objective``, or a :class:`Sampler` as given."""
    if isinstance(sampler, Sampler):
        return sampler
    if sampler == AUTO:
        sampler = objective.default_sampler
    settings = named_samplers().get(sampler, {"name": sampler})
    if settings["name"] not in scheduler_classes():
        raise ValueError(
            f"unknown sampler {sampler!r}: use {AUTO}, one of {', '.join(named_samplers())} or a diffusers class name"
        )
    return Sampler(objective, **{**settings, **options})


def auto_sampler(objective: Objective, **options: Any) -> Sampler:
    """``sampler=auto``: the objective's default sampler (:data:`AUTO_SAMPLERS`) with its default steps."""
    return make_sampler("auto", objective, **options)
