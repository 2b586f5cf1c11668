"""``diffusion-lab-export``: the model folder, loaded without pickle, samples bit for bit as its checkpoint; bad
folders are refused in one line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion_lab import load_model
from diffusion_lab.models.hub_format import CONFIG_FILE, WEIGHTS_FILE
from tests.helpers import main_in_process, one_error_line

CKPT = Path(__file__).parent / "fixtures" / "tiny_styled_v0.1.ckpt"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture checkpoint exported by the real command (in this process)."""
    tmp = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as monkeypatch:
        main_in_process(monkeypatch, "export", f"ckpt={CKPT}", f"output={tmp / 'model'}", "grid_per_class=2",
                        "steps=5", f"paths.log_dir={tmp / 'logs'}", f"hydra.run.dir={tmp / 'run'}")  # fmt: skip
    return tmp / "model"


def test_folder_holds_weights_config_and_card(exported: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", CONFIG_FILE, WEIGHTS_FILE, "samples.png"]
    config = json.loads((exported / CONFIG_FILE).read_text())
    assert config["schedule"] == {"name": "cosine", "timesteps": 1000, "s": 0.008, "max_beta": 0.999}
    assert config["objective"] == {
        "name": "eps",
        "min_snr_gamma": 5.0,
    }  # from before objectives: its model.min_snr_gamma
    assert config["unet"]["down_chs"] == [4, 8] and config["unet"]["num_styles"] == 2
    assert config["dataset"]["name"] == "mnist" and config["dataset"]["class_names"][7] == "7"
    assert set(config["style_stats"]) == {"slant", "thickness"}
    assert config["training"]["global_step"] == 10 and config["training"]["ema_decay"] == 0.995
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusion-lab\n")
    assert "| parameters | 11,817 |" in card and "![samples](samples.png)" in card and "Not evaluated" in card
    checkpoint = torch.load(CKPT, weights_only=True)
    weights = load_file(exported / WEIGHTS_FILE)
    assert weights.keys() == checkpoint["state_dict"].keys()  # the EMA weights, as the checkpoint's state_dict
    assert all(torch.equal(weights[key], value) for key, value in checkpoint["state_dict"].items())


def test_folder_samples_bit_identical_to_its_checkpoint(exported: Path) -> None:
    from_ckpt, from_folder = load_model(CKPT), load_model(exported)
    assert from_folder.class_names == from_ckpt.class_names and from_folder.dataset == "mnist"
    for kwargs in ({"guidance": 2.0}, {"style": {"slant": 15, "thickness": "bold"}, "sampler": "dpm_solver"}):
        a = from_ckpt([3, 7, 7], seed=5, steps=6, **kwargs)
        b = from_folder([3, 7, 7], seed=5, steps=6, **kwargs)
        assert torch.equal(a, b)


@pytest.mark.parametrize("objective", ["v", "flow", "edm"])
def test_every_objective_exports_and_samples_bit_identically(
    objective: str, make_checkpoint, tmp_path: Path, monkeypatch
) -> None:
    ckpt = make_checkpoint(f"objective={objective}")
    main_in_process(monkeypatch, "export", f"ckpt={ckpt}", f"output={tmp_path / 'model'}", "grid_per_class=1",
                    "steps=3", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    config = json.loads((tmp_path / "model" / CONFIG_FILE).read_text())
    assert config["objective"]["name"] == objective
    from_ckpt, from_folder = load_model(ckpt), load_model(tmp_path / "model")
    assert from_folder.model.objective.name == objective
    assert torch.equal(from_ckpt([1, 4], seed=2, steps=4), from_folder([1, 4], seed=2, steps=4))


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
    assert "| classifier_accuracy | 91.00% | 99.00% |" in card and "| fid | 12.5 | 1.5 |" in card


def _tampered_header(folder: Path) -> None:
    path = folder / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[8] = ord("[")  # the header's JSON object opens with "{"
    path.write_bytes(bytes(data))


def _other_shape(folder: Path) -> None:
    weights = load_file(folder / WEIGHTS_FILE)
    weights["unet.out.bias"] = torch.zeros(2)
    save_file(weights, folder / WEIGHTS_FILE)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_tampered_header, "model.safetensors is not a readable safetensors file"),
        (lambda folder: (folder / CONFIG_FILE).unlink(), "has no config.json, so it is not a diffusion-lab model"),
        (_other_shape, "holds weights of another model than config.json describes (first difference: unet.out.bias"),
    ],
    ids=["tampered-header", "no-config", "other-shape"],
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
    ("config", "message"),
    [
        ("[1, 2]", "is not a diffusion-lab model config (missing format_version"),
        ("{not json", "is not valid JSON"),
        ('{"format_version": 2, "unet": {}, "schedule": {}, "model": {}, "dataset": {}}', "upgrade diffusion-lab"),
        (
            '{"format_version": 1, "unet": {}, "schedule": {"name": "sigmoid"}, "model": {}, "dataset": {}}',
            "unknown schedule in config.json: use one of linear, quadratic, cosine",
        ),
    ],
    ids=["not-an-object", "not-json", "newer-format", "unknown-schedule"],
)
def test_bad_configs_refused_in_one_line(exported: Path, tmp_path: Path, config: str, message: str) -> None:
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    (folder / CONFIG_FILE).write_text(config)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_model(folder)
