"""Training callbacks: sample grids, sample quality and the run's ``metrics.json``."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from diffusion_lab.data.labels import class_keys
from diffusion_lab.diffusion.reverse_process import DEFAULT_GUIDANCE, Interval
from diffusion_lab.diffusion.samplers import SamplerFactory
from diffusion_lab.evaluation.clip import ClipScorer, clip_from_config
from diffusion_lab.evaluation.evaluator import Evaluator
from diffusion_lab.pipeline import ClassConditionalPipeline, Guide, check_guide, load_guide, weights_guide
from diffusion_lab.reports.images import image_grid, save_png
from diffusion_lab.reports.render import markdown_table
from diffusion_lab.reports.sweep_report import HISTORY_VAL_LOSS
from diffusion_lab.rules import EVERY_N_EPOCHS, FID_PER_CLASS, GRID_PER_CLASS
from diffusion_lab.training.guide_snapshot import GuideSnapshot
from diffusion_lab.training.loggers import log_final_metrics
from diffusion_lab.utils.files import atomic_write_text

log = logging.getLogger(__name__)


class FixedSamples(L.Callback):
    """What the sample callbacks share: images of every class drawn from the same fixed noise.

    They draw through the model's :class:`~diffusion_lab.pipeline.ClassConditionalPipeline` (in fp32, one batch,
    without a progress bar) after every ``every_n_epochs``-th validation epoch with the weights validation uses,
    so with EMA on they see the EMA model: list them before the EMA callback (``FusedEMA``).
    With ``autoguidance`` > 0 they guide with ``guide`` (a checkpoint or model folder of the same data),
    or with ``guide=None`` with the run's own guide snapshot (:class:`GuideSnapshot`) once it is taken;
    before that they draw without autoguidance.
    """

    def __init__(
        self,
        num_per_class: int,
        sampler: SamplerFactory,
        steps: int | None,
        guidance: float,
        seed: int,
        every_n_epochs: int,
        guidance_interval: Interval = None,
        guidance_rescale: float = 0.0,
        autoguidance: float = 0.0,
        guide: str | Path | None = None,
    ) -> None:
        self.num_per_class = num_per_class
        self.sampler = sampler
        self.steps = steps
        self.guidance = guidance
        self.seed = seed
        self.every_n_epochs = every_n_epochs
        self.guidance_interval = None if guidance_interval is None else tuple(guidance_interval)
        self.guidance_rescale = guidance_rescale
        self.autoguidance = autoguidance
        self.guide = guide
        self._guide: Guide | None = None
        #: The snapshot step of ``_guide`` when it is the run's own (None: a given guide, or none yet).
        self._guide_step: int | None = None
        self._waiting_told = False

    def current_guide(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Guide | None:
        """The guide of autoguidance now: None without autoguidance, or before the run's snapshot.

        Raises:
            ValueError: one line, for a guide of other data, or no guide at all (no ``guide`` and no snapshot callback).
        """
        if self.autoguidance == 0:
            return None
        if self.guide is not None:
            if self._guide is None:
                loaded = load_guide(self.guide, pl_module.device)
                check_guide(pl_module, trainer.datamodule.name, loaded)
                self._guide = loaded
            return self._guide
        snapshot = next((c for c in trainer.callbacks if isinstance(c, GuideSnapshot)), None)
        if snapshot is None:
            raise ValueError("the sample callbacks' autoguidance needs a guide: keep callbacks.guide_snapshot, or "
                             "set their guide=PATH (a checkpoint or model folder of the same data)")  # fmt: skip
        if snapshot.weights is None:
            if not self._waiting_told:
                log.info("%s: no autoguidance until the guide snapshot is taken", type(self).__name__)
                self._waiting_told = True
            return None
        if self._guide_step != snapshot.step:
            source = f"(the run's snapshot at step {snapshot.step})"
            self._guide = weights_guide(pl_module, snapshot.weights, source, snapshot.step, pl_module.device)
            self._guide_step = snapshot.step
        return self._guide

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Load and check a given guide now, not after the first epoch."""
        self.current_guide(trainer, pl_module)

    def due(self, trainer: L.Trainer) -> bool:
        """Whether this validation epoch end is one to draw at."""
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def labels(self, pl_module: L.LightningModule) -> torch.Tensor:
        """``[num_classes * num_per_class]``: every class, ``num_per_class`` times, class by class."""
        return torch.arange(pl_module.unet.num_classes).repeat_interleave(self.num_per_class)

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> torch.Tensor:
        """``[num_classes * num_per_class, C, H, W]`` images of :meth:`labels` in [0, 1] on the CPU (eval mode).

        The sampler is the run's ``sampler`` group (None: the objective's default, ``auto``).
        """
        was_training = pl_module.training
        pipe = ClassConditionalPipeline(pl_module, dataset=trainer.datamodule.name)  # in eval mode
        pipe.set_progress_bar_config(disable=True)
        guide = self.current_guide(trainer, pl_module)
        if guide is not None:
            pipe.set_guide(guide)
        labels = self.labels(pl_module)
        noise = torch.randn((len(labels), *pipe.image_shape), generator=torch.Generator().manual_seed(self.seed))
        sampler = "auto" if self.sampler is None else self.sampler(objective=pl_module.objective)
        images = pipe(
            labels, seed=self.seed, sampler=sampler, steps=self.steps, guidance=self.guidance, batch_size=len(labels),
            precision="32", noise=noise, guidance_interval=self.guidance_interval,
            guidance_rescale=self.guidance_rescale, autoguidance=0.0 if guide is None else self.autoguidance,
        )  # fmt: skip
        pl_module.train(was_training)
        return images


class SampleGrid(FixedSamples):
    """Draw a classes x ``num_per_class`` grid from fixed noise after each validation and at the end.

    The grid uses the weights validation uses, so with EMA on it shows the EMA model; list this
    callback before the EMA callback (``FusedEMA``) so it runs while the EMA weights are swapped in.
    PNGs go to ``output_dir`` (``epoch_NNN_step_NNNNNN.png`` and ``final.png``) and to the logger.

    Args:
        output_dir: folder for the PNG files.
        num_per_class: images per class (grid columns).
        sampler: fits the sampler to the model's objective (the ``sampler`` config group, ``_partial_``;
            None: the objective's default, ``auto``).
        steps: sampler steps (None: the sampler's default).
        guidance: classifier-free guidance weight.
        guidance_interval: ``[sigma_lo, sigma_hi]`` to guide in (None: every step; ``sigma_hi`` None: no upper end).
        guidance_rescale: guidance rescale phi (0: none).
        autoguidance: autoguidance weight w_a (0: none).
        guide: the guide of autoguidance, a checkpoint or model folder (None: the run's guide snapshot).
        seed: seed of the fixed starting noise.
        every_n_epochs: draw after every n-th validation epoch (the final grid is always drawn).
    """

    def __init__(
        self,
        output_dir: str | Path,
        num_per_class: int = 8,
        sampler: SamplerFactory | None = None,
        steps: int | None = 50,
        guidance: float = DEFAULT_GUIDANCE,
        seed: int = 0,
        every_n_epochs: int = 1,
        guidance_interval: Interval = None,
        guidance_rescale: float = 0.0,
        autoguidance: float = 0.0,
        guide: str | Path | None = None,
    ) -> None:
        GRID_PER_CLASS.check("callbacks.sample_grid.num_per_class", num_per_class)
        EVERY_N_EPOCHS.check("callbacks.sample_grid.every_n_epochs", every_n_epochs)
        super().__init__(
            num_per_class, sampler, steps, guidance, seed, every_n_epochs, guidance_interval, guidance_rescale,
            autoguidance, guide,
        )  # fmt: skip
        self.output_dir = Path(output_dir)
        self.last_path: Path | None = None

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> None:
        grid = image_grid(self.draw(trainer, pl_module), self.num_per_class)
        self.last_path = save_png(grid, self.output_dir / f"{name}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"samples/{name.split('_')[0]}", grid, trainer.global_step)
            elif isinstance(logger, WandbLogger):
                logger.log_image("samples/grid", images=[grid], caption=[name], step=trainer.global_step)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.due(trainer):
            self._write(trainer, pl_module, f"epoch_{trainer.current_epoch:03d}_step_{trainer.global_step:06d}")

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "final")
        log.info("Sample grid: %s", self.last_path)


class SampleQuality(FixedSamples):
    """Classifier accuracy, FID / KID, precision / recall / density / coverage and (with CLIP weights) the CLIP
    metrics of a fixed sample set.

    Every ``every_n_epochs`` validation epochs and at the end of training, draws ``num_per_class``
    images of every class from fixed noise (with the EMA weights, like :class:`SampleGrid`; list it
    before the EMA callback (``FusedEMA``)) and scores them with :class:`~diffusion_lab.evaluation.evaluator.Evaluator`.
    Logged as scalars ``eval/classifier_accuracy``, ``eval/fid``, ``eval/kid``, ``eval/precision``,
    ``eval/recall``, ``eval/density``, ``eval/coverage``, ``eval/clip_score``..., per class
    ``eval/classifier_accuracy/7``, ``eval/recall/7``..., and as a per-class table (TensorBoard text,
    W&B table). The real-image floor is logged once as ``eval_real/*``. The final values also
    reach ``metrics.json``. With few images per class, FID is biased upwards: follow its trend.

    Args:
        data_dir: prepared data and the reference-classifier cache.
        num_per_class: images per class in the fixed set.
        sampler: fits the sampler to the model's objective (the ``sampler`` config group, ``_partial_``;
            None: the objective's default, ``auto``).
        steps: sampler steps (None: the sampler's default).
        guidance: classifier-free guidance weight.
        guidance_interval: ``[sigma_lo, sigma_hi]`` to guide in (None: every step; ``sigma_hi`` None: no upper end).
        guidance_rescale: guidance rescale phi (0: none).
        autoguidance: autoguidance weight w_a (0: none).
        guide: the guide of autoguidance, a checkpoint or model folder (None: the run's guide snapshot).
        seed: seed of the fixed starting noise.
        every_n_epochs: evaluate after every n-th validation epoch (the end of training always).
        clip: the ``clip`` config group (``conf/clip/``, instantiated or not), or None for no CLIP metrics.
        inception: also the Inception FID (slow on a CPU).
    """

    def __init__(
        self,
        data_dir: str | Path,
        num_per_class: int = 10,
        sampler: SamplerFactory | None = None,
        steps: int | None = 50,
        guidance: float = DEFAULT_GUIDANCE,
        seed: int = 0,
        every_n_epochs: int = 5,
        clip: Callable[..., ClipScorer] | Mapping[str, Any] | None = None,
        inception: bool = False,
        guidance_interval: Interval = None,
        guidance_rescale: float = 0.0,
        autoguidance: float = 0.0,
        guide: str | Path | None = None,
    ) -> None:
        FID_PER_CLASS.check("callbacks.sample_quality.num_per_class", num_per_class)
        EVERY_N_EPOCHS.check("callbacks.sample_quality.every_n_epochs", every_n_epochs)
        super().__init__(
            num_per_class, sampler, steps, guidance, seed, every_n_epochs, guidance_interval, guidance_rescale,
            autoguidance, guide,
        )  # fmt: skip
        self.data_dir = str(data_dir)
        self.clip_config = clip
        self.inception = inception
        self._evaluator: Evaluator | None = None
        self._last: tuple[int, dict[str, float]] | None = None

    def evaluator(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Evaluator:
        """Built on first use: trains the reference classifier once if it is not cached yet."""
        if self._evaluator is None:
            dataset = trainer.datamodule.name
            clip, status = clip_from_config(self.clip_config, dataset, pl_module.device)
            log.info("Sample quality: CLIP %s", status)
            self._evaluator = Evaluator(
                dataset, self.data_dir, self.num_per_class, clip=clip, inception=self.inception,
                device=pl_module.device, seed=self.seed,
            )  # fmt: skip
            self._log(trainer, self._evaluator.real_metrics(), prefix="eval_real")
        return self._evaluator

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """``eval/*`` metrics of the fixed sample set at the current weights (cached per global step).

        Runs outside inference mode, which Lightning's validation loop is in: the metrics' state
        outlives the loop and is updated again at the end of fit, and the reference classifier may
        need training on first use.
        """
        if self._last is not None and self._last[0] == trainer.global_step:
            return self._last[1]
        with torch.inference_mode(False), torch.no_grad():
            evaluator = self.evaluator(trainer, pl_module)
            metrics = evaluator.score(self.draw(trainer, pl_module), self.labels(pl_module), prefix="eval")
        self._last = (trainer.global_step, metrics)
        return metrics

    def _log(self, trainer: L.Trainer, metrics: dict[str, float], prefix: str) -> None:
        """Scalars to every logger, and the per-class table to TensorBoard (text) and W&B (table)."""
        renamed = {f"{prefix}/{k.split('/', 1)[1]}": v for k, v in metrics.items()}
        shown = ("classifier_accuracy", "clip_score", "clip_zero_shot_accuracy")
        columns = ["class", *(c for c in shown if f"{prefix}/{c}" in renamed)]
        rows = [
            [key, *(renamed.get(f"{prefix}/{c}/{key}") for c in columns[1:])]
            for key in class_keys(trainer.datamodule.name)
        ]
        for logger in trainer.loggers:
            logger.log_metrics(renamed, step=trainer.global_step)
            if isinstance(logger, TensorBoardLogger):
                text = markdown_table(columns, [[_cell(value) for value in row] for row in rows])
                logger.experiment.add_text(f"{prefix}/per_class", text, trainer.global_step)
            elif isinstance(logger, WandbLogger):
                logger.log_table(key=f"{prefix}/per_class", columns=columns, data=rows, step=trainer.global_step)
        # metrics.json (MetricsJson, listed after this callback) reads the final values from here.
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in renamed.items()})

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.due(trainer):
            self._log(trainer, self.evaluate(trainer, pl_module), prefix="eval")

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A validation at this very step has already scored and logged these weights.
        logged = self._last is not None and self._last[0] == trainer.global_step
        metrics = self.evaluate(trainer, pl_module)
        if not logged:
            self._log(trainer, metrics, prefix="eval")
        floor = trainer.callback_metrics
        log.info(
            "Sample quality (%d per class): classifier accuracy %.1f%%, FID %.2f (real floor %.2f), "
            "precision %.2f (%.2f), recall %.2f (%.2f)",
            self.num_per_class, 100 * metrics["eval/classifier_accuracy"], metrics["eval/fid"],
            float(floor["eval_real/fid"]), metrics["eval/precision"], float(floor["eval_real/precision"]),
            metrics["eval/recall"], float(floor["eval_real/recall"]),
        )  # fmt: skip


def _cell(value: Any) -> str:
    """A per-class table cell: numbers with three decimals, missing values as ``-``."""
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _as_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


class MetricsJson(L.Callback):
    """Write the final logged metrics (flat keys as logged, e.g. ``val/loss``) to a JSON file, and give them to
    TensorBoard's HParams view.

    Also records ``epoch``, ``global_step``, the best checkpoint's path and score, the model's
    parameter count (``params``), the wall time of this fit (``time/fit_s``; after a resume, of the
    resumed part only) and the validation-loss curve (``history/val/loss``: ``[step, val/loss]`` after
    each validation, kept in the checkpoints so a resumed run continues it), which ``diffusion-lab-report``
    tabulates and plots across a sweep whatever logger the runs had.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._started: float | None = None
        #: ``[step, val/loss]`` after each validation of the run, resumed parts included.
        self.val_curve: list[list[float]] = []
        #: What the last fit wrote (empty before, and on ranks other than 0).
        self.written: dict[str, Any] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = None if trainer.sanity_checking else _as_float(trainer.callback_metrics.get("val/loss"))
        if loss is not None:
            self.val_curve.append([trainer.global_step, loss])

    def state_dict(self) -> dict[str, Any]:
        return {"val_curve": self.val_curve}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.val_curve = [list(point) for point in state_dict.get("val_curve", [])]

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics: dict[str, Any] = {"params": sum(p.numel() for p in pl_module.parameters())}
        if self._started is not None:
            metrics["time/fit_s"] = time.perf_counter() - self._started
        for key, value in trainer.callback_metrics.items():
            number = _as_float(value)
            if number is not None:
                metrics[key] = number
        metrics["epoch"] = trainer.current_epoch
        metrics["global_step"] = trainer.global_step
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "best_model_path", ""):
            metrics["best_model_path"] = ckpt.best_model_path
            score = _as_float(ckpt.best_model_score)
            if score is not None:
                metrics[f"best/{ckpt.monitor}"] = score
        log_final_metrics(trainer.loggers, {k: v for k, v in metrics.items() if _as_float(v) is not None},
                          trainer.global_step)  # fmt: skip
        metrics[HISTORY_VAL_LOSS] = self.val_curve
        atomic_write_text(self.path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        self.written = metrics
