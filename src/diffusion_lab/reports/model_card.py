"""The model card (``README.md``) of an exported model folder, in the Hugging Face Hub's format.

Its YAML header is what the Hub indexes (library, license, tags, dataset); the text says what the
model is (dataset, classes, parameters), how it was trained (recipe, steps, time), how good it is (the
numbers of ``diffusion-lab-evaluate`` beside their floors on real images, when a ``metrics.json`` is
given) and how to use it, with a grid of its samples.
"""

from __future__ import annotations

from typing import Any

from diffusion_lab.reports.evaluation_report import summary_table
from diffusion_lab.reports.render import markdown_table

#: The datasets' names on the Hugging Face Hub, for the card's ``datasets`` key.
HUB_DATASETS = {"mnist": "ylecun/mnist", "fashion_mnist": "zalando-datasets/fashion_mnist"}
#: File name of the sample grid beside the card.
SAMPLES_FILE = "samples.png"


def _objective_text(objective: dict[str, Any]) -> str:
    """``eps (min_snr_gamma=5.0)``: the objective and its settings."""
    args = ", ".join(f"{key}={value}" for key, value in objective.items() if key != "name" and value is not None)
    return f"{objective['name']} ({args})" if args else str(objective["name"])


def _recipe_rows(config: dict[str, Any], unet: dict[str, Any], params: int) -> list[list[object]]:
    training, schedule = config["training"], config["schedule"]
    schedule_args = ", ".join(f"{key}={value}" for key, value in schedule.items() if key != "name")
    optimizer = training.get("optimizer", {})
    optimizer_args = ", ".join(f"{key}={value}" for key, value in optimizer.items() if key != "name")
    seconds = training.get("time_s")
    return [
        ["dataset", config["dataset"]["name"]],
        ["classes", ", ".join(config["dataset"]["class_names"])],
        ["parameters", f"{params:,}"],
        ["U-Net", f"channels {unet.get('down_chs')}, attention at levels {unet.get('attention_levels') or 'none'}"],
        ["objective", _objective_text(config.get("objective") or {"name": "eps"})],
        ["noise schedule", f"{schedule['name']} ({schedule_args})"],
        ["style conditioning", "slant and thickness" if config["model"].get("style_conditioning") else "no"],
        ["optimizer", f"{optimizer.get('name', '-')} ({optimizer_args})"],
        ["EMA decay", training.get("ema_decay")],
        ["batch size", training.get("batch_size")],
        ["precision", training.get("precision")],
        ["steps", training.get("global_step")],
        ["training time", None if seconds is None else f"{seconds / 60:.1f} min"],
    ]


def model_card(
    config: dict[str, Any], unet: dict[str, Any], params: int, metrics: dict[str, Any] | None, repo_id: str
) -> str:
    """The card's Markdown for a folder with ``config`` (``model_index.json`` ``diffusion_lab``), a U-Net of
    settings ``unet`` (``unet/config.json``) and ``params`` parameters.

    ``repo_id`` names the model's Hub repository in the usage lines.
    """
    dataset = config["dataset"]["name"]
    front = [
        "---",
        "library_name: diffusion-lab",
        "license: mit",
        "tags:",
        "  - diffusion",
        "  - class-conditional",
        "  - image-generation",
        f"  - {dataset.replace('_', '-')}",
        "datasets:",
        f"  - {HUB_DATASETS.get(dataset, dataset)}",
        "---",
    ]
    lines = [
        *front,
        "",
        f"# A class-conditioned diffusion model of {dataset}",
        "",
        "A class-conditioned U-Net with classifier-free guidance, trained with diffusion-lab, as a diffusers "
        "pipeline folder: `unet/` holds the U-Net (the EMA weights when it trained with EMA), `scheduler/` its "
        "default sampler, `model_index.json` the pipeline and everything else that rebuilds the model.",
        "",
        "## Recipe",
        "",
        markdown_table(["", ""], _recipe_rows(config, unet, params)),
        "",
        "## Evaluation",
        "",
    ]
    if metrics is None:
        lines += ["Not evaluated: export with `metrics=PATH` to the `metrics.json` of `diffusion-lab-evaluate`."]
    else:
        lines += [
            f"`diffusion-lab-evaluate`, {metrics['num_per_class']} images per class; {metrics['settings']}. "
            "`real` scores real images the same way: the floor a perfect model would reach.",
            "",
            summary_table(metrics),
        ]
    lines += [
        "",
        "## Samples",
        "",
        f"![samples]({SAMPLES_FILE})",
        "",
        "## Use",
        "",
        "```python",
        "from huggingface_hub import snapshot_download",
        "from diffusion_lab import load_model, generate_number",
        f'folder = snapshot_download("{repo_id}")  # or the path of this folder',
        "model = load_model(folder)",
        "images = generate_number(model, 0, n=16)  # [16, 1, 28, 28] in [0, 1]",
        "```",
        "",
        "or `diffusion-lab-sample ckpt=FOLDER label=all`. With diffusers (diffusion-lab installed; "
        "`pipeline.py` imports the pipeline class from it):",
        "",
        "```python",
        "import torch",
        "from diffusers import DiffusionPipeline",
        f'pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)',
        "images = pipe([0] * 16, generator=torch.Generator().manual_seed(0)).images  # PIL images",
        "```",
        "",
    ]
    return "\n".join(lines)
