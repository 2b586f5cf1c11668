"""Training and sampling throughput of diffusion-lab, against a plain PyTorch loop, in one run.

    python benchmarks/bench.py                      # every preset, then sampling; writes outputs/bench/bench.json
    python benchmarks/bench.py --presets small --steps 20 --skip-ddpm
    python benchmarks/bench.py --overrides experiment=gpu     # the default on a GPU machine

Training: the framework's real step (the configured LightningModule under a Lightning Trainer with
the config's precision, data from the real MNISTDataModule) and a plain PyTorch loop of the same
U-Net, batch and optimizer, in eager fp32 and in the framework's precision. Throughput counts only
steps after the warm-up (which also covers ``torch.compile``). The three are measured in turn,
``--repeats`` times, and each keeps its best round, so a moment of noise on a shared machine does
not decide a ratio. Sampling: seconds for 100 samples (10 per class, guidance 2) with DDPM over all
T steps and DDIM with 50 steps, from an untrained small model (time does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion_lab.config import CONF_DIR, project_root
from diffusion_lab.pipeline import DiffusionPipeline
from diffusion_lab.utils.files import atomic_write_text

PRESETS = ("small", "base", "large")


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The real training config, as ``diffusion-lab-train OVERRIDES...`` composes it, writing to ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
        cfg.paths.output_dir = str(output_dir)
    return cfg


class StepTimer(L.Callback):
    """Wall time of the training steps after ``warmup`` steps (synchronising the GPU at both ends)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.seconds = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.warmup:
            _sync()
            self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, *args: object) -> None:
        _sync()
        if self.start is not None:
            self.seconds = time.perf_counter() - self.start
            self.steps = trainer.global_step - self.warmup


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def framework_img_s(cfg: DictConfig, steps: int, warmup: int) -> float:
    """Images/s of ``trainer.fit`` on the real module and data module, validation and extras off."""
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, objective=instantiate(cfg.objective))
    timer = StepTimer(warmup)
    trainer = instantiate(
        cfg.trainer, max_steps=warmup + steps, max_epochs=-1, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
        plugins=None,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    return timer.steps * cfg.data.batch_size / timer.seconds


def plain_img_s(cfg: DictConfig, steps: int, warmup: int, bf16: bool) -> float:
    """Images/s of a hand-written eager loop: same U-Net, batch, AdamW and objective; data already on the device."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    train = datamodule.splits()[0].to(device)
    images, labels = train.images, train.labels
    objective = instantiate(cfg.objective).to(device)
    unet = instantiate(cfg.model.unet).to(device)
    optimizer = instantiate(cfg.model.optimizer)(params=unet.parameters())
    batch = cfg.data.batch_size
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _sync()
            start = time.perf_counter()
        idx = torch.randint(0, len(labels), (batch,), device=device)
        x0, y = images[idx], labels[idx]
        noised = objective.training_batch(x0, objective.sample_levels(batch, device), torch.randn_like(x0))
        with autocast:
            loss = F.mse_loss(unet(noised.x_in, noised.time, y).float(), noised.target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
    _sync()
    return steps * batch / (time.perf_counter() - start)


def best_of(repeats: int, runs: dict[str, Callable[[], float]]) -> dict[str, float]:
    """The best img/s of each run over ``repeats`` rounds, the runs taking turns within a round."""
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for key, run in runs.items():
            best[key] = max(best[key], run())
    return best


def sampling_seconds(cfg: DictConfig, skip_ddpm: bool) -> dict[str, float]:
    """Seconds for 100 samples with DDPM (all T steps) and DDIM-50, guidance 2, default precision, of an
    eps config's U-Net (DDPM and DDIM fit eps; the cost per step is the same for every objective)."""
    model = instantiate(cfg.model, objective=instantiate(cfg.objective))
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    if torch.cuda.is_available():
        model = model.cuda()
    pipe = DiffusionPipeline(model)
    labels = torch.arange(10).repeat_interleave(10)
    pipe(labels[:10], steps=2)  # warm-up
    result = {}
    runs = {"sample/ddim50_s": ("ddim", 50)} if skip_ddpm else {"sample/ddpm_s": ("ddpm", None),
                                                                  "sample/ddim50_s": ("ddim", 50)}  # fmt: skip
    for key, (sampler, steps) in runs.items():
        _sync()
        start = time.perf_counter()
        pipe(labels, sampler=sampler, steps=steps, guidance=2.0)
        _sync()
        result[key] = time.perf_counter() - start
    return result


def machine() -> dict[str, object]:
    return {
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated model presets")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed training steps before timing")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per measurement; each keeps its best")
    parser.add_argument("--overrides", nargs="*", default=None,
                        help="config overrides (default: trainer=cpu, or experiment=gpu on a GPU)")  # fmt: skip
    parser.add_argument("--skip-ddpm", action="store_true", help="skip the slow 1000-step DDPM sampling")
    parser.add_argument("--output", default=str(project_root() / "outputs" / "bench" / "bench.json"))
    args = parser.parse_args(argv)
    if args.overrides is None:
        args.overrides = ["experiment=gpu"] if torch.cuda.is_available() else ["trainer=cpu"]
    output = Path(args.output)
    results: dict[str, object] = {"machine": machine(), "settings": vars(args)}
    rows = []
    for preset in args.presets.split(","):
        cfg = compose_config([f"model={preset}", *args.overrides], output.parent / "run")
        L.seed_everything(0, verbose=False)
        bf16 = "bf16" in str(cfg.trainer.precision)
        runs = {
            "framework": partial(framework_img_s, cfg, args.steps, args.warmup),
            "fp32": partial(plain_img_s, cfg, args.steps, args.warmup, bf16=False),
        }
        if bf16:
            runs["same"] = partial(plain_img_s, cfg, args.steps, args.warmup, bf16=True)
        best = best_of(args.repeats, runs)
        framework, fp32, same = best["framework"], best["fp32"], best.get("same", best["fp32"])
        key = f"train/{preset}"
        results.update({f"{key}/framework_img_s": framework, f"{key}/plain_fp32_img_s": fp32,
                        f"{key}/plain_same_precision_img_s": same})  # fmt: skip
        rows.append((preset, str(cfg.trainer.precision), cfg.data.batch_size, framework, fp32, same))
        print(f"{preset}: framework {framework:.0f} img/s, plain fp32 {fp32:.0f}, plain same precision {same:.0f}",
              file=sys.stderr, flush=True)  # fmt: skip
    small = compose_config(["model=small", *args.overrides, "objective=eps"], output.parent / "run")
    results.update(sampling_seconds(small, args.skip_ddpm))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["memory/peak_host_mib"] = peak
    if torch.cuda.is_available():
        results["memory/peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("| preset | precision | batch | framework img/s | plain fp32 img/s | speed-up | plain same precision "
          "| overhead |\n| --- | --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip
    for preset, precision, batch, framework, fp32, same in rows:
        print(f"| {preset} | {precision} | {batch} | {framework:.0f} | {fp32:.0f} | {framework / fp32:.2f}x "
              f"| {same:.0f} | {(same - framework) / same:+.1%} |")  # fmt: skip
    for key in ("sample/ddpm_s", "sample/ddim50_s"):
        if key in results:
            print(f"{key}: {results[key]:.1f} s for 100 samples")
    if "sample/ddpm_s" in results:
        print(f"DDIM-50 speed-up over DDPM: {results['sample/ddpm_s'] / results['sample/ddim50_s']:.1f}x")
    print(f"peak host memory: {peak:.0f} MiB; machine: {results['machine']}")
    atomic_write_text(output, json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
