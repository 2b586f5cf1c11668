"""Export a training checkpoint as a model folder people can share (:mod:`diffusion_lab.models.hub_format`).

The folder is a diffusers pipeline folder (``model_index.json``, ``pipeline.py``, ``unet/``, ``scheduler/``, and
``guide/``, the guide of autoguidance, where the checkpoint has one (its guide snapshot) or one is given), with the
model card ``README.md`` and its sample grid ``samples.png``. It is built in a hidden folder beside ``output``
(:func:`~diffusion_lab.utils.files.partial_path`) and renamed into place, so an interrupted export leaves no
half-written folder; an earlier export in ``output`` is replaced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from diffusion_lab.diffusers_pipeline import DiffusionLabPipeline
from diffusion_lab.diffusion.reverse_process import DEFAULT_GUIDANCE
from diffusion_lab.diffusion.samplers import make_sampler
from diffusion_lab.models.checkpoints import read_checkpoint
from diffusion_lab.models.diffusion_module import DiffusionModule
from diffusion_lab.models.hub_format import CARD_FILE, CONFIG_FILE, folder_config, guide_entry, is_pipeline_folder
from diffusion_lab.pipeline import ClassConditionalPipeline, Guide, load_guide, recipe_autoguidance, snapshot_guide
from diffusion_lab.reports.images import class_grid, save_png
from diffusion_lab.reports.model_card import SAMPLES_FILE, model_card
from diffusion_lab.utils.files import atomic_write_text, check_writable, partial_path, remove_stale_partials, writing


def training_record(run_config: dict[str, Any], ckpt: Path) -> dict[str, Any]:
    """What the card says of the training: batch size, precision, EMA decay, the autoguidance weight its recipe
    samples with, and the fit time of the run's ``metrics.json`` (``time/fit_s``, beside ``checkpoints/``)
    when it is there."""
    record: dict[str, Any] = {
        "batch_size": run_config.get("data", {}).get("batch_size"),
        "precision": run_config.get("trainer", {}).get("precision"),
        "ema_decay": (run_config.get("callbacks", {}).get("ema") or {}).get("decay"),
        "autoguidance": recipe_autoguidance(run_config.get("callbacks")),
    }
    run_metrics = ckpt.resolve().parent.parent / "metrics.json"
    if run_metrics.is_file():
        record["time_s"] = json.loads(run_metrics.read_text()).get("time/fit_s")
    return record


def evaluation_metrics(path: str | Path | None, ckpt: Path, log_dir: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The ``metrics.json`` of ``diffusion-lab-evaluate`` for the card, and its path.

    ``path`` given: that file (a one-line ``ValueError`` if it is not an evaluation's). Else the newest
    evaluation of this very checkpoint under ``log_dir/evaluate*/``, if any.
    """
    if path is not None:
        path = Path(path)
        try:
            metrics = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"metrics={path} is not readable JSON ({type(err).__name__}): pass the metrics.json "
                             "that diffusion-lab-evaluate wrote") from None  # fmt: skip
        if not isinstance(metrics, dict) or "generated/fid" not in metrics:
            raise ValueError(f"metrics={path} is not a metrics.json of diffusion-lab-evaluate (no generated/fid)")
        return metrics, path
    candidates = sorted(
        [*log_dir.glob("evaluate/*/metrics.json"), *log_dir.glob("evaluate-multirun/*/*/metrics.json")],
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for candidate in candidates:
        try:
            metrics = json.loads(candidate.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(metrics, dict) and Path(str(metrics.get("ckpt"))).resolve() == ckpt.resolve():
            return metrics, candidate
    return None, None


def _guide_config(guide: Guide) -> dict[str, Any]:
    """The guide's own config: the one of its model folder, or made from its training config."""
    if guide.config is not None:
        return guide.config
    return folder_config(guide.module, {"global_step": guide.step}, {})


def _guide_source(guide: Guide, path: Path | None) -> str:
    """Where the folder's guide came from, without the exporting machine's paths."""
    if path is None:
        return f"the run's guide snapshot at step {guide.step}"
    return f"{Path(path).name} at step {guide.step}"


def check_output(output: Path) -> None:
    """Refuse an ``output`` that holds anything but an earlier export (which would be replaced), or that cannot
    be written (the folder is built beside it)."""
    earlier = output.is_dir() and (is_pipeline_folder(output) or (output / CONFIG_FILE).is_file())
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not earlier)):
        raise ValueError(f"output={output} exists and is not a model folder: pass a new folder")
    if output.name in ("", ".", ".."):
        raise ValueError(f"output={output} names no new folder: pass output=FOLDER/NAME")
    check_writable(output.parent, "output", output)


def export_model(
    ckpt: Path,
    output: Path,
    metrics: dict[str, Any] | None = None,
    grid_per_class: int = 8,
    seed: int = 0,
    steps: int | None = None,
    guidance: float = DEFAULT_GUIDANCE,
    repo_id: str = "USER/REPO",
    guide: Path | None = None,
) -> dict[str, Any]:
    """Write the model folder of checkpoint ``ckpt`` to ``output``; returns its config (``model_index.json``
    ``diffusion_lab``).

    ``metrics`` (an evaluation's ``metrics.json``) go into the card; the card's grid shows
    ``grid_per_class`` samples of each class drawn with the objective's default sampler at
    ``steps``, ``guidance`` and ``seed``;
    ``repo_id`` is the Hub repository the card's usage lines download. The folder carries the guide of
    autoguidance: ``guide`` (a checkpoint or model folder of the same data), else the checkpoint's guide
    snapshot where it has one.
    """
    check_output(output)
    checkpoint = read_checkpoint(ckpt)
    module = DiffusionModule.from_checkpoint(checkpoint, ckpt)
    config = folder_config(module, checkpoint, training_record(module.run_config or {}, ckpt))
    pipe = ClassConditionalPipeline(module)
    carried = load_guide(guide) if guide is not None else snapshot_guide(module, ckpt)
    if carried is not None:
        pipe.set_guide(carried)
        config["guide"] = guide_entry(_guide_config(carried), _guide_source(carried, guide))
    images = pipe(pipe.labels("all", grid_per_class), seed=seed, steps=steps, guidance=guidance)
    params = sum(p.numel() for p in module.parameters())
    card = model_card(config, dict(module.unet.config), params, metrics, repo_id)
    folder = DiffusionLabPipeline(
        unet=module.unet,
        scheduler=make_sampler("auto", module.objective).scheduler,
        guide=None if carried is None else carried.module.unet,
        diffusion_lab=config,
    )
    staging, replaced = partial_path(output), partial_path(output, "replaced")
    try:
        with writing(output):
            remove_stale_partials(output)
            folder.save_pretrained(staging)
            atomic_write_text(staging / CARD_FILE, card)
            save_png(class_grid(images, grid_per_class, grid_per_class), staging / SAMPLES_FILE)
            if output.exists():
                output.rename(replaced)
            staging.rename(output)
        shutil.rmtree(replaced, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return config
