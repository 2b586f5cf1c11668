"""The CLIP scorer: weights from a local folder or file, CLIP's preprocessing, the three metrics,
CLIP-guided selection, and one clear line when no weights can be had."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffusion_lab.config import CONF_DIR
from diffusion_lab.evaluation.clip import (
    ClipScorer,
    ClipUnavailable,
    clip_from_config,
    load_clip_scorer,
    select_top,
    summarize,
)
from tests.helpers import TINY_CLIP, compose_hydra, main_in_process, one_error_line

PROMPTS = {name: OmegaConf.load(CONF_DIR / "clip" / "prompts" / f"{name}.yaml") for name in ("mnist", "fashion_mnist")}


@pytest.fixture(scope="module")
def scorer(tiny_clip_dir: Path) -> ClipScorer:
    return load_clip_scorer(PROMPTS, "mnist", model_name=f"local-dir:{tiny_clip_dir}")


def digits(n: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=generator), torch.arange(n) % 10


def test_local_folder_weights_are_loaded_exactly(scorer: ClipScorer, tiny_clip_dir: Path) -> None:
    saved = torch.load(tiny_clip_dir / "open_clip_pytorch_model.bin", weights_only=True)
    loaded = scorer.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert scorer.name == f"local-dir:{tiny_clip_dir}"


def test_weights_file_for_a_named_model(tiny_clip_dir: Path, tmp_path: Path) -> None:
    """``clip.pretrained=/path/file`` with an open_clip model name loads that file."""

    (tmp_path / "tiny-test-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path)
    weights = tiny_clip_dir / "open_clip_pytorch_model.bin"
    scorer = load_clip_scorer(PROMPTS, "fashion_mnist", model_name="tiny-test-clip", pretrained=str(weights))
    saved = torch.load(weights, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in scorer.model.state_dict().items())
    random = load_clip_scorer(PROMPTS, "fashion_mnist", model_name="tiny-test-clip", random_init=True)
    assert not torch.equal(random.model.text_projection, scorer.model.text_projection)


def test_preprocessing_makes_rgb_at_model_size_with_clip_normalisation(scorer: ClipScorer) -> None:
    white = torch.ones(2, 1, 28, 28)
    out = scorer.preprocess(white)
    assert out.shape == (2, 3, 32, 32)
    expected = (1 - torch.tensor([0.5, 0.4, 0.3])) / torch.tensor([0.2, 0.25, 0.3])  # the folder's mean / std
    assert torch.allclose(out[0, :, 5, 5], expected, atol=1e-5)
    gray = torch.rand(3, 1, 28, 28)
    rgb = scorer.preprocess(gray.expand(-1, 3, -1, -1))
    assert torch.allclose(scorer.preprocess(gray), rgb), "one channel is the same image as three equal channels"


def test_metrics_follow_their_definitions(scorer: ClipScorer) -> None:
    images, labels = digits()
    scores = scorer.score(images, labels)
    model = scorer.model
    with torch.no_grad():
        image = F.normalize(model.encode_image(scorer.preprocess(images)), dim=-1)
        tokens = open_clip.get_tokenizer("ViT-B-32")
        texts = F.normalize(model.encode_text(tokens(list(PROMPTS["mnist"]["classes"]))), dim=-1)
        clear = F.normalize(model.encode_text(tokens(list(PROMPTS["mnist"]["clear"]))), dim=-1)
        unclear = F.normalize(model.encode_text(tokens([PROMPTS["mnist"]["unclear"]])), dim=-1)[0]
    cos = image @ texts.T
    own = cos[torch.arange(len(labels)), labels]
    assert torch.allclose(scores["clip_score"], 100 * own.clamp(min=0), atol=1e-4)
    assert torch.equal(scores["zero_shot_correct"], (cos.argmax(1) == labels).float())
    logits = model.logit_scale.exp() * torch.stack([own, (image * clear[labels]).sum(-1), image @ unclear], 1)
    p = logits.softmax(1)
    assert torch.equal(scores["good"], (p[:, 0] + p[:, 1] > p[:, 2]).float())
    summary = summarize(scores, labels, [str(i) for i in range(10)], "generated")
    assert summary["generated/clip_score"] == pytest.approx(float(scores["clip_score"].mean()))
    threes = float(scores["zero_shot_correct"][3::10].mean())
    assert summary["generated/clip_zero_shot_accuracy/3"] == pytest.approx(threes)


def test_scores_do_not_depend_on_batch_size(scorer: ClipScorer) -> None:
    images, labels = digits(30)
    a, b = scorer.score(images, labels, batch_size=7), scorer.score(images, labels, batch_size=256)
    assert torch.allclose(a["clip_score"], b["clip_score"], atol=1e-4)


def test_select_top_keeps_the_best_per_class_in_order(scorer: ClipScorer) -> None:
    images, labels = digits(40)
    order = labels.argsort(stable=True)
    images, labels = images[order], labels[order]  # class by class, 4 candidates each
    all_scores = scorer.score(images, labels)["clip_score"]
    kept, kept_labels, kept_scores = select_top(scorer, images, labels, 2)
    assert kept.shape == (20, 1, 28, 28) and kept_labels.tolist() == [c for c in range(10) for _ in range(2)]
    for c in range(10):
        best = all_scores[labels == c].sort(descending=True).values[:2]
        assert torch.allclose(kept_scores[kept_labels == c], best, atol=1e-5)
    with pytest.raises(ValueError, match=r"only 4 candidates"):
        select_top(scorer, images, labels, 5)


def test_no_weights_says_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(ClipUnavailable, match=r"not in the local cache: set clip.download=true .* clip.pretrained="):
        load_clip_scorer(PROMPTS, "mnist", cache_dir=str(tmp_path))
    with pytest.raises(ClipUnavailable, match=r"weights file .* not found: set clip.pretrained"):
        load_clip_scorer(PROMPTS, "mnist", pretrained=str(tmp_path / "missing.bin"))
    with pytest.raises(ClipUnavailable, match=r"not a pretrained tag of ViT-B-32: use one of .*laion2b_s34b_b79k"):
        load_clip_scorer(PROMPTS, "mnist", pretrained="laion9000")
    with pytest.raises(ClipUnavailable, match=r"holds no open_clip_config.json"):
        load_clip_scorer(PROMPTS, "mnist", model_name=f"local-dir:{tmp_path}")
    with pytest.raises(ClipUnavailable, match=r"set clip.download=true"):
        load_clip_scorer(PROMPTS, "mnist", model_name="hf-hub:org/repo")


def test_config_group_composes_and_degrades_to_a_status(tmp_path: Path, tiny_clip_dir: Path) -> None:
    config = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "clip" / "laion2b.yaml"))
    config.pop("defaults")
    config["prompts"] = PROMPTS
    scorer, status = clip_from_config({**config, "cache_dir": str(tmp_path)}, "mnist")
    assert scorer is None and status.startswith("unavailable: CLIP weights ViT-B-32/laion2b_s34b_b79k")
    assert clip_from_config({}, "mnist") == (None, "disabled (clip=none)")
    scorer, status = clip_from_config({**config, "model_name": f"local-dir:{tiny_clip_dir}"}, "fashion_mnist")
    assert isinstance(scorer, ClipScorer) and status == f"ok: local-dir:{tiny_clip_dir}"
    assert scorer.prompts.classes[9] == "a photo of an ankle boot"


CLIP_EXTRA = "needs the [clip] extra: pip install 'diffusion-lab[clip]'"


def test_missing_open_clip_skips_a_default_clip_and_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the [clip] extra, a command's default CLIP is skipped like missing weights, its status naming it."""
    monkeypatch.setitem(sys.modules, "open_clip", None)
    config = instantiate(compose_hydra("ckpt=x.ckpt", config_name="evaluate").clip)
    assert clip_from_config(config, "mnist") == (None, f"unavailable: CLIP {CLIP_EXTRA}")


@pytest.mark.parametrize(
    ("command", "args", "line"),
    [
        ("train", ["clip=openai"], f"clip=openai {CLIP_EXTRA}"),
        ("evaluate", ["ckpt={ckpt}", "clip.download=true"], f"clip=laion2b {CLIP_EXTRA}"),
        ("sample", ["ckpt={ckpt}", "select_top=2"], f"select_top needs CLIP, which is unavailable: CLIP {CLIP_EXTRA}"),
    ],
)
def test_missing_open_clip_refuses_a_clip_asked_for_in_one_line(
    command: str, args: list[str], line: str, make_checkpoint: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    """A command line that asks for CLIP without the [clip] extra stops in one line naming it, before any run."""
    ckpt = make_checkpoint() if command != "train" else None
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, command, *(a.format(ckpt=ckpt) for a in args), f"hydra.run.dir={tmp_path / 'run'}")
    assert exit_info.value.code == 1
    assert one_error_line(capsys.readouterr().err) == f"error: {line}"
    if command != "sample":  # sample's select_top finds out when it loads CLIP
        assert not (tmp_path / "run").exists(), "refused before the run folder is made"


def test_prompt_sets_have_one_prompt_per_class() -> None:
    for name, prompts in PROMPTS.items():
        assert len(prompts["classes"]) == len(prompts["clear"]) == 10, name
    assert PROMPTS["mnist"]["classes"][7] == "a handwritten digit seven"
    assert PROMPTS["mnist"]["clear"][7] == "a clear, well-written digit 7"
    assert PROMPTS["mnist"]["unclear"] == "a blurry or unclear number"
    bad = {"mnist": {"classes": ["a", "b"], "clear": ["c", "d"], "unclear": "e"}}
    with pytest.raises(ValueError, match=r"clip.prompts.mnist has 2 class prompts for 10 classes"):
        load_clip_scorer(bad, "mnist", random_init=True)


def test_hub_tag_weights_are_found_in_the_local_cache_only(tmp_path: Path) -> None:
    """A tag whose file sits in the hub cache resolves to it without the network; an empty cache does not."""
    from diffusion_lab.evaluation.clip import resolve_weights

    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    found = resolve_weights("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    assert Path(found) == snapshot / "open_clip_model.safetensors"
    with pytest.raises(ClipUnavailable, match=r"not in the local cache"):
        resolve_weights("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path / "empty"))
