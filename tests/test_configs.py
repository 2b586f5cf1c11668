"""Every option of every config group composes, and the parts it names can be built."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.config import CONF_DIR, project_root, run_id
from diffusion_lab.config_schema import ConfigError, check_config
from diffusion_lab.data.datamodule import MNISTDataModule
from diffusion_lab.diffusion.objectives import OBJECTIVES, EpsilonObjective, FlowObjective
from diffusion_lab.diffusion.reverse_process import DEFAULT_GUIDANCE
from diffusion_lab.diffusion.samplers import AUTO_SAMPLERS, Sampler, fitting_samplers, make_sampler
from diffusion_lab.diffusion.schedules import NoiseSchedule, cosine
from diffusion_lab.evaluation.clip import load_clip_scorer
from diffusion_lab.models.diffusion_module import DiffusionModule
from diffusion_lab.training.loggers import instantiate_loggers
from tests.helpers import compose_hydra


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_groups_have_their_options() -> None:
    assert options("data") == ["fashion_mnist", "mnist"]
    assert options("recipe") == options("data"), "every dataset has its recipe"
    assert options("model") == ["base", "large", "small"]
    assert options("model/lr_scheduler") == ["onecycle", "plateau"]
    assert options("objective") == ["edm", "eps", "flow", "v"]
    assert options("schedule") == ["cosine", "linear", "quadratic"]
    assert set(options("trainer")) >= {"cpu", "gpu", "ddp"}
    assert set(options("logger")) == {"csv", "tensorboard", "wandb", "many", "none"}
    assert options("experiment"), "conf/experiment/ holds the named experiments"
    assert options("sampler") == [
        "auto", "ddim", "ddpm", "diffusers", "dpm_solver", "dpm_solver_sde", "edm_euler", "euler", "euler_ancestral",
        "flow_euler", "heun", "unipc",
    ]  # fmt: skip
    assert options("clip") == ["laion2b", "none", "openai"]
    assert options("debug") == ["fdr", "limit", "overfit", "profiler"]
    assert options("hparams_search") == ["optuna"]
    assert "example" in options("local"), "local/default.yaml, if any, is the user's own and git-ignored"


@pytest.mark.parametrize("name", options("data"))
def test_data_options(compose_train, name: str) -> None:
    cfg = compose_train(f"data={name}")
    dm = instantiate(cfg.data)
    assert isinstance(dm, MNISTDataModule)
    assert dm.name == name and dm.num_classes == 10


@pytest.mark.parametrize("name", options("model"))
def test_model_options(compose_train, name: str) -> None:
    cfg = compose_train(f"model={name}")
    model = instantiate(cfg.model, objective=instantiate(cfg.objective))
    assert isinstance(model, DiffusionModule)
    assert list(model.unet.down_chs) == list(cfg.model.unet.down_chs)
    assert model.unet.num_classes == 10


@pytest.mark.parametrize("name", options("model/lr_scheduler"))
@pytest.mark.parametrize("preset", options("model"))
def test_lr_scheduler_options_build_for_every_preset(compose_train, preset: str, name: str) -> None:
    cfg = compose_train(f"model={preset}", f"model/lr_scheduler={name}")
    model = instantiate(cfg.model, objective=instantiate(cfg.objective))
    config = model.configure_optimizers()
    expected = {"onecycle": "LambdaLR", "plateau": "ReduceLROnPlateau"}[name]
    assert type(config["lr_scheduler"]["scheduler"]).__name__ == expected
    assert config["lr_scheduler"]["interval"] == ("step" if name == "onecycle" else "epoch")


def test_model_presets_have_documented_channels(compose_train) -> None:
    expected = {"small": [16, 32, 64], "base": [32, 64, 128], "large": [64, 128, 256, 512]}
    for name, chs in expected.items():
        assert list(compose_train(f"model={name}").model.unet.down_chs) == chs


def test_unet_override_from_command_line(compose_train) -> None:
    cfg = compose_train("model.unet.down_chs=[32,64,128]", "model.unet.attention_levels=[1,2]")
    model = instantiate(cfg.model, objective=instantiate(cfg.objective))
    assert model.unet.down_chs == (32, 64, 128)


@pytest.mark.parametrize("name", options("schedule"))
def test_schedule_options(compose_train, name: str) -> None:
    cfg = compose_train(f"schedule={name}", "diffusion.timesteps=200")
    schedule = instantiate(cfg.schedule)
    assert isinstance(schedule, NoiseSchedule)
    assert schedule.name == name and schedule.timesteps == 200


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options(compose_train, name: str) -> None:
    cfg = compose_train(f"trainer={name}")
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if cfg.trainer.accelerator in ("cpu", "auto"):
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert isinstance(trainer, L.Trainer)


@pytest.mark.parametrize("name", options("logger"))
def test_logger_options(compose_train, name: str, tmp_path: Path) -> None:
    cfg = compose_train(f"logger={name}")
    if name == "none":
        assert not cfg.logger
    elif name == "wandb":
        assert cfg.logger.offline is True
        assert cfg.logger.id == compose_train(f"logger={name}").logger.id, "a resumed run keeps its wandb run"
        assert len(cfg.logger.id) == 12 and cfg.logger.resume == "allow"
        assert run_id(str(tmp_path / "other")) != cfg.logger.id
    elif name == "many":
        assert [type(lg).__name__ for lg in instantiate_loggers(cfg.logger)] == [
            "ResumableCSVLogger",
            "TensorBoardLogger",
        ]
    else:
        (logger,) = instantiate_loggers(cfg.logger)
        assert Path(logger.save_dir) == tmp_path


def test_many_loggers_take_wandb_with_one_override_and_leave_out_one_set_to_null(compose_train, tmp_path) -> None:
    """``logger=many``: csv and TensorBoard in the run folder, wandb added by ``+logger@logger.wandb=wandb``."""
    cfg = compose_train("logger=many", "+logger@logger.wandb=wandb", "logger.tensorboard=null")
    assert cfg.logger.wandb.offline is True and len(cfg.logger.wandb.id) == 12
    check_config(cfg, "train")
    csv, wandb = instantiate_loggers(cfg.logger)
    assert [type(csv).__name__, type(wandb).__name__] == ["ResumableCSVLogger", "CheckedWandbLogger"]
    assert Path(csv.log_dir) == tmp_path / "csv" and Path(wandb.save_dir) == tmp_path


def test_a_logger_added_to_a_single_logger_is_refused_with_the_override_that_works(compose_train) -> None:
    with pytest.raises(ConfigError) as err:
        check_config(compose_train("logger=csv", "+logger@logger.wandb=wandb"), "train")
    assert err.value.lines == [
        "logger is one logger, so logger.wandb cannot be added to it: start from logger=many, e.g. "
        "logger=many +logger@logger.wandb=wandb"
    ]


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_options(compose_train, name: str) -> None:
    """Each experiment names its command (``task_name``), composes with it and builds what it configures."""
    task_name = OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml").get("task_name")
    assert task_name in ("train", "evaluate"), f"experiment/{name}.yaml must name its command in task_name"
    if task_name == "train":
        cfg = compose_train(f"experiment={name}")
        instantiate(cfg.model, objective=instantiate(cfg.objective))
        return
    cfg = compose_hydra(f"experiment={name}", config_name=task_name)
    assert cfg.task_name == task_name
    instantiate(cfg.sampler)(objective=EpsilonObjective(cosine(100))).set_timesteps(cfg.steps)


@pytest.mark.parametrize("config_name", ["train", "sample", "evaluate", "figures", "export"])
def test_every_command_runs_in_its_own_folder_from_one_hydra_setup(config_name: str) -> None:
    cfg = compose_hydra(config_name=config_name)
    assert cfg.task_name == config_name
    outputs = project_root() / "outputs"
    assert Path(cfg.hydra.run.dir).parent == outputs / config_name
    multirun = "multirun" if config_name == "train" else f"{config_name}-multirun"
    assert Path(cfg.hydra.sweep.dir).parent == outputs / multirun


def test_callbacks_build_in_order(compose_train) -> None:
    cfg = compose_train()
    names = list(cfg.callbacks)
    assert names.index("sample_grid") < names.index("ema"), "grids must be drawn while EMA weights are in"
    assert names.index("sample_quality") < names.index("ema") and names.index("sample_quality") < names.index(
        "metrics_json"
    ), "sample quality is scored with the EMA weights, and its final values reach metrics.json"
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    assert all(isinstance(c, L.Callback) for c in callbacks)


def test_run_dirs_live_under_outputs(compose_train) -> None:
    compose_train()
    assert Path(HydraConfig.get().run.dir).parent == project_root() / "outputs" / "train"


@pytest.mark.parametrize("name", options("sampler"))
def test_sampler_options_build_the_named_sampler(name: str) -> None:
    cfg = compose_hydra(f"sampler={name}", "ckpt=x.ckpt", config_name="sample")
    for objective in (EpsilonObjective(cosine(1000)), FlowObjective()):
        fits = name in ("auto", "diffusers") or name in fitting_samplers(objective)[0]
        if not fits:
            with pytest.raises(ValueError, match=f"does not fit objective={objective.name}"):
                instantiate(cfg.sampler)(objective=objective)
            continue
        sampler = instantiate(cfg.sampler)(objective=objective)
        assert isinstance(sampler, Sampler)
        named = AUTO_SAMPLERS[objective.name] if name == "auto" else name
        # The notebook's make_sampler(NAME) builds what sampler=NAME builds.
        built = make_sampler(cfg.sampler.name if name == "diffusers" else named, objective)
        assert (sampler.name, sampler.default_steps, sampler.step_options) == (
            built.name, built.default_steps, built.step_options
        )  # fmt: skip
        assert dict(sampler.scheduler.config) == dict(built.scheduler.config)
        sampler.set_timesteps(None)
        assert sampler.num_steps == (sampler.default_steps or 1000)
    assert cfg.label == "all" and cfg.steps is None


@pytest.mark.parametrize("name", options("objective"))
def test_objective_options(compose_train, name: str) -> None:
    cfg = compose_train(f"objective={name}")
    objective = instantiate(cfg.objective)
    assert isinstance(objective, OBJECTIVES[name]) and objective.name == name
    assert (objective.min_snr_gamma is not None) == (name in ("eps", "v"))


@pytest.mark.parametrize("name", options("clip"))
@pytest.mark.parametrize("config_name", ["evaluate", "sample", "train"])
def test_clip_options_compose_with_both_prompt_sets(config_name: str, name: str) -> None:
    cfg = compose_hydra(f"clip={name}", config_name=config_name)
    if name == "none":
        assert not cfg.clip
        return
    assert set(cfg.clip.prompts) == {"mnist", "fashion_mnist"}
    assert all(len(p["classes"]) == len(p["clear"]) == 10 for p in cfg.clip.prompts.values())
    assert cfg.clip.download is False, "nothing is downloaded unless asked"
    factory = instantiate(cfg.clip)
    assert factory.func is load_clip_scorer and factory.keywords["model_name"].startswith("ViT-B-32")


@pytest.mark.parametrize("where", ["checkout", "own_folder"])
def test_local_machine_settings_reach_every_command(where: str, tmp_path: Path) -> None:
    """``local/default.yaml`` (the user's own) is picked up by every command: in a checkout's config tree
    (git-ignored), or in the user's own config folder on the search path (an installed package)."""
    local = "# @package _global_\npaths:\n  data_dir: /scratch/data\ndefaults:\n  - override /hydra/launcher: slurm\n"
    local += "hydra:\n  launcher:\n    partition: gpu\n    account: my-project\n"
    conf, overrides = CONF_DIR, []
    if where == "checkout":
        conf = tmp_path / "conf"
        shutil.copytree(CONF_DIR, conf, symlinks=False)
    else:
        overrides = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]
    (tmp_path / "conf" / "local").mkdir(parents=True, exist_ok=True)
    (tmp_path / "conf" / "local" / "default.yaml").write_text(local)
    for config_name in ("train", "sample", "evaluate", "figures", "export"):
        cfg = compose_hydra(*overrides, config_name=config_name, conf_dir=conf)
        assert cfg.paths.data_dir == "/scratch/data", config_name
        assert (cfg.hydra.launcher.partition, cfg.hydra.launcher.account) == ("gpu", "my-project"), config_name
    assert compose_hydra().paths.data_dir != "/scratch/data", "without the file, nothing changes"


def test_the_local_example_is_a_config_that_changes_nothing() -> None:
    assert not compose_hydra("local=example").get("hydra", {}).get("launcher", {}).get("partition")
    assert "partition" in (CONF_DIR / "local" / "example.yaml").read_text()


@pytest.mark.parametrize("command", ["sample", "evaluate", "figures", "export"])
def test_commands_default_to_the_library_guidance(command: str) -> None:
    cfg = OmegaConf.load(CONF_DIR / f"{command}.yaml")
    assert cfg.guidance == DEFAULT_GUIDANCE
    if command != "export":
        assert cfg.autoguidance is None, "null: the checkpoint's recipe's weight when it has a guide"


def test_each_dataset_trains_its_own_recipe(compose_train) -> None:
    """data=NAME brings that dataset's recipe in one override; recipe=NAME picks another, values given win."""
    mnist, fashion = compose_train(), compose_train("data=fashion_mnist")
    assert (mnist.data.batch_size, fashion.data.batch_size) == (128, 64)
    for callback in ("sample_grid", "sample_quality"):
        assert (mnist.callbacks[callback].autoguidance, fashion.callbacks[callback].autoguidance) == (0.0, 0.5)
    assert compose_train("data=fashion_mnist", "recipe=mnist").data.batch_size == 128
    assert compose_train("data=fashion_mnist", "data.batch_size=32").data.batch_size == 32
    assert compose_train("data=fashion_mnist", "model=base").model.unet.down_chs == [32, 64, 128]

    def rest(cfg: DictConfig) -> dict:
        return {k: v for k, v in OmegaConf.to_container(cfg).items() if k not in ("data", "callbacks")}

    assert rest(fashion) == rest(mnist), "the recipe changes the batch and the callbacks' autoguidance only"


def test_training_callbacks_and_default_objective_sample_at_the_defaults(compose_train) -> None:
    cfg = compose_train()
    assert cfg.objective._target_.endswith("FlowObjective")
    assert cfg.callbacks.sample_grid.guidance == cfg.callbacks.sample_quality.guidance == DEFAULT_GUIDANCE
    assert cfg.callbacks.sample_grid.autoguidance == cfg.callbacks.sample_quality.autoguidance == 0.0
    assert cfg.callbacks.sample_grid.steps is None  # flow Euler's own default
    assert instantiate(cfg.sampler)(objective=instantiate(cfg.objective)).name == "FlowMatchEulerDiscreteScheduler"


def test_the_gpu_experiment_trains_the_default_recipe(compose_train) -> None:
    """experiment=gpu changes how fast a run goes (device, batch, compile, syncs), not what it trains."""
    default, gpu = compose_train(), compose_train("experiment=gpu")
    assert gpu.objective == default.objective
    assert gpu.model.lr_scheduler == default.model.lr_scheduler and gpu.model.optimizer == default.model.optimizer
    assert gpu.callbacks.ema == default.callbacks.ema
    assert (gpu.trainer.accelerator, gpu.model.compile, gpu.data.batch_size) == ("gpu", True, 512)
