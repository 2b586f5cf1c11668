"""Draw images of chosen classes from a checkpoint into a PNG grid and an NPZ: what ``diffusion-lab-sample`` runs.

With ``slant=...`` and/or ``thickness=...`` (numbers, or named levels such as ``left`` or ``bold``) a
style-conditioned checkpoint draws that style; the NPZ then also holds the requested ``styles``
``[N, 2]`` (slant in degrees, thickness in pixels; NaN where not asked for).

With ``select_top=N candidates=K`` it draws K candidates per class and keeps the N that CLIP
scores highest against the class prompt (CLIP-guided selection); the NPZ then also holds
``clip_scores`` and ``OUTPUT.json`` lists them per class.

With ``autoguidance=W`` it guides the model with a weaker one (Karras et al. 2024): the checkpoint's own
guide snapshot, or ``guide=PATH``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.data.styles import STYLE_NAMES
from diffusion_lab.evaluation.clip import clip_from_config, select_top
from diffusion_lab.models.checkpoints import checkpoint_file
from diffusion_lab.pipeline import load_model
from diffusion_lab.reports.images import save_samples
from diffusion_lab.sampling_settings import guidance_settings, resolve_device
from diffusion_lab.utils.files import atomic_write_text, check_writable

log = logging.getLogger(__name__)


def _selection(cfg: DictConfig) -> tuple[int, int] | None:
    """``(select_top, candidates)`` when CLIP-guided selection is on, checked together; else None.

    Each value on its own (a positive integer or null) is checked by the command's schema.
    """
    top, candidates = cfg.get("select_top"), cfg.get("candidates")
    if top is None:
        if candidates is not None:
            raise ValueError("candidates=K needs select_top=N (keep the N best of K per class)")
        return None
    candidates = 4 * top if candidates is None else candidates
    if candidates < top:
        raise ValueError(f"candidates must be an integer >= select_top={top}, got {candidates!r}")
    return top, candidates


def sample(cfg: DictConfig) -> tuple[Path, Path]:
    """Load the checkpoint, generate ``num_samples`` per requested class (or select them with CLIP), write PNG + NPZ."""
    selection = _selection(cfg)
    output = Path(cfg.output)
    if output.name in ("", ".", ".."):
        raise ValueError(f"output={cfg.output} names a folder: pass output=FOLDER/NAME (writes NAME.png and NAME.npz)")
    check_writable(output.parent, "output", cfg.output)
    pipe = load_model(checkpoint_file(cfg.ckpt), device=resolve_device(cfg.device), guide=cfg.get("guide"))
    guidance = guidance_settings(cfg, pipe)
    pipe.check_settings(cfg.guidance, cfg.batch_size, str(cfg.precision), **guidance)  # loads the guide
    names = pipe.class_names
    label = OmegaConf.to_object(cfg.label) if OmegaConf.is_config(cfg.label) else cfg.label
    per_class = selection[1] if selection else cfg.num_samples
    labels = pipe.labels(label, per_class)
    style = {name: cfg.get(name) for name in STYLE_NAMES if cfg.get(name) is not None} or None
    # The requested raw attributes [1, 2], checked here (one line for a bad value) before any sampling.
    requested = pipe.style_request(style, 1)
    sampler = pipe.sampler(instantiate(cfg.sampler)(objective=pipe.model.objective), cfg.steps)
    scorer = None
    if selection:
        scorer, status = None, "unknown dataset"
        if pipe.dataset:
            scorer, status = clip_from_config(cfg.get("clip"), pipe.dataset, pipe.device)
        if scorer is None:
            raise ValueError(f"select_top needs CLIP, which is {status}")
    images = pipe(
        labels, seed=cfg.seed, sampler=sampler, guidance=cfg.guidance, batch_size=cfg.batch_size,
        precision=str(cfg.precision), style=None if requested is None else requested.expand(len(labels), -1),
        **guidance,
    )  # fmt: skip
    extra: dict[str, np.ndarray] = {}
    kept = per_class
    if selection:
        kept = selection[0]
        images, labels, scores = select_top(scorer, images, labels, kept)
        extra["clip_scores"] = scores.numpy().astype(np.float32)
    if requested is not None:
        extra["styles"] = requested.expand(len(labels), -1).numpy()
    classes = len(labels) // kept
    nrow = kept if classes > 1 else math.ceil(math.sqrt(len(labels)))
    meta = {"dataset": pipe.dataset, "ckpt": str(cfg.ckpt)} if pipe.dataset else None  # read by evaluate's samples=
    png, npz = save_samples(images, labels, cfg.output, nrow=nrow, extra=extra or None, meta=meta)
    drawn = ", ".join(names[i] for i in labels.unique_consecutive().tolist())
    styled = "".join(f", {name}={value}" for name, value in (style or {}).items())
    auto = f", autoguidance {guidance['autoguidance']:g}" if guidance["autoguidance"] > 0 else ""
    log.info("%d images of %s (%s, w=%g%s, seed %d%s)", len(labels), drawn, sampler.title, cfg.guidance, auto,
             cfg.seed, styled)  # fmt: skip
    if selection:
        report = {
            "clip": scorer.name,
            "candidates_per_class": selection[1],
            "kept_per_class": kept,
            "clip_scores": {names[int(c)]: extra["clip_scores"][(labels == c).numpy()].tolist()
                            for c in labels.unique_consecutive()},
        }  # fmt: skip
        scores_path = npz.with_suffix(".json")
        atomic_write_text(scores_path, json.dumps(report, indent=2) + "\n")
        log.info("Kept the %d of %d per class with the highest CLIP score (%s); scores in %s",
                 kept, selection[1], scorer.name, scores_path)  # fmt: skip
    log.info("Wrote %s and %s", png, npz)
    return png, npz
