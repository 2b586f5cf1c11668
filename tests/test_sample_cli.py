"""``diffusion-lab-sample``: PNG + NPZ output, reproducible seeds, and one-line refusals of bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import main_in_process, one_error_line, run_cli


@pytest.mark.slow
def test_same_seed_gives_bit_identical_files_across_processes(
    make_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    ckpt = make_checkpoint("data=fashion_mnist")
    common = [f"ckpt={ckpt}", "label=trouser", "num_samples=4", "steps=10", f"hydra.run.dir={tmp_path / 'run'}"]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        proc = run_cli("sample", *common, f"seed={seed}", f"output={tmp_path / name}")
        assert proc.returncode == 0, proc.stderr[-2000:]
    a, b, c = (np.load(tmp_path / f"{name}.npz") for name in "abc")
    assert a["images"].shape == (4, 28, 28) and a["images"].dtype == np.uint8
    assert a["labels"].tolist() == [1, 1, 1, 1] and a["labels"].dtype == np.int64
    assert np.array_equal(a["images"], b["images"])
    assert not np.array_equal(a["images"], c["images"])
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert "Wrote" in proc.stderr + proc.stdout


@pytest.mark.parametrize(("sampler", "steps"), [("ddim", "5"), ("ddpm", "null"), ("dpm_solver", "5")])
def test_label_all_gives_every_class_in_rows(
    make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampler: str, steps: str
) -> None:
    out = tmp_path / "all"
    main_in_process(
        monkeypatch, "sample", f"ckpt={make_checkpoint()}", "label=all", "num_samples=3", f"sampler={sampler}",
        f"steps={steps}", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    with np.load(out.with_suffix(".npz")) as data:
        assert data["labels"].tolist() == [d for d in range(10) for _ in range(3)]
        assert data["images"].shape == (30, 28, 28)
    assert Image.open(out.with_suffix(".png")).size == (3 * 30 + 2, 10 * 30 + 2)


def test_label_list_and_default_output(make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    main_in_process(monkeypatch, "sample", f"ckpt={make_checkpoint()}", "label=[3,8]", "num_samples=2", "steps=4",
                    f"hydra.run.dir={run_dir}")  # fmt: skip
    with np.load(run_dir / "samples.npz") as data:
        assert data["labels"].tolist() == [3, 3, 8, 8]
    assert (run_dir / "samples.png").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("override", "message"),
    [("label=truck", "label must be a class index 0..9, a class name such as trouser, a list of them or all, got"),
     ("label=10", "label must be a class index 0..9"),
     ("num_samples=0", "num_samples must be a positive integer"), ("guidance=nan", "guidance must be a finite number"),
     ("guidance=-2", "guidance must be a finite number >= 0"), ("steps=101", "steps must be an integer in 1..100"),
     ("sampler=ddim sampler.eta=-1", "sampler.eta must be a number in [0, 1], got -1"),
     ("sampler=ddim sampler.timestep_spacing=even",
      "sampler.timestep_spacing must be one of leading, trailing, linspace"),
     ("device=tpu", "unknown device 'tpu'"), ("precision=16", "precision must be one of 32, bf16"),
     ("sampler=eulr", "sampler=eulr is not an option: use one of auto, ddim, ddpm, diffusers, dpm_solver"),
     ("lable=3", "Could not override 'lable'")],
)  # fmt: skip
def test_bad_input_is_one_clear_line_and_writes_nothing(
    make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, override: str,
    message: str,
) -> None:  # fmt: skip
    out = tmp_path / "out" / "samples"
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, "sample", f"ckpt={make_checkpoint()}", *override.split(" "), f"output={out}",
                        f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert exit_info.value.code == 1
    assert message in one_error_line(capsys.readouterr().err)
    assert not out.parent.exists()


@pytest.mark.parametrize(
    ("ckpt", "message"),
    [
        (None, "ckpt must be a checkpoint written by diffusion-lab-train, got None"),
        ("missing.ckpt", "checkpoint not found"),
        ("junk.ckpt", "not a readable checkpoint"),
    ],
)
def test_bad_checkpoint_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, ckpt: str | None, message: str
) -> None:
    (tmp_path / "junk.ckpt").write_bytes(b"\x00" * 100)
    args = [f"ckpt={tmp_path / ckpt}"] if ckpt else []
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, "sample", *args, f"output={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert exit_info.value.code == 1
    assert message in one_error_line(capsys.readouterr().err)
    assert not list(tmp_path.glob("out*"))


@pytest.mark.slow
def test_clip_selection_keeps_the_best_candidates(
    make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_clip_dir: Path
) -> None:
    from diffusion_lab.evaluation.clip import clip_from_config
    from diffusion_lab.pipeline import generate, load_model
    from diffusion_lab.reports.images import to_uint8
    from tests.test_clip_score import PROMPTS

    ckpt, out = make_checkpoint(), tmp_path / "best"
    clip = f"clip.model_name=local-dir:{tiny_clip_dir}"
    main_in_process(monkeypatch, "sample", f"ckpt={ckpt}", "label=[3,7]", "select_top=2", "candidates=5", "steps=4",
                    clip, f"output={out}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    with np.load(f"{out}.npz") as data:
        kept, labels, scores = data["images"], data["labels"], data["clip_scores"]
    assert labels.tolist() == [3, 3, 7, 7] and kept.shape == (4, 28, 28)
    report = json.loads(Path(f"{out}.json").read_text())
    assert report["candidates_per_class"] == 5 and report["clip_scores"]["7"] == pytest.approx(scores[2:].tolist())
    # The same candidates, scored directly: the kept ones are the two best of each class, best first.
    model = load_model(ckpt)
    candidates = generate(model, [3] * 5 + [7] * 5, seed=0, steps=4, guidance=2.0)
    scorer, _ = clip_from_config({"_target_": "diffusion_lab.evaluation.clip.load_clip_scorer", "_partial_": True,
                                  "prompts": PROMPTS, "model_name": f"local-dir:{tiny_clip_dir}"}, "mnist")  # fmt: skip
    all_scores = scorer.score(candidates, torch.tensor([3] * 5 + [7] * 5))["clip_score"]
    for start in (0, 5):
        best = all_scores[start : start + 5].argsort(descending=True)[:2] + start
        assert np.array_equal(to_uint8(candidates[best]), kept[start // 5 * 2 : start // 5 * 2 + 2])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["select_top=2"], "select_top needs CLIP, which is unavailable: CLIP weights ViT-B-32/laion2b_s34b_b79k"),
     (["select_top=2", "clip=none"], "select_top needs CLIP, which is disabled"),
     (["candidates=8"], "candidates=K needs select_top=N"),
     (["select_top=4", "candidates=2"], "candidates must be an integer >= select_top=4"),
     (["select_top=0"], "select_top must be a positive integer")],
)  # fmt: skip
def test_bad_selection_is_one_clear_line(
    make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys,
    overrides: list[str], message: str,
) -> None:  # fmt: skip
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hub_cache"))
    out = tmp_path / "out" / "best"
    with pytest.raises(SystemExit):
        main_in_process(monkeypatch, "sample", f"ckpt={make_checkpoint()}", *overrides, f"output={out}",
                        f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert message in one_error_line(capsys.readouterr().err)
    assert not out.parent.exists()
