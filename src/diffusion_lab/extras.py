"""Optional features and the package extras that install them.

The base install trains, samples, evaluates and exports. CLIP (``[clip]``), the wandb logger (``[wandb]``),
the TensorBoard logger (``[tensorboard]``) and the cluster sweeps (``[cluster]``: Hydra's submitit launcher
and Optuna sweeper) each need an extra (``[all]``: every one). A feature used without its extra stops with
one line that names it: ``logger=wandb needs the [wandb] extra: pip install 'diffusion-lab[wandb]'``.

A CLIP model that only a command's defaults ask for (``diffusion-lab-evaluate``'s ``clip: laion2b``) is
used when its extra is installed, and otherwise skipped like CLIP weights that are missing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping

#: The extra that installs each optional module.
MODULE_EXTRAS: dict[str, str] = {
    "open_clip": "clip",
    "wandb": "wandb",
    "tensorboard": "tensorboard",
    "hydra_plugins.hydra_submitit_launcher": "cluster",
    "hydra_plugins.hydra_optuna_sweeper": "cluster",
}

#: Config choices (``group``, ``option``) and the module they need (``logger=many`` holds TensorBoard).
CHOICE_MODULES: dict[tuple[str, str], str] = {
    ("logger", "wandb"): "wandb",
    ("logger", "tensorboard"): "tensorboard",
    ("logger", "many"): "tensorboard",
}

#: Configs that a Hydra plugin registers (and that are missing without it): the choice a user makes to reach
#: each, and the plugin's module.
PLUGIN_CONFIGS: dict[str, tuple[str, str]] = {
    "hydra/launcher/submitit_slurm": ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher"),
    "hydra/launcher/submitit_local": ("hydra/launcher=submitit_local", "hydra_plugins.hydra_submitit_launcher"),
    "hydra/sweeper/optuna": ("hparams_search=optuna", "hydra_plugins.hydra_optuna_sweeper"),
}


class MissingExtra(ImportError):
    """A feature's module is not installed; the message names the extra that installs it."""

    def __init__(self, feature: str, module: str) -> None:
        extra = MODULE_EXTRAS[module]
        super().__init__(f"{feature} needs the [{extra}] extra: pip install 'diffusion-lab[{extra}]'", name=module)


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found, without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, feature: str) -> None:
    """Raise :class:`MissingExtra` for ``feature`` when ``module`` is not installed."""
    if not installed(module):
        raise MissingExtra(feature, module)


def check_choices(choices: Mapping[str, str | None], overrides: Iterable[str] = ()) -> None:
    """Raise :class:`MissingExtra` for the first chosen option whose extra is missing.

    ``choices`` are Hydra's ``runtime.choices`` (group to option); ``overrides`` the command line's, where
    ``clip=NAME`` (or any ``clip.*`` key) asks for CLIP explicitly.
    """
    for key, chosen in choices.items():  # also a group added under another package: logger@logger.wandb
        module = CHOICE_MODULES.get((key.split("@", 1)[0], str(chosen)))
        if module is not None:
            require(module, f"{key}={chosen}")
    clip = choices.get("clip")
    asked = any(override.lstrip("+~").split("=", 1)[0].split(".", 1)[0] == "clip" for override in overrides)
    if asked and clip not in (None, "none"):
        require("open_clip", f"clip={clip}")


def missing_plugin(config_path: str | None) -> MissingExtra | None:
    """For a missing config that a Hydra plugin registers (``hydra/sweeper/optuna``), the error naming its extra
    when the plugin is not installed; else None."""
    if config_path not in PLUGIN_CONFIGS:
        return None
    feature, module = PLUGIN_CONFIGS[config_path]
    return None if installed(module) else MissingExtra(feature, module)
