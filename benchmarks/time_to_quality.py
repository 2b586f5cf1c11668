"""Time to quality: class accuracy and FID over its floor of the default training run against its minutes.

    python benchmarks/time_to_quality.py                          # the default `make train` run
    python benchmarks/time_to_quality.py --every-s 30 --overrides trainer.max_epochs=2
    python benchmarks/time_to_quality.py --overrides model=base --target 0.99 --fid-ratio 1.5

Trains ``src/diffusion_lab/conf/train.yaml`` (with ``--overrides``) exactly as ``diffusion-lab-train`` does, callbacks
included, and every ``--every-s`` seconds of training, and at its end, keeps a copy of the weights
sampling uses (the EMA weights). The clock counts the whole fit (validation and sample grids too)
but not the copies. After training, each snapshot draws ``--num-per-class`` images of every class
(the run's sampler and the sample-quality callback's steps, guidance, autoguidance and interval: the
defaults of ``diffusion-lab-evaluate``; seed 0) and the held-out reference classifier scores them: class
accuracy, and FID in its features over the real-vs-real FID at the same size (the floor). Autoguidance
guides each snapshot with the weights the run had at ``callbacks.guide_snapshot.fraction`` of that
snapshot's steps (copies are kept every ``--guide-every`` steps), as a run stopped there would have kept
them. ``--settings CFG:AUTO ...`` scores every snapshot under several guidance settings. Prints a table and
writes ``outputs/bench/time_to_quality.json`` with every point and ``minutes_to_target``, the first
snapshot's training minutes with accuracy at or above ``--target`` and FID/floor at or below
``--fid-ratio``, both at once.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from bench import compose_config, machine  # this script's folder is on sys.path
from hydra.utils import instantiate
from lightning.pytorch.callbacks import WeightAveraging
from omegaconf import OmegaConf

from diffusion_lab.config import project_root
from diffusion_lab.evaluation.evaluator import Evaluator
from diffusion_lab.pipeline import ClassConditionalPipeline, Guide
from diffusion_lab.training.fit import build
from diffusion_lab.utils.files import atomic_write_text


def sampling_state(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights sampling uses now: the EMA weights when the run averages them."""
    averaging = [c for c in trainer.callbacks if isinstance(c, WeightAveraging)]
    average = averaging[0]._average_model if averaging else None
    source = average.module if average is not None else pl_module
    return {k: v.detach().to("cpu", copy=True) for k, v in source.state_dict().items()}


class Snapshots(L.Callback):
    """Copies of the sampling weights every ``every_s`` seconds of training and at its end, and lighter
    copies every ``guide_every`` steps for autoguidance's guides.

    The clock starts when training starts; the time spent copying is taken off it.
    """

    def __init__(self, every_s: float, guide_every: int) -> None:
        self.every_s = every_s
        self.guide_every = guide_every
        self.points: list[dict[str, Any]] = []
        #: Optimizer step -> the sampling weights then, every ``guide_every`` steps.
        self.guides: dict[int, dict[str, torch.Tensor]] = {}
        self._start = 0.0
        self._excluded = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self._start - self._excluded

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.guide_every == 0:
            copied = time.perf_counter()
            self.guides[trainer.global_step] = sampling_state(trainer, pl_module)
            self._excluded += time.perf_counter() - copied
        if self.elapsed() >= self.every_s * (len(self.points) + 1):
            self.take(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.take(trainer, pl_module)

    def take(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = self.elapsed()
        copied = time.perf_counter()
        state = sampling_state(trainer, pl_module)
        self.points.append(
            {"seconds": seconds, "step": trainer.global_step, "epoch": trainer.current_epoch, "state": state}
        )
        self._excluded += time.perf_counter() - copied

    def guide_state(self, step: int, fraction: float) -> dict[str, torch.Tensor] | None:
        """The kept weights nearest below ``fraction`` of ``step`` (None: none kept that early)."""
        kept = [s for s in self.guides if 0 < s <= max(1, round(fraction * step))]
        return self.guides[max(kept)] if kept else None


def parse_setting(text: str) -> tuple[float, float]:
    """``CFG:AUTO`` (e.g. ``0.3:0.5``; ``0.3`` alone is ``0.3:0``) -> the two guidance weights."""
    cfg, _, auto = text.partition(":")
    return float(cfg), float(auto or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overrides", nargs="*", default=[], help="training config overrides")
    parser.add_argument("--every-s", type=float, default=60.0, help="seconds of training between snapshots")
    parser.add_argument("--num-per-class", type=int, default=100, help="generated images per class per snapshot")
    parser.add_argument(
        "--settings",
        nargs="*",
        default=None,
        type=parse_setting,
        metavar="CFG:AUTO",
        help="guidance settings, each CFG:AUTO weights (default: the run's sample_quality ones)",
    )
    parser.add_argument("--guide-every", type=int, default=20, help="steps between the kept copies for guides")
    parser.add_argument("--target", type=float, default=0.99, help="class accuracy that counts as reached")
    parser.add_argument("--fid-ratio", type=float, default=1.5, help="FID over its floor that counts as reached")
    parser.add_argument("--output", default=str(project_root() / "outputs" / "bench" / "time_to_quality.json"))
    args = parser.parse_args(argv)
    if args.every_s <= 0 or args.num_per_class < 2 or args.guide_every <= 0:
        parser.error("--every-s and --guide-every must be positive and --num-per-class at least 2")
    output = Path(args.output)
    run_dir = output.parent / "time_to_quality_run"
    shutil.rmtree(run_dir, ignore_errors=True)  # the benchmark's own run folder: a fresh run each time

    cfg = compose_config(args.overrides, run_dir)
    datamodule, model, trainer = build(cfg)
    snapshots = Snapshots(args.every_s, args.guide_every)
    trainer.callbacks.append(snapshots)
    trainer.fit(model, datamodule=datamodule)

    pipe = ClassConditionalPipeline(model.cpu())
    guide_module = copy.deepcopy(model)
    quality = cfg.callbacks.sample_quality
    sampler = pipe.sampler(instantiate(cfg.sampler)(objective=model.objective), quality.steps)
    settings = args.settings or [(quality.guidance, quality.autoguidance)]
    fraction = cfg.callbacks.guide_snapshot.fraction if "guide_snapshot" in cfg.callbacks else 0.33
    interval = OmegaConf.to_object(quality.guidance_interval) if quality.guidance_interval is not None else None
    evaluator = Evaluator(cfg.data.name, cfg.paths.data_dir, args.num_per_class)
    floor = evaluator.real_metrics()["real/fid"]
    labels = torch.arange(model.unet.num_classes).repeat_interleave(args.num_per_class)
    points = []
    for point in snapshots.points:
        model.load_state_dict(point.pop("state"))
        guide_state = snapshots.guide_state(point["step"], fraction)
        if guide_state is not None:
            guide_module.load_state_dict(guide_state)
            pipe.set_guide(Guide(guide_module, cfg.data.name, "the run's earlier weights"))
        point.update(minutes=point["seconds"] / 60, scores={})
        for cfg_w, auto_w in settings:
            if auto_w > 0 and guide_state is None:
                continue
            images = pipe(labels, seed=0, sampler=sampler, guidance=cfg_w, autoguidance=auto_w,
                          guidance_interval=interval)  # fmt: skip
            scores = {**evaluator.accuracy(images, labels, "g"), **evaluator.distances(images, "g")}
            point["scores"][setting_name(cfg_w, auto_w)] = {
                "accuracy": scores["g/classifier_accuracy"], "fid": scores["g/fid"],
                "fid_over_floor": scores["g/fid"] / floor,
            }  # fmt: skip
        points.append(point)
        print(f"{point['minutes']:5.2f} min (step {point['step']}): "
              + ", ".join(f"{k} {v['accuracy']:.1%} {v['fid_over_floor']:.2f}x" for k, v in point["scores"].items()),
              file=sys.stderr, flush=True)  # fmt: skip

    names = [setting_name(*s) for s in settings]
    reached = {
        name: next((p["minutes"] for p in points if name in p["scores"]
                    and p["scores"][name]["accuracy"] >= args.target
                    and p["scores"][name]["fid_over_floor"] <= args.fid_ratio), None)
        for name in names
    }  # fmt: skip
    first_below = {
        f"{name} <= {ratio:g}x": next((p["minutes"] for p in points if name in p["scores"]
                                        and p["scores"][name]["fid_over_floor"] <= ratio), None)
        for name in names for ratio in (2.0, 1.5)
    }  # fmt: skip
    result = {
        "settings": {**vars(args), "settings": names, "sampler": sampler.title, "guidance_interval": interval,
                     "guide_fraction": fraction, "fid_floor": floor, "classifier": "reference",
                     "run_dir": str(run_dir)},
        "machine": machine(),
        "points": points,
        "minutes_to_target": reached,
        "minutes_to_fid_ratio": first_below,
        "final": points[-1]["scores"],
        "train_minutes": points[-1]["minutes"],
    }  # fmt: skip
    print("| training minutes | step | epoch | " + " | ".join(f"{n}: accuracy, FID/floor" for n in names)
          + f" |\n|{' --- |' * (3 + len(names))}")  # fmt: skip
    for p in points:
        cells = [f"{p['scores'][n]['accuracy']:.1%}, {p['scores'][n]['fid_over_floor']:.2f}x" if n in p["scores"]
                 else "" for n in names]  # fmt: skip
        print(f"| {p['minutes']:.2f} | {p['step']} | {p['epoch']} | " + " | ".join(cells) + " |")
    print(f"({sampler.title}, {args.num_per_class} per class, floor {floor:.2f})")
    for name, minutes in reached.items():
        text = f"{minutes:.2f} minutes" if minutes is not None else "not reached"
        print(f"{name}: {args.target:.0%} class accuracy and FID <= {args.fid_ratio:g}x floor: {text}")
    for name, minutes in first_below.items():
        text = f"{minutes:.2f} minutes" if minutes is not None else "not reached"
        print(f"{name}: first at {text}")
    atomic_write_text(output, json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


def setting_name(cfg_w: float, auto_w: float) -> str:
    """A guidance setting's name in the table and the JSON: ``CFG w=0.3``, ``CFG w=0.3 + auto w=0.5``, ``none``."""
    parts = [f"CFG w={cfg_w:g}"] if cfg_w else []
    parts += [f"auto w={auto_w:g}"] if auto_w else []
    return " + ".join(parts) or "none"


if __name__ == "__main__":
    raise SystemExit(main())
