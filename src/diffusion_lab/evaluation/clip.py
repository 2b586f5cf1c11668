"""CLIP judges generated images: CLIP score, zero-shot class accuracy and the lab's "good" fraction.

:func:`load_clip_scorer` builds an open_clip model from a model name and ``pretrained`` (a hub tag
such as ``laion2b_s34b_b79k`` or ``openai``, or a local weights file). Weights of a hub tag are
used when they are in the local cache; they are fetched only with ``download=true``, so a run
behind a firewall never waits on the network. With no weights the loader raises
:class:`ClipUnavailable`, whose one-line message names the setting that fixes it; the metrics
that need CLIP are then skipped and everything else runs.

For each image of requested class y, with the dataset's prompt set (``conf/clip/prompts/``):

* ``clip_score``: 100 x max(cos(image, class prompt y), 0), as torchmetrics' ``CLIPScore``;
* ``clip_zero_shot_accuracy``: whether y's class prompt is the closest of all class prompts;
* ``clip_good_fraction``: the lab's test p_class + p_clear > p_unclear, with the probabilities a
  softmax (at CLIP's logit scale) over [class prompt y, clear prompt y, the unclear prompt].
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.data.sources import dataset_info
from diffusion_lab.extras import MissingExtra, require

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class ClipUnavailable(RuntimeError):
    """No CLIP weights can be had with these settings; the message says which setting fixes it."""


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one dataset: one class prompt and one "clear" prompt per class, one "unclear" prompt."""

    classes: tuple[str, ...]
    clear: tuple[str, ...]
    unclear: str

    @classmethod
    def from_config(cls, config: Mapping) -> PromptSet:
        classes, clear = tuple(config["classes"]), tuple(config["clear"])
        if len(classes) != len(clear) or len(classes) < 2:
            raise ValueError("clip.prompts: `classes` and `clear` need one prompt per class (two classes or more)")
        return cls(classes, clear, str(config["unclear"]))


def _cached_hub_weights(pretrained_cfg: Mapping, cache_dir: str | None) -> str | None:
    """The local copy of a hub tag's weights, or None; never touches the network."""
    from open_clip.pretrained import _get_safe_alternatives

    hf_hub = pretrained_cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf_hub)
        filename = filename or "open_clip_pytorch_model.bin"
        for name in (*_get_safe_alternatives(filename), filename):
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
    url = pretrained_cfg.get("url", "")
    if url:
        local = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if local.is_file():
            return str(local)
    return None


def resolve_weights(
    model_name: str, pretrained: str | None, download: bool = False, cache_dir: str | None = None
) -> str | None:
    """A local file with the CLIP weights of ``model_name`` / ``pretrained`` (a hub tag or a file path).

    ``model_name`` may also be ``local-dir:FOLDER`` (an ``open_clip_config.json`` and a weights file,
    as open_clip saves them; ``pretrained`` is ignored, None is returned) or ``hf-hub:ORG/REPO``
    (fetched by open_clip, so only with ``download=true``).

    Raises:
        ClipUnavailable: with the setting that fixes it, when no weights can be had.
    """
    import open_clip
    from open_clip.factory import _find_checkpoint_in_dir
    from open_clip.pretrained import download_pretrained

    if model_name.startswith("local-dir:"):
        folder = Path(model_name.removeprefix("local-dir:")).expanduser()
        if not (folder / "open_clip_config.json").is_file() or _find_checkpoint_in_dir(folder) is None:
            raise ClipUnavailable(
                f"{folder} holds no open_clip_config.json and weights file: set clip.model_name=local-dir:FOLDER "
                "to a folder saved by open_clip"
            )
        return None
    if model_name.startswith("hf-hub:"):
        if not download:
            raise ClipUnavailable(f"{model_name} is fetched from the hub: set clip.download=true, or use local-dir:")
        return None
    if not pretrained:
        raise ClipUnavailable(f"no CLIP weights set for {model_name}: set clip.pretrained to a hub tag or a file")
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path)
    if path.suffix in WEIGHT_SUFFIXES or "/" in pretrained:
        raise ClipUnavailable(f"CLIP weights file {path} not found: set clip.pretrained to an existing file")
    if model_name not in open_clip.list_models():
        raise ClipUnavailable(f"unknown CLIP model {model_name!r}: set clip.model_name to one of open_clip.list_models")
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise ClipUnavailable(f"{pretrained!r} is not a pretrained tag of {model_name}: use one of {tags}")
    cached = _cached_hub_weights(cfg, cache_dir)
    if cached:
        return cached
    if not download:
        raise ClipUnavailable(
            f"CLIP weights {model_name}/{pretrained} are not in the local cache: set clip.download=true to "
            "fetch them once, or clip.pretrained=/path/to/weights"
        )
    try:
        return download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as err:  # any network or hub failure means the same thing to the user
        raise ClipUnavailable(
            f"could not download CLIP weights {model_name}/{pretrained} ({type(err).__name__}): "
            "set clip.pretrained=/path/to/weights"
        ) from err


class ClipScorer(nn.Module):
    """An open_clip model with the prompt set of one dataset, scoring ``[N, C, H, W]`` images in [0, 1].

    Images are made RGB, resized to the model's input size with its interpolation, and normalised
    with the model's own mean and std (the preprocessing CLIP was trained with).

    Args:
        model: an open_clip ``CLIP`` model.
        tokenizer: its tokenizer (``open_clip.get_tokenizer``).
        prompts: the dataset's :class:`PromptSet`.
        name: how reports name the model, e.g. ``ViT-B-32/laion2b_s34b_b79k``.
    """

    def __init__(self, model: nn.Module, tokenizer: object, prompts: PromptSet, name: str = "clip") -> None:
        super().__init__()
        from open_clip import get_model_preprocess_cfg

        self.model = model.eval().requires_grad_(False)
        self.prompts = prompts
        self.name = name
        pp = get_model_preprocess_cfg(model)
        size = pp.get("size", 224)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.interpolation = pp.get("interpolation", "bicubic")
        self.register_buffer("mean", torch.tensor(pp["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pp["std"]).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            texts = [*prompts.classes, *prompts.clear, prompts.unclear]
            device = next(model.parameters()).device
            embedded = F.normalize(model.encode_text(tokenizer(texts).to(device)).float(), dim=-1)
        k = len(prompts.classes)
        self.register_buffer("class_text", embedded[:k], persistent=False)
        self.register_buffer("clear_text", embedded[k : 2 * k], persistent=False)
        self.register_buffer("unclear_text", embedded[2 * k], persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.prompts.classes)

    def preprocess(self, images: Tensor) -> Tensor:
        """``[N, 1 or 3, H, W]`` in [0, 1] -> ``[N, 3, S, S]`` normalised as the CLIP model expects."""
        images = images.float().to(self.mean.device)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        mode = "bicubic" if self.interpolation == "bicubic" else "bilinear"
        images = F.interpolate(images, size=self.size, mode=mode, align_corners=False).clamp(0, 1)
        return (images - self.mean) / self.std

    @torch.no_grad()
    def image_features(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """``[N, D]`` unit-norm image embeddings."""
        out = [self.model.encode_image(self.preprocess(chunk)).float() for chunk in images.split(batch_size)]
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def score(self, images: Tensor, labels: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
        """Per-image ``clip_score``, ``zero_shot_correct`` and ``good`` (``[N]`` float tensors on the CPU)."""
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1} (one per class prompt)")
        feats = self.image_features(images, batch_size)
        labels = labels.to(feats.device)
        class_cos = feats @ self.class_text.T  # [N, K]
        own = class_cos.gather(1, labels[:, None]).squeeze(1)
        clear = (feats * self.clear_text[labels]).sum(-1)
        unclear = feats @ self.unclear_text
        scale = self.model.logit_scale.exp().float()
        probs = torch.softmax(scale * torch.stack([own, clear, unclear], dim=1), dim=1)
        return {
            "clip_score": (100 * own.clamp(min=0)).cpu(),
            "zero_shot_correct": (class_cos.argmax(1) == labels).float().cpu(),
            "good": (probs[:, 0] + probs[:, 1] > probs[:, 2]).float().cpu(),
        }


def load_clip_scorer(
    prompts: Mapping[str, Mapping],
    dataset: str,
    model_name: str = "ViT-B-32",
    pretrained: str | None = "laion2b_s34b_b79k",
    download: bool = False,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    random_init: bool = False,
) -> ClipScorer:
    """Build the :class:`ClipScorer` of ``dataset`` from config (``conf/clip/``).

    Args:
        prompts: prompt sets by dataset name (``classes``, ``clear``, ``unclear`` each).
        dataset: ``mnist`` or ``fashion_mnist``.
        model_name: an open_clip model name (``open_clip.list_models()``), or ``local-dir:FOLDER`` for
            a model open_clip saved (config and weights), or ``hf-hub:ORG/REPO``.
        pretrained: a hub tag of that model, or a path to a weights file (unused with a ``local-dir:``).
        download: fetch a hub tag's weights when they are not cached (needs the network).
        cache_dir: where hub weights are cached (None: the hub's default cache).
        device: where the model runs.
        random_init: build the model with random weights (for tests; scores are meaningless).

    Raises:
        ClipUnavailable: no weights, a model or tag that does not exist, or no open_clip (the ``[clip]`` extra).
    """
    try:
        require("open_clip", "CLIP")
    except MissingExtra as err:
        raise ClipUnavailable(str(err)) from None
    import open_clip

    if dataset not in prompts:
        raise ClipUnavailable(f"no CLIP prompts for dataset {dataset!r}: add clip.prompts.{dataset}")
    prompt_set = PromptSet.from_config(prompts[dataset])
    num_classes = dataset_info(dataset).num_classes
    if len(prompt_set.classes) != num_classes:
        found = len(prompt_set.classes)
        raise ValueError(f"clip.prompts.{dataset} has {found} class prompts for {num_classes} classes")
    schema = model_name.startswith(("local-dir:", "hf-hub:"))
    label = f"{model_name}/random-init" if random_init else model_name if schema else f"{model_name}/{pretrained}"
    weights = None if random_init else resolve_weights(model_name, pretrained, download, cache_dir)
    # Given a file, open_clip does not know the tag it came from: pass on the tag's preprocessing.
    tag_cfg = {} if schema or random_init else open_clip.get_pretrained_cfg(model_name, pretrained)
    preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    try:
        model = open_clip.create_model(
            model_name, pretrained=weights, device=device, cache_dir=cache_dir, load_weights=not random_init,
            force_preprocess_cfg=preprocess or None,
        )  # fmt: skip
    except (RuntimeError, KeyError, ValueError, OSError) as err:
        raise ClipUnavailable(f"cannot load CLIP {label} ({' '.join(str(err).split())[:200]})") from err
    tokenizer = open_clip.get_tokenizer(model_name)
    log.info("CLIP %s loaded for %s", label, dataset)
    return ClipScorer(model, tokenizer, prompt_set, name=label).to(device)


def summarize(scores: Mapping[str, Tensor], labels: Tensor, class_keys: Sequence[str], prefix: str) -> dict[str, float]:
    """Overall and per-class means of :meth:`ClipScorer.score`'s outputs, as flat metric keys."""
    names = {"clip_score": "clip_score", "zero_shot_correct": "clip_zero_shot_accuracy", "good": "clip_good_fraction"}
    out: dict[str, float] = {}
    for key, metric in names.items():
        values = scores[key]
        out[f"{prefix}/{metric}"] = float(values.mean())
        for index, class_key in enumerate(class_keys):
            mask = labels == index
            if mask.any():
                out[f"{prefix}/{metric}/{class_key}"] = float(values[mask].mean())
    return out


def clip_from_config(
    config: Mapping | Callable[..., ClipScorer] | None, dataset: str, device: str | torch.device = "cpu"
) -> tuple[ClipScorer | None, str]:
    """The scorer that the ``clip`` config group describes, and a one-line status for reports.

    ``config`` is the group's config, or the partial :func:`load_clip_scorer` that instantiating it
    gives. ``clip=none`` (an empty config) and unavailable weights give ``None`` and say why; the
    CLIP metrics are then skipped and the caller goes on.
    """
    if callable(config):
        factory = config
    elif config and "_target_" in config:
        from hydra.utils import instantiate

        factory = instantiate(config)
    else:
        return None, "disabled (clip=none)"
    try:
        scorer = factory(dataset=dataset, device=device)
    except ClipUnavailable as err:
        log.warning("CLIP metrics skipped: %s", err)
        return None, f"unavailable: {err}"
    return scorer, f"ok: {scorer.name}"


@torch.no_grad()
def select_top(scorer: ClipScorer, images: Tensor, labels: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
    """CLIP-guided selection: of each class's candidates keep the ``top`` with the highest CLIP score.

    Returns the kept images, their labels and CLIP scores, class by class in the order the classes
    first appear in ``labels``, best first within a class.
    """
    if top <= 0:
        raise ValueError(f"select_top must be positive, got {top}")
    scores = scorer.score(images, labels)["clip_score"]
    keep = []
    for label in labels.unique_consecutive():
        members = torch.nonzero(labels == label).squeeze(1)
        if len(members) < top:
            raise ValueError(f"select_top={top} but class {int(label)} has only {len(members)} candidates")
        keep.append(members[scores[members].argsort(descending=True, stable=True)[:top]])
    kept = torch.cat(keep)
    return images[kept], labels[kept], scores[kept]
