"""What every key of every command's config takes: one line per bad value, naming the key, before any work.

Each command (``train``, ``sample``, ``evaluate``, ``figures``, ``export``) has a schema: a rule for each leaf
key of its composed config (``conf/<command>.yaml`` with any group option and experiment), matched by
a dotted pattern (``callbacks.*.every_n_epochs``). :func:`check_config` walks every leaf, resolves it
and tests it, and raises :class:`ConfigError` with one line per bad value::

    data.batch_size must be a positive integer, got 'abc' (e.g. data.batch_size=128)

Keys a user adds with ``+key=value`` (more ``Trainer`` arguments, say) have no rule: the component
they configure checks them when it is built. The suite checks that every key the shipped configs
have is covered, so a new config key comes with its rule.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffusion_lab.data.labels import label_index
from diffusion_lab.data.sources import DATASETS
from diffusion_lab.rules import (
    AUTOGUIDANCE,
    BATCH_SIZE,
    BOOLEAN,
    DROP_PROB,
    EVERY_N_EPOCHS,
    FID_PER_CLASS,
    GRID_PER_CLASS,
    GUIDANCE,
    GUIDANCE_INTERVAL,
    GUIDANCE_RESCALE,
    GUIDE_FRACTION,
    MIN_SNR_GAMMA,
    PATH,
    SAMPLING_PRECISION,
    TARGET,
    TEXT,
    TIME_DISTRIBUTION,
    TIMESTEPS,
    VAL_FRACTION,
    Rule,
    choice,
    either,
    integer,
    is_int,
    is_number,
    list_of,
    number,
    optional,
)  # fmt: skip


class ConfigError(ValueError):
    """Bad config values: ``lines`` holds one line per value, each naming the key, what it takes and an example."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


# --------------------------------------------------------------------------- values several commands share


def _component(value: Any) -> bool:
    """A component's config: a mapping that names the class to build."""
    return isinstance(value, dict) and isinstance(value.get("_target_"), str)


SEED = integer(0, 2**32 - 1, example=0, what="an integer in [0, 4294967295]")
POSITIVE = integer(1, example=1)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TRAINER_PRECISIONS = ("32-true", "32", 32, "bf16-mixed", "bf16-true", "bf16", "16-mixed", "16-true", "16", 16,
                      "64-true", "64", 64)  # fmt: skip
ACCELERATORS = ("cpu", "gpu", "cuda", "auto", "mps", "tpu")


def _known_label(value: Any) -> bool:
    """A class index or name of one of the datasets (the checkpoint's own dataset checks it again when loaded)."""
    if not (is_int(value) or isinstance(value, str)):
        return False
    for info in DATASETS.values():
        try:
            label_index(value, info.class_names)
        except ValueError:
            continue
        return True
    return False


#: A class: its index or its name in the dataset (``7``, ``trouser``, ``ankle_boot``).
LABEL = Rule(_known_label, "a class index 0..9 or a class name such as trouser", 7)
#: One class, a list of classes, or ``all``.
LABELS = Rule(
    lambda value: value == "all"
    or _known_label(value)
    or (isinstance(value, list) and value != [] and all(map(_known_label, value))),
    "a class index 0..9, a class name such as trouser, a list of them or all", 7,
)  # fmt: skip
#: A style value: a number (degrees, pixels) or a named level (``left``, ``bold``, ``high``).
STYLE_VALUE = Rule(
    lambda value: is_number(value) or (isinstance(value, str) and value.strip() != ""),
    "a number or a named level such as left, upright, thin or bold", "bold",
)  # fmt: skip
DEVICE = Rule(TEXT.test, "auto, cpu, cuda or a torch device such as cuda:1", "cpu")


#: ``guide``: autoguidance's guide, a checkpoint or exported folder, or null for the checkpoint's own snapshot.
GUIDE = optional(Rule(PATH.test, "a checkpoint or model folder of the same data", "outputs/train/<run>/guide.ckpt"))
SAMPLER = {
    "sampler._target_": TARGET,
    "sampler._partial_": choice(True, example=True),
    # The scheduler class and its options are checked against diffusers when the sampler is built.
    "sampler.name": TEXT,
    "sampler.default_steps": optional(integer(1, example=20)),
    "sampler.eta": number(0, 1, example=0.0),
    "sampler.use_clipped_model_output": BOOLEAN,
    "sampler.thresholding": BOOLEAN,
    "sampler.sample_max_value": number(0, open_low=True, example=1.0),
    "sampler.timestep_spacing": choice("leading", "trailing", "linspace"),
    "sampler.clip_sample": BOOLEAN,
    "sampler.variance_type": choice("fixed_small", "fixed_large", "fixed_small_log", "fixed_large_log", "learned"),
    "sampler.algorithm_type": choice("dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver"),
    "sampler.solver_order": integer(1, 3, example=2),
    "sampler.final_sigmas_type": choice("zero", "sigma_min"),
    "sampler.sigma_schedule": choice("karras", "exponential"),
    "sampler.rho": number(0, open_low=True, example=7.0),
}
CLIP = {
    "clip._target_": TARGET,
    "clip._partial_": choice(True, example=True),
    "clip.model_name": TEXT,
    "clip.pretrained": optional(TEXT),
    "clip.download": BOOLEAN,
    "clip.cache_dir": optional(PATH),
    "clip.random_init": BOOLEAN,
    "clip.prompts.*.classes": list_of(TEXT, example=["a handwritten digit zero"], non_empty=True),
    "clip.prompts.*.clear": list_of(TEXT, example=["a clear, well-written digit 0"], non_empty=True),
    "clip.prompts.*.unclear": TEXT,
}
PATHS = {"paths.*": PATH}
DATA = {
    "data._target_": TARGET,
    "data.name": choice(*DATASETS),
    "data.data_dir": PATH,
    "data.batch_size": integer(1, example=128),
    "data.eval_batch_size": integer(1, example=500),
    "data.val_fraction": VAL_FRACTION,
    "data.split_seed": SEED,
    "data.shuffle": BOOLEAN,
    "data.shuffle_seed": optional(SEED),
    "data.styles": BOOLEAN,
    "data.download": BOOLEAN,
}
#: The checkpoint a command reads.
CKPT = Rule(TEXT.test, "a checkpoint written by diffusion-lab-train", "outputs/train/<run>/checkpoints/last.ckpt")
SAMPLING = {
    "ckpt": CKPT,
    "seed": SEED,
    "steps": optional(integer(1, example=50)),
    "guidance": GUIDANCE,
    "guidance_interval": GUIDANCE_INTERVAL,
    "guidance_rescale": GUIDANCE_RESCALE,
    "autoguidance": optional(AUTOGUIDANCE),
    "guide": GUIDE,
    "batch_size": BATCH_SIZE,
    "precision": SAMPLING_PRECISION,
    "device": DEVICE,
    "output": PATH,
}
#: A relative EMA length sigma_rel of post-hoc EMA, up to ``models.posthoc_ema.MAX_SIGMA_REL``.
EMA_LENGTH = number(0, 0.25, open_low=True, example=0.1)
SIGMA_RELS = Rule(
    lambda value: isinstance(value, list) and all(map(EMA_LENGTH.test, value)) and len(set(value)) >= 2,
    "a list of two or more different lengths in (0, 0.25]", [0.05, 0.1],
)  # fmt: skip
#: A logger's config, under ``logger`` (one) or ``logger.NAME`` (several).
LOGGER = {
    "_target_": TARGET,
    "save_dir": PATH,
    "name": optional(Rule(lambda v: isinstance(v, str), "a string", "csv")),
    "version": Rule(lambda v: isinstance(v, str) or is_int(v), "a string or an integer", ""),
    "default_hp_metric": BOOLEAN,
    "project": TEXT,
    "group": optional(Rule(lambda v: isinstance(v, str), "a string", "sweep")),
    "tags": list_of(Rule(lambda v: isinstance(v, str), "a string", "tag"), example=["mnist"], what="a list of strings"),
    "offline": BOOLEAN,
    "log_model": either(BOOLEAN, choice("all"), "true, false or all"),
    "id": TEXT,
    "resume": choice("allow", "must", "never", "auto"),
    "init_timeout": number(0, open_low=True, example=30),
}
# --------------------------------------------------------------------------- the commands

TRAIN: dict[str, Rule] = {
    **PATHS, **DATA, **SAMPLER, **CLIP,
    "multirun_folder": PATH,
    "seed": SEED,
    "diffusion.timesteps": TIMESTEPS,
    "resume": BOOLEAN,
    "ckpt": optional(CKPT),
    "init_from": optional(CKPT),
    "optimized_metric": optional(TEXT),
    "model._target_": TARGET,
    "model.cond_drop_prob": DROP_PROB,
    "model.style_drop_prob": DROP_PROB,
    "model.val_seed": SEED,
    "objective._target_": TARGET,
    "objective.schedule": Rule(_component, "the schedule config", "${schedule}"),
    "objective.min_snr_gamma": MIN_SNR_GAMMA,
    "objective.time_distribution": TIME_DISTRIBUTION,
    "objective.logit_mean": number(-10, 10, example=0.0),
    "objective.logit_std": number(0, open_low=True, example=1.0),
    "objective.shift": number(0, open_low=True, example=1.0),
    "objective.sigma_data": number(0, open_low=True, example=0.5),
    "objective.p_mean": number(-10, 10, example=-1.2),
    "objective.p_std": number(0, open_low=True, example=1.2),
    "objective.sigma_min": number(0, open_low=True, example=0.002),
    "objective.sigma_max": number(0, open_low=True, example=80.0),
    "model.style_conditioning": BOOLEAN,
    "model.channels_last": BOOLEAN,
    "model.compile": BOOLEAN,
    "model.compile_mode": choice(*COMPILE_MODES),
    "model.unet._target_": TARGET,
    "model.unet.down_chs": list_of(POSITIVE, example=[16, 32, 64], non_empty=True,
                                   what="a non-empty list of positive channel counts"),
    "model.unet.num_classes": integer(1, example=10),
    "model.unet.in_channels": integer(1, example=1),
    "model.unet.num_res_blocks": integer(1, example=1),
    "model.unet.attention_levels": list_of(integer(0, example=2), example=[2], what="a list of level indices >= 0"),
    "model.unet.activation": choice("silu", "gelu", "mish"),
    "model.unet.dropout": number(0, 1, open_high=True, example=0.1),
    "model.unet.num_styles": integer(0, example=2),
    "model.optimizer._target_": TARGET,
    "model.optimizer._partial_": choice(True, example=True),
    "model.optimizer.lr": number(0, open_low=True, example=2e-3),
    "model.optimizer.weight_decay": number(0, example=0.0),
    "model.lr_scheduler._target_": TARGET,
    "model.lr_scheduler._partial_": choice(True, example=True),
    "model.lr_scheduler.pct_start": number(0, 1, open_low=True, open_high=True, example=0.1),
    "model.lr_scheduler.div_factor": number(0, open_low=True, example=25),
    "model.lr_scheduler.final_div_factor": number(0, open_low=True, example=100),
    "model.lr_scheduler.factor": number(0, 1, open_low=True, open_high=True, example=0.5),
    "model.lr_scheduler.mode": choice("min", "max"),
    "model.lr_scheduler.patience": integer(0, example=2),
    "schedule._target_": TARGET,
    "schedule.timesteps": TIMESTEPS,
    "schedule.s": number(0, open_low=True, example=0.008),
    "schedule.max_beta": number(0, 1, open_low=True, open_high=True, example=0.999),
    "schedule.beta_start": number(0, 1, open_low=True, open_high=True, example=1e-4),
    "schedule.beta_end": number(0, 1, open_low=True, open_high=True, example=0.02),
    "schedule.scale_to_timesteps": BOOLEAN,
    "trainer._target_": TARGET,
    "trainer.default_root_dir": PATH,
    "trainer.accelerator": choice(*ACCELERATORS),
    "trainer.strategy": TEXT,
    "trainer.devices": either(integer(1, example=1), choice("auto"), "a positive integer or auto"),
    "trainer.num_nodes": integer(1, example=1),
    "trainer.precision": choice(*TRAINER_PRECISIONS, example="bf16-mixed"),
    "trainer.sync_batchnorm": BOOLEAN,
    "trainer.max_epochs": integer(-1, example=3, what="an integer >= -1 (-1: no limit)"),
    "trainer.max_steps": integer(-1, example=1000, what="an integer >= -1 (-1: no limit)"),
    "trainer.gradient_clip_val": optional(number(0, example=1.0)),
    "trainer.val_check_interval": either(
        integer(1, example=100), number(0, 1, open_low=True, example=1.0),
        "a fraction of an epoch in (0, 1] or a step count",
    ),
    "trainer.check_val_every_n_epoch": integer(1, example=1),
    "trainer.limit_train_batches": either(integer(1, example=20), number(0, 1, open_low=True, example=1.0),
                                          "a fraction in (0, 1] or a batch count"),
    "trainer.limit_val_batches": either(integer(0, example=2), number(0, 1, example=1.0),
                                        "a fraction in [0, 1] or a batch count"),
    "trainer.log_every_n_steps": integer(1, example=50),
    "trainer.num_sanity_val_steps": integer(-1, example=0),
    "trainer.deterministic": BOOLEAN,
    "trainer.fast_dev_run": either(BOOLEAN, integer(1, example=1), "true, false or a batch count"),
    "trainer.plugins": list_of(Rule(lambda v: isinstance(v, dict) and "_target_" in v, "config with _target_", {}),
                               example=[], what="a list of plugin configs with _target_"),
    "trainer.profiler._target_": TARGET,
    "trainer.profiler.dirpath": PATH,
    "trainer.profiler.filename": TEXT,
    # One logger (logger=csv) or several, one under each name (logger=many: logger.csv, logger.tensorboard, ...).
    **{f"{prefix}.{key}": rule for prefix in ("logger", "logger.*") for key, rule in LOGGER.items()},
    "callbacks.*._target_": TARGET,
    "callbacks.*.every_n_epochs": EVERY_N_EPOCHS,
    "callbacks.sample_grid.num_per_class": GRID_PER_CLASS,
    "callbacks.sample_quality.num_per_class": FID_PER_CLASS,
    "callbacks.*.steps": optional(integer(1, example=50)),
    "callbacks.*.guidance": GUIDANCE,
    "callbacks.*.guidance_interval": GUIDANCE_INTERVAL,
    "callbacks.*.guidance_rescale": GUIDANCE_RESCALE,
    "callbacks.*.autoguidance": AUTOGUIDANCE,
    "callbacks.*.guide": GUIDE,
    "callbacks.guide_snapshot.fraction": GUIDE_FRACTION,
    "callbacks.*.seed": SEED,
    "callbacks.*.sampler": Rule(_component, "a sampler config with _target_", "${sampler}"),
    "callbacks.sample_grid.output_dir": PATH,
    "callbacks.sample_quality.data_dir": PATH,
    "callbacks.sample_quality.clip": Rule(lambda v: v in (None, {}) or _component(v), "a clip config", "${clip}"),
    "callbacks.sample_quality.inception": BOOLEAN,
    "callbacks.ema.decay": number(0, 1, open_low=True, open_high=True, example=0.995),
    "callbacks.ema.update_starting_at_step": integer(0, example=100),
    "callbacks.posthoc_ema.dirpath": PATH,
    "callbacks.posthoc_ema.sigma_rels": SIGMA_RELS,
    "callbacks.posthoc_ema.every_n_steps": integer(1, example=100),
    "callbacks.model_checkpoint.dirpath": PATH,
    "callbacks.model_checkpoint.filename": TEXT,
    "callbacks.model_checkpoint.auto_insert_metric_name": BOOLEAN,
    "callbacks.*.monitor": TEXT,
    "callbacks.*.mode": choice("min", "max"),
    "callbacks.model_checkpoint.save_top_k": integer(-1, example=1),
    "callbacks.model_checkpoint.save_last": BOOLEAN,
    "callbacks.early_stopping.patience": integer(0, example=5),
    "callbacks.early_stopping.check_finite": BOOLEAN,
    "callbacks.early_stopping.strict": BOOLEAN,
    "callbacks.lr_monitor.logging_interval": optional(choice("step", "epoch")),
    "callbacks.metrics_json.path": PATH,
    "callbacks.stop_on_non_finite.check_every_n_steps": integer(1, example=10),
    "callbacks.progress_bar.refresh_rate": integer(0, example=1),
}  # fmt: skip

SAMPLE: dict[str, Rule] = {
    **PATHS, **SAMPLER, **CLIP, **SAMPLING,
    "label": LABELS,
    "num_samples": integer(1, example=16),
    "slant": optional(STYLE_VALUE),
    "thickness": optional(STYLE_VALUE),
    "select_top": optional(integer(1, example=8)),
    "candidates": optional(integer(1, example=32)),
}  # fmt: skip

EVALUATE: dict[str, Rule] = {
    **PATHS, **SAMPLER, **CLIP, **SAMPLING,
    "num_per_class": FID_PER_CLASS,
    "samples": optional(Rule(PATH.test, "a samples.npz", "outputs/evaluate/<run>/samples.npz")),
    "cas": BOOLEAN,
    "cas_per_class": integer(1, example=1000),
    "inception": BOOLEAN,
    "style_control": BOOLEAN,
    "reference_seed": SEED,
    "model.style_conditioning": BOOLEAN,
    "ema_length": optional(EMA_LENGTH),
}  # fmt: skip

FIGURES: dict[str, Rule] = {
    **PATHS, **DATA, **SAMPLER, **SAMPLING,
    "ckpt": optional(CKPT),
    "image_label": LABEL,
    "timesteps": integer(1, example=1000),
    "guidance_weights": list_of(GUIDANCE, example=[0, 0.5, 1, 2, 4], non_empty=True,
                                what="a non-empty list of guidance weights >= 0"),
    "num_snapshots": integer(2, example=8),
    "num_per_class": integer(1, example=4),
    "style_label": LABEL,
    "style_slants": list_of(STYLE_VALUE, example=[-15, 0, 15], non_empty=True,
                            what="a non-empty list of slants (degrees or left / upright / right)"),
    "style_thicknesses": list_of(STYLE_VALUE, example=["thin", "bold"], non_empty=True,
                                 what="a non-empty list of thicknesses (pixels or thin / regular / bold)"),
}  # fmt: skip

EXPORT: dict[str, Rule] = {
    **PATHS,
    "ckpt": CKPT,
    "output": PATH,
    "metrics": optional(PATH),
    "grid_per_class": integer(1, example=8),
    "seed": SEED,
    "steps": optional(integer(1, example=50)),
    "guidance": GUIDANCE,
    "guide": GUIDE,
    "repo_id": Rule(lambda v: isinstance(v, str) and v.count("/") == 1 and all(v.split("/")), "OWNER/NAME",
                    "me/mnist-diffusion"),
}  # fmt: skip

#: A component set to null or to nothing (``logger: null``, ``callbacks.ema: null``, ``clip: none``): switched off.
SWITCHED_OFF = Rule(lambda value: value in (None, {}), "a config with _target_, or null to switch it off", None)


def _named(schemas: dict[str, dict[str, Rule]]) -> dict[str, dict[str, Rule]]:
    """Each schema with ``task_name``: every config and experiment names its command, one of ``schemas``."""
    return {name: {"task_name": choice(*schemas, example="train"), **schema} for name, schema in schemas.items()}


#: The schema of each command, by its config name (``conf/NAME.yaml``, ``diffusion-lab-NAME``).
SCHEMAS: dict[str, dict[str, Rule]] = _named(
    {"train": TRAIN, "sample": SAMPLE, "evaluate": EVALUATE, "figures": FIGURES, "export": EXPORT}
)


def matches(key: str, pattern: str) -> bool:
    """Whether dotted ``key`` fits ``pattern``, a ``*`` standing for exactly one key (``callbacks.*.seed``)."""
    parts, wanted = key.split("."), pattern.split(".")
    return len(parts) == len(wanted) and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=True))


def rule_for(command: str, key: str) -> Rule | None:
    """The rule of ``key`` in ``command``'s schema: an exact entry first, then the first matching pattern."""
    schema = SCHEMAS[command]
    if key in schema:
        return schema[key]
    patterns = [(pattern, rule) for pattern, rule in schema.items() if "*" in pattern]
    if (rule := next((rule for pattern, rule in patterns if matches(key, pattern)), None)) is not None:
        return rule
    # A component (``logger``, ``callbacks.ema``) is a leaf only when it is switched off with null.
    if any(pattern.endswith("._target_") and matches(f"{key}._target_", pattern) for pattern in schema):
        return SWITCHED_OFF
    return None


def _components(node: DictConfig) -> bool:
    """A mapping of components under their names (``logger.csv``, ``logger.tensorboard``), some set to null."""
    children = [node._get_node(key) for key in node]
    return any(isinstance(c, DictConfig) for c in children) and all(
        isinstance(c, DictConfig) or c._is_none() for c in children
    )


def leaf_keys(cfg: DictConfig, command: str | None = None, prefix: str = "") -> Iterator[str]:
    """Every leaf key of ``cfg`` as a dotted path; lists are leaves, and so is a component set to null.

    With ``command``, a mapping given where that command's schema expects a value is a leaf too
    (``seed={a:1}``), so that it is checked rather than walked into.
    """
    for key in cfg:
        node = cfg._get_node(key)
        path = f"{prefix}{key}"
        walk = isinstance(node, DictConfig) and not node._is_none() and not node._is_interpolation()
        if walk and command is not None and (rule := rule_for(command, path)) is not None:
            # a component's config, or several under their names (logger=many), walked key by key
            walk = rule is SWITCHED_OFF and ("_target_" in node or _components(node))
        if walk:
            yield from leaf_keys(node, command, f"{path}.")
        else:
            yield path


def is_interpolation(cfg: DictConfig, key: str) -> bool:
    """Whether the dotted ``key`` of ``cfg`` holds an interpolation (``${...}``), or a list with one, not a value."""
    parent, _, name = key.rpartition(".")
    node = (OmegaConf.select(cfg, parent) if parent else cfg)._get_node(name)
    if isinstance(node, ListConfig) and not node._is_none() and not node._is_interpolation():
        return "${" in str(OmegaConf.to_container(node, resolve=False))
    return node._is_interpolation()


#: What :func:`check_config` checks: ``before_run`` the values as given and the checks across keys, ``in_run``
#: the values left for the run (interpolated or missing ones), ``all`` both.
Stage = Literal["all", "before_run", "in_run"]


def _left_for_the_run(cfg: DictConfig, key: str) -> bool:
    """Whether the value of ``key`` is only known inside the run: an interpolation (``${hydra:runtime.output_dir}``
    reads what only the run knows), a mapping holding one, or missing (``???``)."""
    if is_interpolation(cfg, key):
        return True
    parent, _, name = key.rpartition(".")
    node = (OmegaConf.select(cfg, parent) if parent else cfg)._get_node(name)
    inside = isinstance(node, DictConfig) and "${" in str(OmegaConf.to_container(node, resolve=False))
    return node._is_missing() or inside


def check_config(cfg: DictConfig, command: str, *, stage: Stage = "all") -> None:
    """Raise :class:`ConfigError` with one line for each bad value of ``cfg`` (the ``hydra`` node is Hydra's).

    Values are checked before the values that interpolate them: a bad ``data.name`` is reported once,
    not again through ``model.unet.num_classes``. A command checks each value once, in two halves:
    ``before_run`` before Hydra makes a run folder (so a bad value writes nothing), and ``in_run`` the
    values left for the run (:func:`_left_for_the_run`). ``all`` checks everything at once: a job of a
    ``-m`` sweep, or a config composed in code.
    """
    errors: list[str] = []
    left: list[str] = []
    for key in leaf_keys(cfg, command):
        if key == "hydra" or key.startswith("hydra."):
            continue
        if _left_for_the_run(cfg, key):
            left.append(key)
        elif stage != "in_run":
            errors += _check_leaf(cfg, command, key)
    if not errors and stage != "before_run":
        for key in left:
            errors += _check_leaf(cfg, command, key)
    if not errors and stage != "in_run":
        errors += _checks_across_keys(cfg, command)
    if errors:
        raise ConfigError(errors)


def _check_leaf(cfg: DictConfig, command: str, key: str) -> list[str]:
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
    except Exception as err:  # also a resolver of ours refusing its argument, e.g. num_classes of an unknown dataset
        text = str(err).splitlines()[0] if isinstance(err, OmegaConfBaseException) else str(err)  # not its full_key
        return [f"{key} cannot be resolved ({' '.join(text.split())})"]
    rule = rule_for(command, key)
    if rule is None:
        return []
    return [] if rule.test(value) else [rule.message(key, value)]


def _checks_across_keys(cfg: DictConfig, command: str) -> list[str]:
    """Values that are each fine but wrong together, or wrong on this machine."""
    errors = []
    if command == "train" and cfg.get("resume") and cfg.get("ckpt"):
        errors.append("resume=true and ckpt are exclusive: resume continues the run dir's last.ckpt")
    if command == "train" and cfg.get("ckpt") and cfg.get("init_from"):
        errors.append("ckpt and init_from are exclusive: ckpt continues a run, init_from starts one")
    logger = OmegaConf.select(cfg, "logger", default=None)
    one = OmegaConf.to_container(logger) if isinstance(logger, DictConfig) and "_target_" in logger else {}
    added = [key for key, value in one.items() if _component(value)]
    if command == "train" and added:
        errors.append(
            f"logger is one logger, so logger.{added[0]} cannot be added to it: start from logger=many, e.g. "
            f"logger=many +logger@logger.{added[0]}={added[0]}"
        )
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default=None)
    if command == "train" and accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            errors.append(
                f"trainer.accelerator={accelerator} but no GPU is visible here: use trainer=cpu "
                "(or trainer.accelerator=cpu), or run on a machine with a GPU"
            )
    return errors
