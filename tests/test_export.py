"""``diffusion-lab-export``: the model folder is a diffusers pipeline folder that diffusers loads and that, loaded
without pickle, samples bit for bit as its checkpoint; folders of format 1 still load; bad folders are refused in
one line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file, save_file

from diffusion_lab import load_model
from diffusion_lab.diffusers_pipeline import DiffusionLabPipeline
from diffusion_lab.models.hub_format import INDEX_FILE, UNET_FOLDER
from diffusion_lab.models.unet import ConditionalUNet
from tests.helpers import main_in_process, one_error_line

FIXTURES = Path(__file__).parent / "fixtures"
CKPT = FIXTURES / "tiny_styled_v0.1.ckpt"
#: What loading reads of the folder the export of version 0.1.0 (format 1) wrote from ``CKPT`` with ``guide=CKPT``:
#: ``config.json``, ``model.safetensors``, ``guide.safetensors`` (its card and grid left out).
FORMAT_1_FOLDER = FIXTURES / "tiny_styled_v0.1_folder"
UNET_WEIGHTS = Path(UNET_FOLDER) / SAFETENSORS_WEIGHTS_NAME


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture checkpoint exported by the real command (in this process)."""
    tmp = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as monkeypatch:
        main_in_process(monkeypatch, "export", f"ckpt={CKPT}", f"output={tmp / 'model'}", "grid_per_class=2",
                        "steps=5", f"paths.log_dir={tmp / 'logs'}", f"hydra.run.dir={tmp / 'run'}")  # fmt: skip
    return tmp / "model"


def test_folder_is_a_diffusers_pipeline_folder_with_its_card(exported: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md", INDEX_FILE, "pipeline.py", "samples.png", "scheduler", UNET_FOLDER,
    ]  # fmt: skip
    assert sorted(p.name for p in (exported / UNET_FOLDER).iterdir()) == [CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME]
    index = json.loads((exported / INDEX_FILE).read_text())
    assert index["_class_name"] == ["pipeline", "DiffusionLabPipeline"]
    assert index["unet"] == ["diffusion_lab.models.unet", "ConditionalUNet"] and index["guide"] == [None, None]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]  # the eps objective's default sampler
    config = index["diffusion_lab"]
    assert config["format_version"] == 2
    assert config["schedule"] == {"name": "cosine", "timesteps": 1000, "s": 0.008, "max_beta": 0.999}
    assert config["objective"] == {
        "name": "eps",
        "min_snr_gamma": 5.0,
    }  # from before objectives: its model.min_snr_gamma
    assert config["dataset"]["name"] == "mnist" and config["dataset"]["class_names"][7] == "7"
    assert set(config["style_stats"]) == {"slant", "thickness"}
    assert config["training"]["global_step"] == 10 and config["training"]["ema_decay"] == 0.995
    unet = json.loads((exported / UNET_FOLDER / CONFIG_NAME).read_text())
    assert unet["_class_name"] == "ConditionalUNet" and unet["down_chs"] == [4, 8] and unet["num_styles"] == 2
    scheduler = json.loads((exported / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "epsilon" and len(scheduler["trained_betas"]) == 1000
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusion-lab\n")
    assert "| parameters | 11,817 |" in card and "![samples](samples.png)" in card and "Not evaluated" in card
    assert "| U-Net | channels [4, 8], attention at levels none |" in card
    assert 'DiffusionPipeline.from_pretrained("USER/REPO", trust_remote_code=True)' in card


def test_the_unet_folder_holds_the_checkpoints_weights(exported: Path) -> None:
    checkpoint = torch.load(CKPT, weights_only=True)["state_dict"]  # the EMA weights, under the module's unet.
    weights = load_file(exported / UNET_WEIGHTS)
    assert {f"unet.{key}" for key in weights} == checkpoint.keys()
    unet = ConditionalUNet.from_pretrained(exported, subfolder=UNET_FOLDER)
    assert unet.config.down_chs == [4, 8] and unet.state_dict().keys() == weights.keys()
    for key, value in checkpoint.items():
        assert torch.equal(weights[key.removeprefix("unet.")], value)
        assert torch.equal(unet.state_dict()[key.removeprefix("unet.")], value)


def test_folder_samples_bit_identical_to_its_checkpoint(exported: Path) -> None:
    from_ckpt, from_folder = load_model(CKPT), load_model(exported)
    assert from_folder.class_names == from_ckpt.class_names and from_folder.dataset == "mnist"
    for kwargs in ({"guidance": 2.0}, {"style": {"slant": 15, "thickness": "bold"}, "sampler": "dpm_solver"}):
        a = from_ckpt([3, 7, 7], seed=5, steps=6, **kwargs)
        b = from_folder([3, 7, 7], seed=5, steps=6, **kwargs)
        assert torch.equal(a, b)


def _diffusers_pipeline(folder: Path) -> DiffusionLabPipeline:
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_diffusers_loads_the_folder_and_draws_the_images_of_load_model(exported: Path) -> None:
    pipe, lab = _diffusers_pipeline(exported), load_model(exported)
    assert type(pipe) is DiffusionLabPipeline and isinstance(pipe, diffusers.DiffusionPipeline)
    assert isinstance(pipe.unet, ConditionalUNet) and pipe.guide is None

    def draw(**kwargs: object) -> torch.Tensor:
        return pipe([3, 7, "7"], generator=torch.Generator().manual_seed(5), output_type="pt", **kwargs).images

    assert torch.equal(draw(), lab([3, 7, 7], seed=5))  # DDIM, 50 steps, w = 0.3: the defaults of both
    styled = {"style": {"slant": 15, "thickness": "bold"}}
    assert torch.equal(draw(num_inference_steps=6, guidance_scale=3.0, **styled),
                       lab([3, 7, 7], seed=5, steps=6, guidance=2.0, **styled))  # fmt: skip
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # a stochastic sampler, swapped as in diffusers
    assert torch.equal(draw(num_inference_steps=5), lab([3, 7, 7], seed=5, sampler="ddpm", steps=5))
    images = pipe([1, 2], num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert [(image.mode, image.size) for image in images] == [("L", (28, 28))] * 2  # output_type="pil"
    array = pipe(1, num_inference_steps=2, output_type="np", return_dict=False)[0]
    assert array.shape == (1, 28, 28, 1) and 0 <= array.min() <= array.max() <= 1


def test_the_diffusers_pipeline_calls_back_every_step_and_shows_its_progress(exported: Path, capsys) -> None:
    pipe = diffusers.DiffusionPipeline.from_pretrained(exported, trust_remote_code=True)
    seen = []

    def last_step_to_zero(p: DiffusionLabPipeline, index: int, timestep: torch.Tensor, kwargs: dict) -> dict:
        assert p is pipe, "the callback is told the diffusers pipeline"
        seen.append((index, int(timestep), kwargs["latents"].shape[0]))
        return {"latents": torch.zeros_like(kwargs["latents"])} if index == 4 else kwargs

    capsys.readouterr()
    images = pipe([1, 2, 3], num_inference_steps=5, batch_size=2, callback_on_step_end=last_step_to_zero,
                  output_type="pt").images  # fmt: skip
    assert [(index, size) for index, _, size in seen] == [(i, 2) for i in range(5)] + [(i, 1) for i in range(5)]
    assert [t for _, t, _ in seen[:5]] == [800, 600, 400, 200, 0]  # DDIM's timesteps of 5 steps
    assert torch.all(images == 0.5), "the latents the callback returns go on: x_0 = 0 is mid-grey"
    assert "10/10" in capsys.readouterr().err  # steps x batches
    with pytest.raises(ValueError, match=re.escape("callback_on_step_end_tensor_inputs may name ['latents']")):
        pipe(1, callback_on_step_end=last_step_to_zero, callback_on_step_end_tensor_inputs=["noise_pred"])
    with pytest.raises(ValueError, match="output_type must be one of pil, np, pt"):
        pipe(1, output_type="latent")


def test_a_folder_of_format_1_loads_and_samples_as_its_checkpoint() -> None:
    assert sorted(p.name for p in FORMAT_1_FOLDER.iterdir()) == [CONFIG_NAME, "guide.safetensors", "model.safetensors"]
    from_ckpt, from_folder = load_model(CKPT, guide=CKPT), load_model(FORMAT_1_FOLDER)
    assert from_folder.dataset == "mnist" and from_folder.guide.step == 10
    for kwargs in ({"guidance": 2.0}, {"style": {"slant": 15, "thickness": "bold"}, "sampler": "dpm_solver"},
                   {"autoguidance": 1.0, "guidance": 0.5}):  # fmt: skip
        assert torch.equal(from_ckpt([3, 7, 7], seed=5, steps=6, **kwargs),
                           from_folder([3, 7, 7], seed=5, steps=6, **kwargs))  # fmt: skip


class _Payload:
    """Touches ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def test_no_folder_is_unpickled(exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Folders load from safetensors and JSON alone: a pickle beside the weights is never read."""
    marker = tmp_path / "unpickled"
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    torch.save({"out.bias": _Payload(marker)}, folder / UNET_FOLDER / "diffusion_pytorch_model.bin")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model folder was read with torch.load")

    monkeypatch.setattr(torch, "load", refuse)
    for path in (folder, FORMAT_1_FOLDER):
        pipe = load_model(path)
        pipe([1], steps=2)
    (folder / UNET_WEIGHTS).unlink()
    with pytest.raises(ValueError, match=f"has no {SAFETENSORS_WEIGHTS_NAME}: export it again"):
        load_model(folder)
    assert not marker.exists()


@pytest.mark.parametrize("objective", ["v", "flow", "edm"])
def test_every_objective_exports_and_samples_bit_identically(
    objective: str, make_checkpoint, tmp_path: Path, monkeypatch
) -> None:
    ckpt = make_checkpoint(f"objective={objective}")
    main_in_process(monkeypatch, "export", f"ckpt={ckpt}", f"output={tmp_path / 'model'}", "grid_per_class=1",
                    "steps=3", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    config = json.loads((tmp_path / "model" / INDEX_FILE).read_text())["diffusion_lab"]
    assert config["objective"]["name"] == objective
    from_ckpt, from_folder = load_model(ckpt), load_model(tmp_path / "model")
    assert from_folder.model.objective.name == objective
    images = from_ckpt([1, 4], seed=2, steps=4)
    assert torch.equal(images, from_folder([1, 4], seed=2, steps=4))
    diffusers_images = _diffusers_pipeline(tmp_path / "model")(
        [1, 4], num_inference_steps=4, generator=torch.Generator().manual_seed(2), output_type="pt"
    ).images
    assert torch.equal(images, diffusers_images), "the folder's scheduler is the objective's default sampler"


def test_ckpt_dir_in_sample_gives_the_same_files(exported: Path, tmp_path: Path, monkeypatch) -> None:
    for name, ckpt in (("ckpt", CKPT), ("folder", exported)):
        main_in_process(monkeypatch, "sample", f"ckpt={ckpt}", "label=[1,4]", "num_samples=2", "steps=5",
                        "slant=left", f"output={tmp_path / name}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert (tmp_path / "ckpt.png").read_bytes() == (tmp_path / "folder.png").read_bytes()
    with np.load(tmp_path / "ckpt.npz") as a, np.load(tmp_path / "folder.npz") as b:
        assert a.keys() == b.keys()
        for key in set(a) - {"meta"}:  # meta names the ckpt each was drawn from
            np.testing.assert_array_equal(a[key], b[key])  # styles: NaN where not asked for, on both
        assert json.loads(str(a["meta"]))["dataset"] == json.loads(str(b["meta"]))["dataset"] == "mnist"


@pytest.mark.parametrize("how", ["given", "found"])
def test_card_shows_the_evaluation(exported: Path, tmp_path: Path, monkeypatch, how: str) -> None:
    metrics = {"num_per_class": 10, "settings": "DDIM 50 steps, w=2, seed 0", "ckpt": str(CKPT),
               "generated/classifier_accuracy": 0.91, "real/classifier_accuracy": 0.99,
               "generated/fid": 12.5, "real/fid": 1.5}  # fmt: skip
    # found: the newest evaluation of this checkpoint under paths.log_dir/evaluate/ (diffusion-lab-evaluate's folders)
    path = tmp_path / "logs" / "evaluate" / "2026-01-01_00-00-00" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))
    shutil.copytree(exported, tmp_path / "model")
    given = [f"metrics={path}"] if how == "given" else []
    main_in_process(monkeypatch, "export", f"ckpt={CKPT}", f"output={tmp_path / 'model'}", "grid_per_class=1",
                    "steps=2", *given, f"paths.log_dir={tmp_path / 'logs'}",
                    f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    card = (tmp_path / "model" / "README.md").read_text()  # the earlier export was replaced
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "no partial or replaced folder left"
    assert "| classifier_accuracy | 91.00% | 99.00% |" in card and "| fid | 12.5 | 1.5 |" in card


def _tampered_header(folder: Path) -> None:
    path = folder / UNET_WEIGHTS
    data = bytearray(path.read_bytes())
    data[8] = ord("[")  # the header's JSON object opens with "{"
    path.write_bytes(bytes(data))


def _other_shape(folder: Path) -> None:
    weights = load_file(folder / UNET_WEIGHTS)
    weights["out.bias"] = torch.zeros(2)
    save_file(weights, folder / UNET_WEIGHTS)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_tampered_header, "unet/diffusion_pytorch_model.safetensors is not a readable safetensors file"),
        (lambda folder: (folder / INDEX_FILE).unlink(), "has no model_index.json, so it is not a diffusion-lab model"),
        (_other_shape, "holds weights of another model than unet/config.json describes (first difference: out.bias"),
    ],
    ids=["tampered-header", "no-index", "other-shape"],
)
def test_spoilt_folders_refused_in_one_line(
    exported: Path, tmp_path: Path, monkeypatch, capsys, spoil, message: str
) -> None:  # fmt: skip
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    spoil(folder)
    out = tmp_path / "samples"
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, "sample", f"ckpt={folder}", "num_samples=1", "steps=2", f"output={out}",
                        f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert exit_info.value.code == 1
    assert message in one_error_line(capsys.readouterr().err)
    assert not out.with_suffix(".png").exists()


def test_export_refuses_a_folder_that_is_not_a_model(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, "export", f"ckpt={CKPT}", f"output={tmp_path / 'notes'}",
                        f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert exit_info.value.code == 1
    assert "exists and is not a model folder" in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ([1, 2], "is not a diffusion-lab model config (missing format_version"),
        (None, "has no diffusion_lab entry, so it is not a diffusion-lab model folder"),
        ({"format_version": 3, "schedule": {}, "model": {}, "dataset": {}}, "upgrade diffusion-lab"),
        (
            {"format_version": 2, "schedule": {"name": "sigmoid"}, "model": {}, "dataset": {}},
            "unknown schedule in the model's config: use one of linear, quadratic, cosine",
        ),
    ],
    ids=["not-an-object", "no-entry", "newer-format", "unknown-schedule"],
)
def test_bad_configs_refused_in_one_line(exported: Path, tmp_path: Path, entry: object, message: str) -> None:
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    index = json.loads((folder / INDEX_FILE).read_text())
    index["diffusion_lab"] = entry
    (folder / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_model(folder)


def test_an_index_that_is_not_json_is_refused_in_one_line(exported: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    (folder / INDEX_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=re.escape("model_index.json is not valid JSON")):
        load_model(folder)
