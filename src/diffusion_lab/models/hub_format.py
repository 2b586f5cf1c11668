"""The model folder: a trained model in the Hugging Face Hub layout, loaded without unpickling anything.

``diffusion-lab-export`` writes it from a training checkpoint::

    DIR/model.safetensors   the weights (the EMA weights when the run trained with EMA)
    DIR/guide.safetensors   the guide of autoguidance, where the model has one (its U-Net in config.json ``guide``)
    DIR/config.json         what rebuilds the model: U-Net, schedule, dataset and class names,
                            style statistics of a styled model, and the training recipe
    DIR/README.md           the model card (:mod:`diffusion_lab.reports.model_card`)

:func:`load_model_folder` rebuilds the :class:`DiffusionModule` from ``config.json`` with the
project's own classes (no ``_target_`` is instantiated, no pickle is read) and loads the weights with
``safetensors``; its samples are bit-identical to the checkpoint's.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from diffusion_lab import __version__
from diffusion_lab.data.sources import dataset_info
from diffusion_lab.data.styles import StyleStats
from diffusion_lab.diffusion import schedules
from diffusion_lab.diffusion.objectives import OBJECTIVES
from diffusion_lab.diffusion.objectives.base import DiscreteObjective
from diffusion_lab.models.checkpoints import state_difference, upgrade_run_config
from diffusion_lab.models.diffusion_module import DiffusionModule
from diffusion_lab.models.unet import ConditionalUNet
from diffusion_lab.utils.files import atomic_write, atomic_write_text

WEIGHTS_FILE = "model.safetensors"
#: The weights of autoguidance's guide, beside the model's; ``config.json`` ``guide`` describes its network.
GUIDE_FILE = "guide.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
#: Version of the ``config.json`` layout; a folder of a newer layout is refused.
FORMAT_VERSION = 1
#: The schedules a folder may name (``config.json`` ``schedule.name``).
SCHEDULES = {fn.__name__: fn for fn in (schedules.linear, schedules.quadratic, schedules.cosine)}
#: Training-time settings of ``DiffusionModule`` that say nothing about the trained model.
RUNTIME_SETTINGS = ("channels_last", "compile", "compile_mode")


def _plain(node: dict[str, Any]) -> dict[str, Any]:
    """A config node without its Hydra keys (``_target_``, ``_partial_``) and without nested nodes."""
    return {key: value for key, value in node.items() if not key.startswith("_") and not isinstance(value, dict)}


def _target_name(node: dict[str, Any]) -> str:
    return str(node.get("_target_", "")).rpartition(".")[2]


def folder_config(module: DiffusionModule, checkpoint: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` of a module loaded from ``checkpoint``, with ``training`` (recipe, time) recorded as given.

    The keys rebuild the model (``unet``, ``objective``, ``schedule``, ``model``, ``dataset``, ``style_stats``).
    """
    run = upgrade_run_config(module.run_config or {})
    schedule = run.get("schedule", {})
    if _target_name(schedule) not in SCHEDULES:
        raise ValueError(f"the checkpoint's schedule {schedule.get('_target_')!r} cannot be exported")
    name = run.get("data", {}).get("name")
    if name is None:
        raise ValueError("the checkpoint does not record its dataset (data.name): it was not written by training")
    info = dataset_info(name)
    model = {key: value for key, value in _plain(run["model"]).items() if key not in RUNTIME_SETTINGS}
    optimizer = run["model"].get("optimizer", {})
    return {
        "library": "diffusion-lab",
        "library_version": __version__,
        "format_version": FORMAT_VERSION,
        "unet": _plain(run["model"]["unet"]),
        "objective": {"name": module.objective.name, **_plain(run["objective"])},
        "schedule": {"name": _target_name(schedule), **_plain(schedule)},
        "model": model,
        "dataset": {"name": name, "class_names": list(info.class_names), "image_shape": list(info.image_shape)},
        "style_stats": module.style_stats.to_dict() if module.style_stats is not None else None,
        "training": {
            "optimizer": {"name": _target_name(optimizer), **_plain(optimizer)},
            "global_step": checkpoint.get("global_step"),
            "epoch": checkpoint.get("epoch"),
            **training,
        },
    }


def guide_entry(guide_config: dict[str, Any], source: str) -> dict[str, Any]:
    """``config.json`` ``guide`` of a guide whose own ``config.json`` (as :func:`folder_config` makes it) is given:
    what rebuilds its network (``unet``, ``model``), its training step, and ``source`` (where it came from)."""
    return {
        "unet": guide_config["unet"],
        "model": guide_config["model"],
        "global_step": guide_config.get("training", {}).get("global_step"),
        "source": source,
    }


def _save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    metadata = {"format": "pt", "library": "diffusion-lab"}
    atomic_write(path, lambda file: file.write(save(tensors, metadata)))


def save_model_folder(
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    output: Path,
    card: str,
    guide_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the weights, ``config.json`` and the model card into ``output`` (each file atomically), and the
    guide's weights ``guide_state`` (``config["guide"]`` describes its network) where given."""
    _save_weights(state_dict, output / WEIGHTS_FILE)
    if guide_state is not None:
        _save_weights(guide_state, output / GUIDE_FILE)
    atomic_write_text(output / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    atomic_write_text(output / CARD_FILE, card)


def read_folder_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a model folder, or a one-line ``ValueError`` saying what is wrong and what to do."""
    path = folder / CONFIG_FILE
    again = f"export it again with diffusion-lab-export ckpt=PATH output={folder}"
    if not path.is_file():
        raise ValueError(f"{folder} has no {CONFIG_FILE}, so it is not a diffusion-lab model folder: {again}")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): {again}") from None
    keys = ("format_version", "unet", "schedule", "model", "dataset")
    missing = [key for key in keys if key not in config] if isinstance(config, dict) else list(keys)
    if missing:
        raise ValueError(f"{path} is not a diffusion-lab model config (missing {', '.join(missing)}): {again}")
    if not isinstance(config["format_version"], int):
        raise ValueError(f"{path} has no integer format_version: {again}")
    if config["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {config['format_version']}: upgrade diffusion-lab to load it")
    return config


def build_module(config: dict[str, Any]) -> DiffusionModule:
    """The untrained :class:`DiffusionModule` that ``config.json`` describes, built from the project's classes."""
    schedule = dict(config["schedule"])
    build_schedule = SCHEDULES.get(schedule.pop("name", None))
    if build_schedule is None:
        raise ValueError(f"unknown schedule in config.json: use one of {', '.join(SCHEDULES)}")
    objective = dict(config.get("objective") or {"name": "eps"})  # folders from before objectives: eps
    objective_class = OBJECTIVES.get(objective.pop("name", None))
    if objective_class is None:
        raise ValueError(f"unknown objective in config.json: use one of {', '.join(OBJECTIVES)}")
    if issubclass(objective_class, DiscreteObjective):
        objective["schedule"] = build_schedule(**schedule)
    optimizer = dict(config.get("training", {}).get("optimizer") or {"name": "AdamW"})
    optimizer_class = getattr(torch.optim, optimizer.pop("name"), None)
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise ValueError("unknown optimizer in config.json: name one of torch.optim's")
    module = DiffusionModule(
        unet=ConditionalUNet(**config["unet"]),
        objective=objective_class(**objective),
        optimizer=functools.partial(optimizer_class, **optimizer),
        **config["model"],
    )
    if config.get("style_stats") is not None:
        module.style_stats = StyleStats.from_dict(config["style_stats"])
    return module


def _load_weights(module: DiffusionModule, weights: Path, map_location: str | torch.device) -> None:
    """Load ``weights`` into ``module``; a one-line ``ValueError`` for a missing, unreadable or other model's file."""
    if not weights.is_file():
        raise ValueError(f"{weights.parent} has no {weights.name}: export it again with diffusion-lab-export")
    try:
        state = load_file(weights, device=str(map_location))
    except (SafetensorError, OSError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"{weights} is not a readable safetensors file ({reason}): export it again") from None
    differ = state_difference(module.state_dict(), state)
    if differ is not None:
        raise ValueError(
            f"{weights} holds weights of another model than {CONFIG_FILE} describes (first difference: {differ}): "
            "export the folder again from its checkpoint"
        )
    module.load_state_dict(state)


def load_model_folder(
    folder: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[DiffusionModule, dict[str, Any]]:
    """The module of a model folder, in eval mode, and its ``config.json``; a one-line ``ValueError`` otherwise.

    Refused: a folder without ``config.json``, weights that are missing or whose safetensors header
    does not parse, and weights of another model (other names or shapes than the config's U-Net).
    """
    folder = Path(folder)
    config = read_folder_config(folder)
    try:
        module = build_module(config)
        dataset_info(config["dataset"]["name"])
    except (TypeError, KeyError) as err:
        raise ValueError(f"{folder / CONFIG_FILE} does not describe a model ({type(err).__name__}: {err})") from None
    _load_weights(module, folder / WEIGHTS_FILE, map_location)
    return module.to(map_location).eval(), config


def load_folder_guide(
    folder: str | Path, config: dict[str, Any], map_location: str | torch.device = "cpu"
) -> tuple[DiffusionModule, dict[str, Any]] | None:
    """The guide of autoguidance a model folder carries, in eval mode, and its own ``config.json`` (the folder's
    with the guide's ``unet`` and ``model``); None when the folder has none. Refused in one line as the model's."""
    folder = Path(folder)
    entry = config.get("guide")
    if entry is None:
        return None
    try:
        guide_config = {
            **config,
            "unet": entry["unet"],
            "model": entry["model"],
            "training": {**config.get("training", {}), "global_step": entry.get("global_step")},
        }
        module = build_module(guide_config)
    except (TypeError, KeyError) as err:
        raise ValueError(f"{folder / CONFIG_FILE} does not describe a guide ({type(err).__name__}: {err})") from None
    _load_weights(module, folder / GUIDE_FILE, map_location)
    return module.to(map_location).eval(), guide_config
