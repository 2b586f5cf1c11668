"""Every option of every config group composes, and the parts it names can be built."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from diffusion_lab.clip_score import load_clip_scorer
from diffusion_lab.config import CONF_DIR, run_id
from diffusion_lab.datamodule import MNISTDataModule
from diffusion_lab.diffusion_module import DiffusionModule
from diffusion_lab.samplers import SAMPLERS
from diffusion_lab.schedules import NoiseSchedule, cosine


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_groups_have_their_options() -> None:
    assert options("data") == ["fashion_mnist", "mnist"]
    assert options("model") == ["base", "large", "small"]
    assert options("model/lr_scheduler") == ["onecycle", "plateau"]
    assert options("schedule") == ["cosine", "linear", "quadratic"]
    assert set(options("trainer")) >= {"cpu", "gpu", "ddp"}
    assert set(options("logger")) == {"csv", "tensorboard", "wandb", "none"}
    assert options("experiment"), "experiments/ must be reachable as the experiment group"
    assert options("sampler") == sorted(SAMPLERS)
    assert options("clip") == ["laion2b", "none", "openai"]


@pytest.mark.parametrize("name", options("data"))
def test_data_options(compose_train, name: str) -> None:
    cfg = compose_train(f"data={name}")
    dm = instantiate(cfg.data)
    assert isinstance(dm, MNISTDataModule)
    assert dm.name == name and dm.num_classes == 10


@pytest.mark.parametrize("name", options("model"))
def test_model_options(compose_train, name: str) -> None:
    cfg = compose_train(f"model={name}")
    schedule = instantiate(cfg.schedule)
    model = instantiate(cfg.model, schedule=schedule)
    assert isinstance(model, DiffusionModule)
    assert list(model.unet.down_chs) == list(cfg.model.unet.down_chs)
    assert model.unet.num_classes == 10


@pytest.mark.parametrize("name", options("model/lr_scheduler"))
@pytest.mark.parametrize("preset", options("model"))
def test_lr_scheduler_options_build_for_every_preset(compose_train, preset: str, name: str) -> None:
    cfg = compose_train(f"model={preset}", f"model/lr_scheduler={name}")
    model = instantiate(cfg.model, schedule=instantiate(cfg.schedule))
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
    model = instantiate(cfg.model, schedule=instantiate(cfg.schedule))
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
    else:
        logger = instantiate(cfg.logger)
        assert Path(logger.save_dir) == tmp_path


#: Experiments for diffusion-lab-evaluate; the others are for diffusion-lab-train.
EVALUATION_EXPERIMENTS = ("guidance_sweep",)


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_options(compose_train, name: str) -> None:
    """Each experiment composes with its command and builds what it configures."""
    if name not in EVALUATION_EXPERIMENTS:
        cfg = compose_train(f"experiment={name}")
        instantiate(cfg.model, schedule=instantiate(cfg.schedule))
        return
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"experiment={name}"])
    GlobalHydra.instance().clear()
    sampler = instantiate(cfg.sampler, schedule=cosine(100))
    sampler.set_timesteps(cfg.steps)


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
    assert Path(HydraConfig.get().run.dir).parent == CONF_DIR.parent / "outputs" / "train"


@pytest.mark.parametrize("name", options("sampler"))
def test_sampler_options_build_the_named_sampler(name: str) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=[f"sampler={name}", "ckpt=x.ckpt"])
    GlobalHydra.instance().clear()
    sampler = instantiate(cfg.sampler, schedule=cosine(1000))
    assert isinstance(sampler, SAMPLERS[name])
    assert sampler.num_steps == {"ddpm": 1000, "ddim": 50, "dpm_solver": 20}[name]
    assert cfg.label == "all" and cfg.guidance == 2.0 and cfg.steps is None


@pytest.mark.parametrize("name", options("clip"))
@pytest.mark.parametrize("config_name", ["evaluate", "sample", "train"])
def test_clip_options_compose_with_both_prompt_sets(config_name: str, name: str) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=[f"clip={name}"])
    GlobalHydra.instance().clear()
    if name == "none":
        assert not cfg.clip
        return
    assert set(cfg.clip.prompts) == {"mnist", "fashion_mnist"}
    assert all(len(p["classes"]) == len(p["clear"]) == 10 for p in cfg.clip.prompts.values())
    assert cfg.clip.download is False, "nothing is downloaded unless asked"
    factory = instantiate(cfg.clip)
    assert factory.func is load_clip_scorer and factory.keywords["model_name"].startswith("ViT-B-32")
