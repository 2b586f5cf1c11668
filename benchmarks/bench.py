"""Training and sampling throughput of diffusion-lab, against a plain PyTorch loop, in one run.

    python benchmarks/bench.py                      # every preset, then sampling; writes outputs/bench/bench.json
    python benchmarks/bench.py --presets small --steps 20 --skip-ddpm
    python benchmarks/bench.py --overrides experiment=gpu     # the default on a GPU machine

Training: the framework's real step (the configured LightningModule under a Lightning Trainer with
the config's precision, logger and per-step callbacks: EMA, progress bar, NaN check; data from the
real MNISTDataModule) and the same recipe written by hand as a plain PyTorch loop (U-Net, batch,
objective, label dropout, AdamW, clipping, per-step LR schedule, a foreach EMA), in eager fp32 and in
the framework's precision. EMA updates from the first step, as in all but a run's first hundred.
Throughput counts only steps after the warm-up (which also covers ``torch.compile``). The runs take
turns, ``--repeats`` times, and each keeps its best round, so a moment of noise on a shared machine
does not decide a ratio. Host time: the framework's and the plain loop's step at ``--host-batch`` 2,
where the arithmetic is negligible and what is left is the host's work per step (Python, operator
dispatch, kernel launches on a GPU): the bound of a GPU step. Sampling: seconds for 100 samples (10
per class, guidance 2) with DDPM over all T steps and DDIM with 50 steps, and for ``--sample-count``
(1,000) at the default sampling settings, from untrained small models (time does not depend on the weights).
The limit: the FLOPs of a training step per image (``FlopCounterMode`` on the preset's U-Net), the GFLOP/s each
run reaches, and the roofline: every convolution of the step timed alone in the trainer's precision, the rate
the step can approach; beside it, a 3x3 convolution's GFLOP/s alone at the U-Nets' widths and map sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import math
import os
import platform
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from diffusion_lab.config import CONF_DIR, project_root
from diffusion_lab.diffusion.reverse_process import DEFAULT_GUIDANCE
from diffusion_lab.pipeline import ClassConditionalPipeline, Guide
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


#: Callbacks of the training config that act at validation or at the end of the fit, never per step: left out
#: of the timed runs (sample quality would train the reference classifier at the end of each one).
NOT_PER_STEP = ("sample_grid", "sample_quality", "model_checkpoint", "metrics_json")


def framework_img_s(cfg: DictConfig, steps: int, warmup: int) -> float:
    """Images/s of ``trainer.fit`` on the real module and data module, with the config's logger and its per-step
    callbacks (EMA, progress bar, NaN check, LR monitor); validation off."""
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, objective=instantiate(cfg.objective))
    timer = StepTimer(warmup)
    callbacks = [instantiate(c) for k, c in cfg.callbacks.items() if c and k not in NOT_PER_STEP]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(
        cfg.trainer, max_steps=warmup + steps, max_epochs=-1, limit_val_batches=0, logger=logger,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[*callbacks, timer], plugins=None,
    )  # fmt: skip
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # the progress bar draws, unseen
        trainer.fit(model, datamodule=datamodule)
    return timer.steps * cfg.data.batch_size / timer.seconds


def plain_img_s(cfg: DictConfig, steps: int, warmup: int, bf16: bool) -> float:
    """Images/s of the same recipe written by hand as an eager loop: U-Net, batch, objective, label dropout,
    AdamW, gradient clipping, the per-step LR schedule and EMA of the config; data already on the device."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    train = datamodule.splits()[0].to(device)
    images, labels = train.images, train.labels
    objective = instantiate(cfg.objective).to(device)
    unet = instantiate(cfg.model.unet).to(device)
    params = list(unet.parameters())
    optimizer = instantiate(cfg.model.optimizer)(params=params)
    schedule = instantiate(cfg.model.lr_scheduler) if cfg.model.get("lr_scheduler") is not None else None
    per_step = schedule is not None and "total_steps" in inspect.signature(schedule).parameters
    scheduler = schedule(optimizer=optimizer, total_steps=warmup + steps) if per_step else None
    ema_cfg = cfg.callbacks.get("ema")
    ema = [p.detach().clone() for p in params] if ema_cfg else None
    ema_start = (ema_cfg.get("update_starting_at_step") or 0) if ema_cfg else 0
    batch, drop_prob, null_class = cfg.data.batch_size, cfg.model.cond_drop_prob, unet.null_class
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _sync()
            start = time.perf_counter()
        idx = torch.randint(0, len(labels), (batch,), device=device)
        x0, y = images[idx], labels[idx]
        y = torch.where(torch.rand(batch, device=device) < drop_prob, torch.full_like(y, null_class), y)
        noised = objective.training_batch(x0, objective.sample_levels(batch, device), torch.randn_like(x0))
        with autocast:
            loss = objective.loss(unet(noised.x_in, noised.time, y), noised, weighted=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.trainer.gradient_clip_val)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None and step >= ema_start:
            torch._foreach_lerp_(ema, params, 1 - ema_cfg.decay)
    _sync()
    return steps * batch / (time.perf_counter() - start)


def steady_state(cfg: DictConfig) -> DictConfig:
    """``cfg`` with EMA updating from the first step, as it does in all but a run's first hundred steps."""
    if cfg.callbacks.get("ema"):
        cfg.callbacks.ema.update_starting_at_step = 0
    return cfg


def training_runs(cfg: DictConfig, steps: int, warmup: int, plain_fp32: bool) -> dict[str, Callable[[], float]]:
    """The framework's run, the plain loop in the config's precision (``same``) and, optionally, in fp32."""
    bf16 = "bf16" in str(cfg.trainer.precision)
    runs = {
        "framework": partial(framework_img_s, cfg, steps, warmup),
        "same": partial(plain_img_s, cfg, steps, warmup, bf16=bf16),
    }
    if plain_fp32:
        runs["fp32"] = partial(plain_img_s, cfg, steps, warmup, bf16=False) if bf16 else runs["same"]
    return runs


def best_of(repeats: int, runs: dict[str, Callable[[], float]]) -> dict[str, float]:
    """The best img/s of each run over ``repeats`` rounds, the runs taking turns within a round."""
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for key, run in runs.items():
            best[key] = max(best[key], run())
    return best


def compute_dtype(precision: object) -> torch.dtype:
    """The dtype convolutions and matrix products run in under a Trainer ``precision``."""
    return torch.bfloat16 if "bf16" in str(precision) else torch.float32


def autocast_for(precision: object, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast of a Trainer ``precision``, as the plain loop uses it: bf16 for ``bf16-mixed``, else none."""
    dtype = compute_dtype(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()


@dataclass(frozen=True)
class ConvShape:
    """One convolution as a step runs it: its layer's settings, the input's size and dtype, and whether the
    backward pass needs the gradient of the input (not for the stem, whose input is the data)."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    groups: int
    height: int
    width: int
    dtype: torch.dtype
    input_grad: bool

    @classmethod
    def of(cls, conv: nn.Conv2d, x: Tensor) -> ConvShape:
        """The shape of ``conv`` applied to ``x``."""
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.groups,
                   x.shape[-2], x.shape[-1], x.dtype, x.requires_grad)  # fmt: skip


def count_step(
    unet: nn.Module, objective: nn.Module, x0: Tensor, labels: Tensor, autocast: contextlib.AbstractContextManager
) -> tuple[int, Counter[ConvShape]]:
    """FLOPs of one training step's forward and backward pass of ``unet`` on the batch ``x0``, ``labels`` (as
    ``FlopCounterMode`` counts them: matrix products, convolutions and attention), and how often the pass runs
    each convolution shape."""
    shapes: Counter[ConvShape] = Counter()
    hooks = [
        m.register_forward_hook(lambda m, inputs, _: shapes.update([ConvShape.of(m, inputs[0])]))
        for m in unet.modules()
        if isinstance(m, nn.Conv2d)
    ]
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            levels = objective.sample_levels(len(x0), x0.device)
            noised = objective.training_batch(x0, levels, torch.randn_like(x0))
            with autocast:
                loss = objective.loss(unet(noised.x_in, noised.time, labels), noised, weighted=True)
            loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    unet.zero_grad(set_to_none=True)
    return counter.get_total_flops(), shapes


def time_conv(
    shape: ConvShape, batch: int, device: torch.device, autocast: contextlib.AbstractContextManager, repeats: int
) -> tuple[int, float]:
    """FLOPs and best seconds of one forward and backward pass of ``shape`` alone at ``batch``, under
    ``autocast``: the faster of contiguous and channels-last, each the best of ``repeats`` after a warm-up."""
    conv = nn.Conv2d(shape.in_channels, shape.out_channels, shape.kernel, shape.stride, shape.padding,
                     groups=shape.groups, device=device)  # fmt: skip
    size = (batch, shape.in_channels, shape.height, shape.width)
    flops, best = 0, math.inf
    for memory_format in (torch.contiguous_format, torch.channels_last):
        conv = conv.to(memory_format=memory_format)
        x = torch.randn(size, device=device, dtype=shape.dtype).to(memory_format=memory_format)
        x.requires_grad_(shape.input_grad)
        grad = None
        for i in range(repeats + 1):
            conv.zero_grad(set_to_none=True)
            x.grad = None
            counter = FlopCounterMode(display=False) if i == 0 else nullcontext()
            _sync()
            start = time.perf_counter()
            with counter:
                with autocast:
                    out = conv(x)
                grad = torch.randn_like(out) if grad is None else grad
                out.backward(grad)
            _sync()
            if i == 0:
                flops = counter.get_total_flops()
            else:
                best = min(best, time.perf_counter() - start)
    return flops, best


def conv_roofline(
    shapes: Counter[ConvShape], batch: int, device: torch.device, autocast: contextlib.AbstractContextManager,
    repeats: int,
) -> tuple[int, float]:  # fmt: skip
    """Total FLOPs and seconds of every convolution of a step (``shapes``, with their counts), each timed alone."""
    flops, seconds = 0, 0.0
    for shape, count in shapes.items():
        shape_flops, shape_seconds = time_conv(shape, batch, device, autocast, repeats)
        flops += count * shape_flops
        seconds += count * shape_seconds
    return flops, seconds


def preset_step_count(cfg: DictConfig) -> tuple[int, Counter[ConvShape]]:
    """``count_step`` for ``cfg``'s U-Net, objective and precision on a batch of its training images."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    train, batch = datamodule.splits()[0], cfg.data.batch_size
    x0, labels = train.images[:batch].to(device), train.labels[:batch].to(device)
    unet, objective = instantiate(cfg.model.unet).to(device), instantiate(cfg.objective).to(device)
    return count_step(unet, objective, x0, labels, autocast_for(cfg.trainer.precision, device))


#: The achieved-GFLOP/s key of each run's img/s key.
GFLOPS_KEYS = {"framework_img_s": "gflops", "plain_fp32_img_s": "plain_fp32_gflops",
               "plain_same_precision_img_s": "plain_same_precision_gflops"}  # fmt: skip

#: Channels and map sides of the table of a 3x3 convolution's throughput alone (the U-Nets' levels on MNIST).
TABLE_CHANNELS = (16, 32, 64, 128)
TABLE_SIDES = (28, 14, 7)


def conv3x3_table(cfg: DictConfig, repeats: int) -> dict[str, float]:
    """GFLOP/s of a 3x3 convolution (c -> c channels, stride 1, input gradient) alone, forward and backward, at
    ``cfg``'s batch in its precision (input in the compute dtype), for each channel count and map side."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype, autocast = compute_dtype(cfg.trainer.precision), autocast_for(cfg.trainer.precision, device)
    table = {}
    for channels in TABLE_CHANNELS:
        for side in TABLE_SIDES:
            shape = ConvShape(channels, channels, (3, 3), (1, 1), (1, 1), 1, side, side, dtype, True)
            flops, seconds = time_conv(shape, cfg.data.batch_size, device, autocast, repeats)
            table[f"roofline/conv3x3/c{channels}_{side}x{side}_gflops"] = flops / seconds / 1e9
    return table


def limit_results(cfg: DictConfig, img_s: dict[str, float], roofline_repeats: int | None) -> dict[str, float]:
    """FLOPs per image of a training step of ``cfg`` and the GFLOP/s each run reached (``img_s``, by the run's
    img/s key), and unless ``roofline_repeats`` is None, the roofline: the step's convolutions timed alone."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    flops, shapes = preset_step_count(cfg)
    batch = cfg.data.batch_size
    result = {"mflop_per_image": flops / batch / 1e6}
    result.update({GFLOPS_KEYS[name]: rate * flops / batch / 1e9 for name, rate in img_s.items()})
    if roofline_repeats is not None:
        autocast = autocast_for(cfg.trainer.precision, device)
        conv_flops, conv_seconds = conv_roofline(shapes, batch, device, autocast, roofline_repeats)
        bound = batch / conv_seconds
        result.update({
            "conv_mflop_per_image": conv_flops / batch / 1e6, "conv_roofline_gflops": conv_flops / conv_seconds / 1e9,
            "conv_ms_per_image": 1000 * conv_seconds / batch, "conv_bound_images_per_s": bound,
            "conv_share_of_step": img_s["framework_img_s"] / bound,
        })  # fmt: skip
    return result


def untrained_pipeline(cfg: DictConfig) -> ClassConditionalPipeline:
    """A sampling pipeline over ``cfg``'s untrained model, on the GPU when there is one (no progress bar)."""
    model = instantiate(cfg.model, objective=instantiate(cfg.objective))
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    pipe = ClassConditionalPipeline(model.cuda() if torch.cuda.is_available() else model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sampling_seconds(cfg: DictConfig, skip_ddpm: bool) -> dict[str, float]:
    """Seconds for 100 samples with DDPM (all T steps) and DDIM-50, guidance 2, default precision, of an
    eps config's U-Net (DDPM and DDIM fit eps; the cost per step is the same for every objective)."""
    pipe = untrained_pipeline(cfg)
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


def default_sampling_seconds(cfg: DictConfig, count: int, name: str) -> tuple[dict[str, float], str]:
    """Seconds for ``count`` samples (every class in turn) at the default sampling settings of ``cfg``'s run
    (its sampler, steps, guidance and its recipe's autoguidance, as ``diffusion-lab-sample`` uses them for a
    trained run with its guide snapshot), from an untrained U-Net guided by a copy of itself; on a GPU in one
    batch, on a CPU in batches of 128 (the fastest there). Keys ``sample/<name>_s`` and
    ``sample/<name>_passes_per_image`` (network passes per image), and the settings in words."""
    pipe = untrained_pipeline(cfg)
    pipe.set_guide(Guide(copy.deepcopy(pipe.model), pipe.dataset, "a copy of the model"))
    labels = torch.arange(count) % pipe.model.unet.num_classes
    batch_size = count if torch.cuda.is_available() else 128
    pipe(labels[:batch_size], batch_size=batch_size)  # warm-up
    _sync()
    start = time.perf_counter()
    pipe(labels, batch_size=batch_size)
    _sync()
    auto = pipe.default_autoguidance
    result = {
        f"sample/{name}_s": time.perf_counter() - start,
        f"sample/{name}_passes_per_image": pipe.sampler().num_evaluations * (1 + (DEFAULT_GUIDANCE > 0) + (auto > 0)),
    }
    title = pipe.sampler().title
    return (
        result,
        f"{pipe.dataset}, objective={pipe.model.objective.name}, {title}, w={DEFAULT_GUIDANCE:g}, "
        f"autoguidance {auto:g}",
    )


def print_limits(limits: list[tuple[str, dict[str, float]]], results: dict[str, object]) -> None:
    """The table of each preset's FLOPs and GFLOP/s against its convolutions' roofline, and the table of a 3x3
    convolution's GFLOP/s alone (where the roofline was timed)."""
    print("\n| preset | MFLOP/image (fwd+bwd) | framework GFLOP/s | plain same precision GFLOP/s | conv MFLOP/image "
          "| conv roofline GFLOP/s | conv ms/image | conv-bound img/s | convs' share of the step |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip
    for preset, limit in limits:
        roofline = " | ".join(["-"] * 5)
        if "conv_roofline_gflops" in limit:
            roofline = (f"{limit['conv_mflop_per_image']:.0f} | {limit['conv_roofline_gflops']:.0f} "
                        f"| {limit['conv_ms_per_image']:.2f} | {limit['conv_bound_images_per_s']:.0f} "
                        f"| {limit['conv_share_of_step']:.0%}")  # fmt: skip
        print(f"| {preset} | {limit['mflop_per_image']:.0f} | {limit['gflops']:.0f} "
              f"| {limit['plain_same_precision_gflops']:.0f} | {roofline} |")  # fmt: skip
    if any(key.startswith("roofline/conv3x3/") for key in results):
        sides = " | ".join(f"{side}x{side}" for side in TABLE_SIDES)
        print(f"\n3x3 convolution alone, forward and backward, GFLOP/s:\n| channels | {sides} |\n"
              f"| --- |{' --- |' * len(TABLE_SIDES)}")  # fmt: skip
        for channels in TABLE_CHANNELS:
            cells = " | ".join(f"{results[f'roofline/conv3x3/c{channels}_{s}x{s}_gflops']:.0f}" for s in TABLE_SIDES)
            print(f"| {channels} | {cells} |")
    print()


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
    parser.add_argument("--host-batch", type=int, default=2, help="batch of the host-time measurement")
    parser.add_argument("--host-steps", type=int, default=100, help="timed steps of the host-time measurement")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per measurement; each keeps its best")
    parser.add_argument("--overrides", nargs="*", default=None,
                        help="config overrides (default: trainer=cpu, or experiment=gpu on a GPU)")  # fmt: skip
    parser.add_argument("--skip-ddpm", action="store_true", help="skip the slow 1000-step DDPM sampling")
    parser.add_argument("--sample-count", type=int, default=1000, help="images sampled at the default settings")
    parser.add_argument("--skip-roofline", action="store_true", help="skip timing the convolutions alone")
    parser.add_argument("--roofline-repeats", type=int, default=3, help="timed passes of each convolution alone")
    parser.add_argument("--output", default=str(project_root() / "outputs" / "bench" / "bench.json"))
    args = parser.parse_args(argv)
    if args.overrides is None:
        args.overrides = ["experiment=gpu"] if torch.cuda.is_available() else ["trainer=cpu"]
    output = Path(args.output)
    results: dict[str, object] = {"machine": machine(), "settings": vars(args)}
    rows, limits = [], []
    for preset in args.presets.split(","):
        cfg = steady_state(compose_config([f"model={preset}", *args.overrides], output.parent / "run"))
        L.seed_everything(0, verbose=False)
        best = best_of(args.repeats, training_runs(cfg, args.steps, args.warmup, plain_fp32=True))
        framework, fp32, same = best["framework"], best["fp32"], best["same"]
        # The host's work per step: the same step at a batch so small that the arithmetic is negligible.
        host_cfg = cfg.copy()
        host_cfg.data.batch_size = args.host_batch
        host = best_of(args.repeats, training_runs(host_cfg, args.host_steps, args.warmup, plain_fp32=False))
        host_ms = {name: 1000 * args.host_batch / img_s for name, img_s in host.items()}
        key = f"train/{preset}"
        results.update({
            f"{key}/framework_img_s": framework, f"{key}/plain_fp32_img_s": fp32,
            f"{key}/plain_same_precision_img_s": same, f"{key}/overhead": (same - framework) / same,
            f"{key}/framework_step_ms": 1000 * cfg.data.batch_size / framework,
            f"{key}/host_step_ms": host_ms["framework"], f"{key}/plain_host_step_ms": host_ms["same"],
        })  # fmt: skip
        img_s = {name: results[f"{key}/{name}"] for name in GFLOPS_KEYS}
        limit = limit_results(cfg, img_s, None if args.skip_roofline else args.roofline_repeats)
        results.update({f"{key}/{name}": value for name, value in limit.items()})
        limits.append((preset, limit))
        host_text = f"{host_ms['framework']:.1f} / {host_ms['same']:.1f}"
        rows.append((preset, str(cfg.trainer.precision), cfg.data.batch_size, framework, fp32, same, host_text))
        print(f"{preset}: framework {framework:.0f} img/s, plain fp32 {fp32:.0f}, plain same precision {same:.0f}; "
              f"host ms/step, framework / plain: {host_text}", file=sys.stderr, flush=True)  # fmt: skip
        roofline = f", conv roofline {limit['conv_roofline_gflops']:.0f}" if "conv_roofline_gflops" in limit else ""
        print(f"{preset}: {limit['mflop_per_image']:.0f} MFLOP/image, framework {limit['gflops']:.0f} "
              f"GFLOP/s{roofline}", file=sys.stderr, flush=True)  # fmt: skip
    if not args.skip_roofline:
        table_cfg = compose_config(["model=small", *args.overrides], output.parent / "run")
        results.update(conv3x3_table(table_cfg, args.roofline_repeats))
    small = compose_config(["model=small", *args.overrides, "objective=eps"], output.parent / "run")
    results.update(sampling_seconds(small, args.skip_ddpm))
    settings = {}
    for name, data in (("default", []), ("fashion_default", ["data=fashion_mnist"])):
        default = compose_config(["model=small", *data, *args.overrides], output.parent / "run")
        timed, settings[name] = default_sampling_seconds(default, args.sample_count, name)
        results.update(timed)
        results[f"sample/{name}_settings"] = settings[name]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["memory/peak_host_mib"] = peak
    if torch.cuda.is_available():
        results["memory/peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(f"| preset | precision | batch | framework img/s | plain fp32 img/s | speed-up | plain same precision "
          f"| overhead | host ms/step (batch {args.host_batch}): framework / plain |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip
    for preset, precision, batch, framework, fp32, same, host_text in rows:
        print(f"| {preset} | {precision} | {batch} | {framework:.0f} | {fp32:.0f} | {framework / fp32:.2f}x "
              f"| {same:.0f} | {(same - framework) / same:+.1%} | {host_text} |")  # fmt: skip
    print_limits(limits, results)
    for key in ("sample/ddpm_s", "sample/ddim50_s"):
        if key in results:
            print(f"{key}: {results[key]:.1f} s for 100 samples")
    for name, text in settings.items():
        print(f"sample/{name}_s: {results[f'sample/{name}_s']:.2f} s for {args.sample_count} samples ({text}; "
              f"{results[f'sample/{name}_passes_per_image']} network passes per image)")  # fmt: skip
    if "sample/ddpm_s" in results:
        print(f"DDIM-50 speed-up over DDPM: {results['sample/ddpm_s'] / results['sample/ddim50_s']:.1f}x")
    print(f"peak host memory: {peak:.0f} MiB; machine: {results['machine']}")
    atomic_write_text(output, json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
