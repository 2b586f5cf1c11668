"""Autoguidance (a weaker model guides the model) and guidance intervals open above, which cover every step."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from safetensors.torch import load_file

from diffusion_lab.config import CONF_DIR
from diffusion_lab.config_schema import ConfigError, check_config
from diffusion_lab.diffusion.reverse_process import check_guidance, guided_output, sample
from diffusion_lab.export import export_model
from diffusion_lab.models.checkpoints import GUIDE_SNAPSHOT_KEY, checkpoint_snapshot
from diffusion_lab.models.hub_format import GUIDE_FOLDER, INDEX_FILE
from diffusion_lab.models.unet import ConditionalUNet
from diffusion_lab.pipeline import Guide, load_model
from diffusion_lab.training.fit import train
from tests.helpers import main_in_process, one_error_line, run_cli
from tests.toy_models import toy_objectives

OBJECTIVES = toy_objectives(100)
SAMPLERS = {"eps": "dpm_solver", "v": "euler", "flow": "flow_euler", "edm": "edm_euler"}


def random_unet(seed: int) -> ConditionalUNet:
    torch.manual_seed(seed)
    net = ConditionalUNet(down_chs=(8, 16))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net.eval()


@pytest.fixture(scope="module")
def unet() -> ConditionalUNet:
    return random_unet(0)


@pytest.fixture(scope="module")
def weaker() -> ConditionalUNet:
    return random_unet(1)


def test_the_guided_output_is_the_formula(unet: ConditionalUNet, weaker: ConditionalUNet) -> None:
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([100, 100]), torch.tensor([1, 2])
    cond, uncond, guide = unet(x, t, y), unet(x, t, torch.full_like(y, unet.null_class)), weaker(x, t, y)
    expected = cond + 2.0 * (cond - uncond) + 1.5 * (cond - guide)
    both = guided_output(unet, x, t, y, 2.0, guide=weaker, autoguidance=1.5)
    torch.testing.assert_close(both, expected, rtol=1e-4, atol=1e-5)
    alone = guided_output(unet, x, t, y, 0.0, guide=weaker, autoguidance=1.5)
    torch.testing.assert_close(alone, cond + 1.5 * (cond - guide), rtol=1e-4, atol=1e-5)


class Counting(torch.nn.Module):
    """A network that records the batch size of every pass."""

    def __init__(self, net: ConditionalUNet) -> None:
        super().__init__()
        self.net, self.null_class, self.passes = net, net.null_class, []

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        self.passes.append(len(x))
        return self.net(x, *args)


@pytest.mark.parametrize(
    ("guidance", "autoguidance", "model", "guide"),
    [(0, 0, [3], []), (2, 0, [6], []), (0, 1, [3], [3]), (2, 1, [6], [3])],
)
def test_network_passes_per_step(
    unet: ConditionalUNet, weaker: ConditionalUNet, guidance: float, autoguidance: float, model: list, guide: list
) -> None:
    """1 pass, plus CFG's in the same [2B] batch, plus one pass of the guide network with autoguidance."""
    counted, counted_guide = Counting(unet), Counting(weaker)
    x, t, y = torch.randn(3, 1, 28, 28), torch.tensor([10, 10, 10]), torch.tensor([1, 2, 3])
    guided_output(counted, x, t, y, guidance, guide=counted_guide, autoguidance=autoguidance)
    assert (counted.passes, counted_guide.passes) == (model, guide)


@pytest.mark.parametrize("objective", sorted(SAMPLERS))
def test_the_model_as_its_own_guide_or_weight_zero_gives_the_unguided_images(
    unet: ConditionalUNet, weaker: ConditionalUNet, objective: str
) -> None:
    labels = torch.tensor([0, 3, 7])
    noise = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))

    def draw(**kwargs: object) -> torch.Tensor:
        return sample(unet, OBJECTIVES[objective], labels, sampler=SAMPLERS[objective], steps=5, noise=noise, **kwargs)

    unguided = draw()
    assert torch.equal(draw(guide=unet, autoguidance=2.0), unguided)
    assert torch.equal(draw(guide=weaker, autoguidance=0.0), unguided)
    assert torch.equal(draw(guidance=1.5, guide=weaker, autoguidance=0.0), draw(guidance=1.5))
    assert not torch.equal(draw(guide=weaker, autoguidance=2.0), unguided)


@pytest.mark.parametrize("objective", sorted(SAMPLERS))
def test_an_interval_open_above_covers_every_step_for_both_guidance_kinds(
    unet: ConditionalUNet, weaker: ConditionalUNet, objective: str
) -> None:
    labels = torch.tensor([1, 8])
    noise = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(4))

    def draw(interval: list | None, **kwargs: object) -> torch.Tensor:
        return sample(unet, OBJECTIVES[objective], labels, sampler=SAMPLERS[objective], steps=5, noise=noise,
                      guidance_interval=interval, **kwargs)  # fmt: skip

    for kwargs in ({"guidance": 2.0}, {"guide": weaker, "autoguidance": 1.0}, {"guidance": 1.0, "guide": weaker,
                                                                              "autoguidance": 1.0}):  # fmt: skip
        everywhere = draw(None, **kwargs)
        assert torch.equal(draw([0.0, None], **kwargs), everywhere)
        assert torch.equal(draw([0.0, math.inf], **kwargs), everywhere)
        assert torch.equal(draw([1e6, None], **kwargs), draw(None)) or objective == "flow"  # only flow's sigma=inf
    if objective == "flow":  # its first step's sigma is infinite: a finite upper end leaves it unguided
        assert not torch.equal(draw([0.0, 1e9], guidance=2.0), draw(None, guidance=2.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"autoguidance": -1.0}, "autoguidance must be a finite number >= 0"),
     ({"autoguidance": math.nan}, "autoguidance must be a finite number >= 0"),
     ({"interval": [0.0, math.nan]}, "guidance_interval must be [SIGMA_LO, SIGMA_HI]"),
     ({"interval": [None, 1.0]}, "guidance_interval must be [SIGMA_LO, SIGMA_HI]"),
     ({"interval": [2.0, 1.0]}, "0 <= SIGMA_LO <= SIGMA_HI")],
)  # fmt: skip
def test_bad_weights_and_intervals_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        check_guidance(0.3, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_autoguidance_without_a_guide_network_is_refused(unet: ConditionalUNet) -> None:
    with pytest.raises(ValueError, match="autoguidance needs a guide network"):
        sample(unet, OBJECTIVES["flow"], torch.tensor([1]), steps=2, image_shape=(1, 28, 28), autoguidance=1.0)


# --------------------------------------------------------------------------- checkpoints and the pipeline


def test_a_checkpoint_guided_by_itself_gives_the_unguided_images(make_checkpoint: Callable[..., Path]) -> None:
    ckpt = make_checkpoint()
    pipe = load_model(ckpt, guide=ckpt)
    for guidance in (0.0, 2.0):
        plain = pipe([3, 7], seed=1, steps=4, guidance=guidance)
        assert torch.equal(pipe([3, 7], seed=1, steps=4, guidance=guidance, autoguidance=0.0), plain)
    assert torch.equal(pipe([3, 7], seed=1, steps=4, guidance=0.0, autoguidance=3.0), pipe([3, 7], seed=1, steps=4,
                                                                                            guidance=0.0))  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(("data=fashion_mnist",), "was trained on fashion_mnist, the model on mnist"),
     (("model.unet.num_classes=5",), "has 5 classes, the model 10"),
     (("model.unet.in_channels=3",), "draws images of shape [3, 28, 28], the model [1, 28, 28]"),
     (("objective=v",), "has objective v (cosine schedule), the model eps (cosine schedule)"),
     (("schedule=linear",), "has objective eps (linear schedule), the model eps (cosine schedule)"),
     (("diffusion.timesteps=50",), "has objective eps (cosine schedule) on other noise levels")],
)  # fmt: skip
def test_a_guide_of_other_data_is_refused_in_one_line(
    make_checkpoint: Callable[..., Path], overrides: tuple[str, ...], message: str
) -> None:
    ckpt = make_checkpoint()
    guide = make_checkpoint(*overrides, name="guide.ckpt")
    with pytest.raises(ValueError) as err:
        load_model(ckpt, guide=guide)
    assert message in str(err.value) and "pass guide=" in str(err.value) and "\n" not in str(err.value)


def test_a_request_without_a_weight_autoguides_as_the_recipe_does(make_checkpoint: Callable[..., Path]) -> None:
    """``autoguidance=None`` (the commands' null) is the recipe's weight when the model has a guide, else off."""
    mnist = load_model(make_checkpoint())
    fashion = load_model(make_checkpoint("data=fashion_mnist", name="fashion.ckpt"))
    assert (mnist.recipe_autoguidance, fashion.recipe_autoguidance) == (0.0, 0.5)
    assert fashion.default_autoguidance == 0.0, "no snapshot and no guide given: off, not refused"
    assert torch.equal(fashion([3, 7], seed=1, steps=3), fashion([3, 7], seed=1, steps=3, autoguidance=0.0))
    for pipe in (mnist, fashion):
        guide = copy.deepcopy(pipe.model)
        guide.unet.load_state_dict(random_unet(1).state_dict())
        pipe.set_guide(Guide(guide, pipe.dataset, "a weaker model"))
    assert (mnist.default_autoguidance, fashion.default_autoguidance) == (0.0, 0.5)
    default = fashion([3, 7], seed=1, steps=3)
    assert torch.equal(default, fashion([3, 7], seed=1, steps=3, autoguidance=0.5))
    assert not torch.equal(default, fashion([3, 7], seed=1, steps=3, autoguidance=0.0))


def test_a_checkpoint_without_a_snapshot_and_no_guide_is_refused_in_one_line(
    make_checkpoint: Callable[..., Path],
) -> None:
    pipe = load_model(make_checkpoint())
    pipe([1], steps=2)  # without autoguidance nothing needs a guide
    with pytest.raises(ValueError, match=r"holds no guide snapshot for autoguidance .*: pass guide=PATH"):
        pipe([1], steps=2, autoguidance=1.0)


# --------------------------------------------------------------------------- a real run: the snapshot and its uses


def compose_run(output_dir: Path, *overrides: str) -> DictConfig:
    """``src/diffusion_lab/conf/train.yaml`` of a six-step run into ``output_dir``, as the entry point composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=[
            "experiment=smoke", "logger=none", "callbacks.sample_quality=null", "trainer.max_steps=6",
            "trainer.limit_train_batches=6", "trainer.val_check_interval=2", "callbacks.sample_grid.num_per_class=1",
            "callbacks.sample_grid.steps=2", *overrides,
        ])  # fmt: skip
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
        cfg.paths.output_dir = str(output_dir)
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A six-step run that keeps every validation's checkpoint, with the guide snapshot at 0.33 (step 2)."""
    folder = tmp_path_factory.mktemp("run")
    train(compose_run(folder, "callbacks.model_checkpoint.save_top_k=-1",
                      "callbacks.sample_grid.autoguidance=1.0"))  # fmt: skip
    return folder


@pytest.mark.slow
def test_the_run_keeps_its_ema_weights_at_the_fraction_in_every_later_checkpoint(run_dir: Path) -> None:
    checkpoints = {c["global_step"]: c for c in
                   (torch.load(p, weights_only=True) for p in (run_dir / "checkpoints").glob("*.ckpt"))}  # fmt: skip
    assert sorted(checkpoints) == [2, 4, 6]
    weights, step = checkpoint_snapshot(checkpoints[6])
    assert step == 2  # round(0.33 * 6)
    for later in (4, 6):  # the EMA weights of step 2, as its checkpoint's state_dict holds them
        kept, _ = checkpoint_snapshot(checkpoints[later])
        assert all(torch.equal(kept[k], v) for k, v in checkpoints[2]["state_dict"].items())
    assert any(not torch.equal(weights[k], v) for k, v in checkpoints[6]["state_dict"].items())
    assert (run_dir / "samples" / "final.png").is_file()  # the grid drew with autoguidance once it could


@pytest.mark.slow
def test_the_snapshot_survives_resume_and_a_run_resumed_before_it_takes_it(run_dir: Path, tmp_path: Path) -> None:
    last = run_dir / "checkpoints" / "last.ckpt"
    kept, _ = checkpoint_snapshot(torch.load(last, weights_only=True))
    more = ("trainer.max_epochs=2", "trainer.max_steps=12", "trainer.limit_train_batches=12")
    train(compose_run(tmp_path / "after", *more, f"ckpt={last}"))
    after = torch.load(tmp_path / "after" / "checkpoints" / "last.ckpt", weights_only=True)
    weights, step = checkpoint_snapshot(after)
    assert after["global_step"] == 12 and step == 2 and all(torch.equal(weights[k], v) for k, v in kept.items())

    before = torch.load(last, weights_only=True)  # as if saved before the fraction: no snapshot yet
    before["callbacks"][GUIDE_SNAPSHOT_KEY].update(step=None, weights=None)
    torch.save(before, tmp_path / "before.ckpt")
    train(compose_run(tmp_path / "resumed", *more, "callbacks.guide_snapshot.fraction=0.75",
                      f"ckpt={tmp_path / 'before.ckpt'}"))  # fmt: skip
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 12 and checkpoint_snapshot(resumed)[1] == 9  # 0.75 * 12, past the resume at 6


@pytest.mark.slow
def test_the_exported_folder_carries_the_guide_and_samples_as_the_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    last = run_dir / "checkpoints" / "last.ckpt"
    config = export_model(last, tmp_path / "model", grid_per_class=1, steps=2)
    assert config["guide"]["global_step"] == 2
    snapshot, _ = checkpoint_snapshot(torch.load(last, weights_only=True))
    stored = load_file(tmp_path / "model" / GUIDE_FOLDER / SAFETENSORS_WEIGHTS_NAME)  # the guide's U-Net
    assert {f"unet.{k}" for k in stored} == snapshot.keys()
    assert all(torch.equal(stored[k.removeprefix("unet.")], v) for k, v in snapshot.items())
    from_ckpt, from_folder = load_model(last), load_model(tmp_path / "model")
    diffusers_pipe = DiffusionPipeline.from_pretrained(tmp_path / "model", trust_remote_code=True)
    diffusers_pipe.set_progress_bar_config(disable=True)
    for kwargs in ({"autoguidance": 2.0, "guidance": 0.0}, {"autoguidance": 1.0, "guidance": 0.5,
                                                             "guidance_interval": (0.5, None)}):  # fmt: skip
        a, b = from_ckpt([2, 5, 9], seed=3, steps=4, **kwargs), from_folder([2, 5, 9], seed=3, steps=4, **kwargs)
        assert torch.equal(a, b)
        assert not torch.equal(a, from_ckpt([2, 5, 9], seed=3, steps=4, guidance=kwargs["guidance"]))
        guidance_scale = 1 + kwargs.pop("guidance")
        c = diffusers_pipe([2, 5, 9], generator=torch.Generator().manual_seed(3), num_inference_steps=4,
                           guidance_scale=guidance_scale, output_type="pt", **kwargs).images  # fmt: skip
        assert torch.equal(a, c), "diffusers' pipeline guides with the folder's guide/ as load_model does"
    assert "guide" in json.loads((tmp_path / "model" / INDEX_FILE).read_text())["diffusion_lab"]
    assert from_folder.recipe_autoguidance == from_ckpt.recipe_autoguidance, "the folder records its recipe's weight"


@pytest.mark.slow
def test_sample_and_figures_take_the_new_keys(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = run_cli(
        "sample",
        f"ckpt={last}",
        "label=7",
        "num_samples=2",
        "steps=3",
        "autoguidance=1",
        "guidance_interval=[0,null]",
        f"output={tmp_path / 's'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "autoguidance 1" in proc.stdout + proc.stderr and (tmp_path / "s.npz").is_file()
    main_in_process(monkeypatch, "figures", f"ckpt={last}", f"guide={last}", "autoguidance=0.5", "steps=2",
                    "num_per_class=1", "guidance_weights=[0,1]", "guidance_interval=[0,inf]",
                    f"output={tmp_path / 'figs'}", f"hydra.run.dir={tmp_path / 'run2'}")  # fmt: skip
    assert (tmp_path / "figs" / "guidance_sweep.png").is_file()


@pytest.mark.parametrize("command", ["sample", "evaluate", "figures"])
def test_a_guide_of_other_data_is_one_error_line_of_each_command(
    command: str, make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # fmt: skip
    ckpt, guide = make_checkpoint(), make_checkpoint("data=fashion_mnist", name="guide.ckpt")
    extra = "clip=none" if command == "evaluate" else "steps=2"
    with pytest.raises(SystemExit):
        main_in_process(monkeypatch, command, f"ckpt={ckpt}", f"guide={guide}", "autoguidance=1", extra,
                        f"output={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert "was trained on fashion_mnist, the model on mnist" in one_error_line(capsys.readouterr().err)


def test_the_schema_takes_open_intervals_and_the_new_keys(compose_train) -> None:
    for interval in ("[0,null]", "[0,inf]", "[0.3,5]"):
        check_config(compose_train(f"callbacks.sample_grid.guidance_interval={interval}",
                                   "callbacks.sample_grid.autoguidance=1"), "train")  # fmt: skip
    with pytest.raises(ConfigError, match="guidance_interval must be"):
        check_config(compose_train("callbacks.sample_grid.guidance_interval=[null,1]"), "train")
    with pytest.raises(ConfigError, match=r"guide_snapshot\.fraction must be a number in"):
        check_config(compose_train("callbacks.guide_snapshot.fraction=1"), "train")
