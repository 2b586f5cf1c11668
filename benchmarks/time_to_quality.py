"""Time to quality: class accuracy and FID over its floor of the default training run against its minutes.

    python benchmarks/time_to_quality.py                          # the default `make train` run
    python benchmarks/time_to_quality.py --every-s 30 --overrides trainer.max_epochs=2
    python benchmarks/time_to_quality.py --overrides model=base --target 0.99 --fid-ratio 1.5

Trains ``conf/train.yaml`` (with ``--overrides``) exactly as ``diffusion-lab-train`` does, callbacks
included, and every ``--every-s`` seconds of training, and at its end, keeps a copy of the weights
sampling uses (the EMA weights). The clock counts the whole fit (validation and sample grids too)
but not the copies. After training, each snapshot draws ``--num-per-class`` images of every class
(the run's sampler and the sample-quality callback's steps, guidance and interval: the defaults of
``diffusion-lab-evaluate``; seed 0) and the held-out reference classifier scores them: class accuracy,
and FID in its features over the real-vs-real FID at the same size (the floor). Prints a table and
writes ``outputs/bench/time_to_quality.json`` with every point and ``minutes_to_target``, the first
snapshot's training minutes with accuracy at or above ``--target`` and FID/floor at or below
``--fid-ratio``, both at once.
"""

from __future__ import annotations

import argparse
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
from diffusion_lab.pipeline import DiffusionPipeline
from diffusion_lab.training.fit import build
from diffusion_lab.utils.files import atomic_write_text


class Snapshots(L.Callback):
    """Copies of the sampling weights every ``every_s`` seconds of training and at its end.

    The clock starts when training starts; the time spent copying is taken off it.
    """

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.points: list[dict[str, Any]] = []
        self._start = 0.0
        self._excluded = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self._start - self._excluded

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.elapsed() >= self.every_s * (len(self.points) + 1):
            self.take(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.take(trainer, pl_module)

    def take(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = self.elapsed()
        copied = time.perf_counter()
        averaging = [c for c in trainer.callbacks if isinstance(c, WeightAveraging)]
        average = averaging[0]._average_model if averaging else None
        source = average.module if average is not None else pl_module
        state = {k: v.detach().to("cpu", copy=True) for k, v in source.state_dict().items()}
        self.points.append(
            {"seconds": seconds, "step": trainer.global_step, "epoch": trainer.current_epoch, "state": state}
        )
        self._excluded += time.perf_counter() - copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overrides", nargs="*", default=[], help="training config overrides")
    parser.add_argument("--every-s", type=float, default=60.0, help="seconds of training between snapshots")
    parser.add_argument("--num-per-class", type=int, default=100, help="generated images per class per snapshot")
    parser.add_argument("--guidance", type=float, default=None, help="guidance weight (default: the run's)")
    parser.add_argument("--target", type=float, default=0.99, help="class accuracy that counts as reached")
    parser.add_argument("--fid-ratio", type=float, default=1.5, help="FID over its floor that counts as reached")
    parser.add_argument("--output", default=str(project_root() / "outputs" / "bench" / "time_to_quality.json"))
    args = parser.parse_args(argv)
    if args.every_s <= 0 or args.num_per_class < 2:
        parser.error("--every-s must be positive and --num-per-class at least 2")
    output = Path(args.output)
    run_dir = output.parent / "time_to_quality_run"
    shutil.rmtree(run_dir, ignore_errors=True)  # the benchmark's own run folder: a fresh run each time

    cfg = compose_config(args.overrides, run_dir)
    datamodule, model, trainer = build(cfg)
    snapshots = Snapshots(args.every_s)
    trainer.callbacks.append(snapshots)
    trainer.fit(model, datamodule=datamodule)

    pipe = DiffusionPipeline(model.cpu())
    quality = cfg.callbacks.sample_quality
    sampler = pipe.sampler(instantiate(cfg.sampler)(objective=model.objective), quality.steps)
    guidance = quality.guidance if args.guidance is None else args.guidance
    interval = OmegaConf.to_object(quality.guidance_interval) if quality.guidance_interval is not None else None
    evaluator = Evaluator(cfg.data.name, cfg.paths.data_dir, args.num_per_class)
    floor = evaluator.real_metrics()["real/fid"]
    labels = torch.arange(model.unet.num_classes).repeat_interleave(args.num_per_class)
    points = []
    for point in snapshots.points:
        model.load_state_dict(point.pop("state"))
        images = pipe(labels, seed=0, sampler=sampler, guidance=guidance, guidance_interval=interval)
        scores = {**evaluator.accuracy(images, labels, "g"), **evaluator.distances(images, "g")}
        point.update(minutes=point["seconds"] / 60, accuracy=scores["g/classifier_accuracy"], fid=scores["g/fid"])
        point["fid_over_floor"] = point["fid"] / floor
        points.append(point)
        print(f"{point['minutes']:5.2f} min (step {point['step']}): accuracy {point['accuracy']:.1%}, "
              f"FID/floor {point['fid_over_floor']:.2f}", file=sys.stderr, flush=True)  # fmt: skip

    reached = [p["minutes"] for p in points if p["accuracy"] >= args.target and p["fid_over_floor"] <= args.fid_ratio]
    settings = {"sampler": sampler.title, "guidance": guidance, "guidance_interval": interval, "fid_floor": floor}
    result = {
        "settings": {**vars(args), **settings, "classifier": "reference", "run_dir": str(run_dir)},
        "machine": machine(),
        "points": points,
        "minutes_to_target": reached[0] if reached else None,
        "final_accuracy": points[-1]["accuracy"],
        "train_minutes": points[-1]["minutes"],
    }
    print(f"| training minutes | step | epoch | class accuracy ({sampler.title}, w={guidance:g}, "
          f"{args.num_per_class}/class) | FID | FID/floor |\n| --- | --- | --- | --- | --- | --- |")  # fmt: skip
    for p in points:
        print(f"| {p['minutes']:.2f} | {p['step']} | {p['epoch']} | {p['accuracy']:.1%} | {p['fid']:.1f} "
              f"| {p['fid_over_floor']:.2f} |")  # fmt: skip
    target = f"{result['minutes_to_target']:.2f} minutes" if reached else "not reached"
    print(f"{args.target:.0%} class accuracy and FID <= {args.fid_ratio:g}x floor (floor {floor:.2f}): {target}")
    atomic_write_text(output, json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
