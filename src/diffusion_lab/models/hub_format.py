"""The model folder: a trained model as a diffusers pipeline folder, loaded without unpickling anything.

``diffusion-lab-export`` writes it from a training checkpoint (``save_pretrained`` of
:class:`diffusion_lab.diffusers_pipeline.DiffusionLabPipeline`)::

    DIR/model_index.json   diffusers' index of the pipeline (its class and components) and, under ``diffusion_lab``,
                           what rebuilds the model around its U-Net: objective, schedule, module settings, dataset
                           and class names, style statistics of a styled model, the training recipe, the guide's record
    DIR/pipeline.py        the module ``diffusers.DiffusionPipeline.from_pretrained`` takes the pipeline class from
    DIR/unet/              the U-Net: ``config.json`` and ``diffusion_pytorch_model.safetensors`` (the EMA weights
                           when the run trained with EMA)
    DIR/scheduler/         ``scheduler_config.json``: the objective's default sampler, fitted to its noise levels
    DIR/guide/             the guide of autoguidance, where the model has one: a U-Net folder like ``unet/``
    DIR/README.md          the model card (:mod:`diffusion_lab.reports.model_card`)

Folders of format 1 (``config.json`` with the U-Net's settings, ``model.safetensors`` and ``guide.safetensors``)
load as well. :func:`load_model_folder` rebuilds the :class:`DiffusionModule` from the JSON with the project's own
classes (no ``_target_`` is instantiated, no pickle is read) and loads the weights with ``safetensors``; its
samples are bit-identical to the checkpoint's.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from diffusion_lab import __version__
from diffusion_lab.data.sources import dataset_info
from diffusion_lab.data.styles import StyleStats
from diffusion_lab.diffusion import schedules
from diffusion_lab.diffusion.objectives import OBJECTIVES
from diffusion_lab.diffusion.objectives.base import DiscreteObjective
from diffusion_lab.models.checkpoints import state_difference, upgrade_run_config
from diffusion_lab.models.diffusion_module import DiffusionModule
from diffusion_lab.models.unet import ConditionalUNet

#: diffusers' index of a pipeline folder; its :data:`INDEX_KEY` entry is the project's config of the model.
INDEX_FILE = "model_index.json"
INDEX_KEY = "diffusion_lab"
#: The folders of the U-Net and of autoguidance's guide (each a diffusers model folder), and of the scheduler.
UNET_FOLDER = "unet"
GUIDE_FOLDER = "guide"
SCHEDULER_FOLDER = "scheduler"
CARD_FILE = "README.md"
#: Version of the layout; a folder of a newer layout is refused.
FORMAT_VERSION = 2
#: Format 1: the config (with the U-Net's settings), the weights and the guide's weights, all beside the card.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
GUIDE_FILE = "guide.safetensors"
#: The schedules a folder may name (``schedule.name``).
SCHEDULES = {fn.__name__: fn for fn in (schedules.linear, schedules.quadratic, schedules.cosine)}
#: Training-time settings of ``DiffusionModule`` that say nothing about the trained model.
RUNTIME_SETTINGS = ("channels_last", "compile", "compile_mode")


def _plain(node: dict[str, Any]) -> dict[str, Any]:
    """A config node without its Hydra keys (``_target_``, ``_partial_``) and without nested nodes."""
    return {key: value for key, value in node.items() if not key.startswith("_") and not isinstance(value, dict)}


def _target_name(node: dict[str, Any]) -> str:
    return str(node.get("_target_", "")).rpartition(".")[2]


def folder_config(module: DiffusionModule, checkpoint: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """The project's config of a module loaded from ``checkpoint`` (``model_index.json`` ``diffusion_lab``), with
    ``training`` (recipe, time) recorded as given.

    The keys rebuild the model around its U-Net (``objective``, ``schedule``, ``model``, ``dataset``,
    ``style_stats``); the U-Net's own settings are its ``config`` (``unet/config.json``).
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
    """``diffusion_lab`` ``guide`` of a guide whose own config (as :func:`folder_config` makes it) is given: its
    module settings, its training step, and ``source`` (where it came from); its U-Net is ``guide/``."""
    return {
        "model": guide_config["model"],
        "global_step": guide_config.get("training", {}).get("global_step"),
        "source": source,
    }


def guide_config(config: dict[str, Any]) -> dict[str, Any]:
    """The guide's own config: the folder's, with the guide's module settings and training step (and in format 1
    its U-Net's settings) from ``config["guide"]``."""
    entry = config["guide"]
    return {
        **config,
        **({"unet": entry["unet"]} if "unet" in entry else {}),
        "model": entry["model"],
        "training": {**config.get("training", {}), "global_step": entry.get("global_step")},
    }


def recorded_autoguidance(config: dict[str, Any]) -> float:
    """The autoguidance weight the folder's training recipe samples with (0 when it records none)."""
    return float(config.get("training", {}).get("autoguidance") or 0.0)


def _read_json(path: Path, again: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): {again}") from None


def _again(folder: Path) -> str:
    return f"export it again with diffusion-lab-export ckpt=PATH output={folder}"


def is_pipeline_folder(folder: Path) -> bool:
    """Whether ``folder`` has the diffusers layout (``model_index.json``), not format 1's ``config.json``."""
    return (folder / INDEX_FILE).is_file()


def read_folder_config(folder: Path) -> dict[str, Any]:
    """The project's config of a model folder (``model_index.json`` ``diffusion_lab``, or format 1's
    ``config.json``), or a one-line ``ValueError`` saying what is wrong and what to do."""
    again = _again(folder)
    if is_pipeline_folder(folder):
        path, keys = folder / INDEX_FILE, ("format_version", "schedule", "model", "dataset")
        index = _read_json(path, again)
        config = index.get(INDEX_KEY) if isinstance(index, dict) else None
        if config is None:
            raise ValueError(f"{path} has no {INDEX_KEY} entry, so it is not a diffusion-lab model folder: {again}")
    elif (folder / CONFIG_FILE).is_file():
        path, keys = folder / CONFIG_FILE, ("format_version", "unet", "schedule", "model", "dataset")
        config = _read_json(path, again)
    else:
        raise ValueError(f"{folder} has no {INDEX_FILE}, so it is not a diffusion-lab model folder: {again}")
    missing = [key for key in keys if key not in config] if isinstance(config, dict) else list(keys)
    if missing:
        raise ValueError(f"{path} is not a diffusion-lab model config (missing {', '.join(missing)}): {again}")
    if not isinstance(config["format_version"], int):
        raise ValueError(f"{path} has no integer format_version: {again}")
    if config["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {config['format_version']}: upgrade diffusion-lab to load it")
    return config


def build_module(config: dict[str, Any], unet: ConditionalUNet) -> DiffusionModule:
    """The :class:`DiffusionModule` around ``unet`` that ``config`` describes, built from the project's classes."""
    schedule = dict(config["schedule"])
    build_schedule = SCHEDULES.get(schedule.pop("name", None))
    if build_schedule is None:
        raise ValueError(f"unknown schedule in the model's config: use one of {', '.join(SCHEDULES)}")
    objective = dict(config.get("objective") or {"name": "eps"})  # folders from before objectives: eps
    objective_class = OBJECTIVES.get(objective.pop("name", None))
    if objective_class is None:
        raise ValueError(f"unknown objective in the model's config: use one of {', '.join(OBJECTIVES)}")
    if issubclass(objective_class, DiscreteObjective):
        objective["schedule"] = build_schedule(**schedule)
    optimizer = dict(config.get("training", {}).get("optimizer") or {"name": "AdamW"})
    optimizer_class = getattr(torch.optim, optimizer.pop("name"), None)
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise ValueError("unknown optimizer in the model's config: name one of torch.optim's")
    module = DiffusionModule(
        unet=unet,
        objective=objective_class(**objective),
        optimizer=functools.partial(optimizer_class, **optimizer),
        **config["model"],
    )
    if config.get("style_stats") is not None:
        module.style_stats = StyleStats.from_dict(config["style_stats"])
    return module


def _folder_unet(folder: Path, again: str) -> ConditionalUNet:
    """The untrained U-Net that a diffusers model folder's ``config.json`` describes."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{folder} has no {CONFIG_NAME}: {again}")
    config = _read_json(path, again)
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a U-Net's config (not a JSON object): {again}")
    try:
        return ConditionalUNet.from_config(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} does not describe a U-Net ({err}): {again}") from None


def _load_weights(model: nn.Module, weights: Path, described_by: str, map_location: str | torch.device) -> None:
    """Load ``weights`` into ``model``; a one-line ``ValueError`` for a missing, unreadable or other model's file."""
    if not weights.is_file():
        raise ValueError(f"{weights.parent} has no {weights.name}: export it again with diffusion-lab-export")
    try:
        state = load_file(weights, device=str(map_location))
    except (SafetensorError, OSError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"{weights} is not a readable safetensors file ({reason}): export it again") from None
    differ = state_difference(model.state_dict(), state)
    if differ is not None:
        raise ValueError(
            f"{weights} holds weights of another model than {described_by} describes (first difference: {differ}): "
            "export the folder again from its checkpoint"
        )
    model.load_state_dict(state)


def _load(
    folder: Path, config: dict[str, Any], unet_folder: str, weights_file: str, map_location: str | torch.device
) -> DiffusionModule:
    """The module ``config`` describes with the weights of the folder's ``unet_folder`` (diffusers layout) or
    ``weights_file`` (format 1), in eval mode on ``map_location``."""
    again = _again(folder)
    pipeline_folder = is_pipeline_folder(folder)
    try:
        unet = _folder_unet(folder / unet_folder, again) if pipeline_folder else ConditionalUNet(**config["unet"])
        module = build_module(config, unet)
        dataset_info(config["dataset"]["name"])
    except (TypeError, KeyError) as err:
        raise ValueError(f"{folder} does not describe a model ({type(err).__name__}: {err}): {again}") from None
    if pipeline_folder:
        weights, described_by = folder / unet_folder / SAFETENSORS_WEIGHTS_NAME, f"{unet_folder}/{CONFIG_NAME}"
        _load_weights(module.unet, weights, described_by, map_location)
    else:
        _load_weights(module, folder / weights_file, CONFIG_FILE, map_location)
    return module.to(map_location).eval()


def load_model_folder(
    folder: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[DiffusionModule, dict[str, Any]]:
    """The module of a model folder, in eval mode, and its config; a one-line ``ValueError`` otherwise.

    Refused: a folder without ``model_index.json`` (or format 1's ``config.json``), weights that are missing or
    whose safetensors header does not parse, and weights of another model (other names or shapes than the
    config's U-Net).
    """
    folder = Path(folder)
    config = read_folder_config(folder)
    return _load(folder, config, UNET_FOLDER, WEIGHTS_FILE, map_location), config


def load_folder_guide(
    folder: str | Path, config: dict[str, Any], map_location: str | torch.device = "cpu"
) -> tuple[DiffusionModule, dict[str, Any]] | None:
    """The guide of autoguidance a model folder carries, in eval mode, and its own config (:func:`guide_config`);
    None when the folder has none. Refused in one line as the model's."""
    folder = Path(folder)
    if config.get("guide") is None:
        return None
    try:
        own = guide_config(config)
    except (TypeError, KeyError) as err:
        raise ValueError(f"{folder} does not describe a guide ({type(err).__name__}: {err})") from None
    return _load(folder, own, GUIDE_FOLDER, GUIDE_FILE, map_location), own
