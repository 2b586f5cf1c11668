"""The model folder as a diffusers pipeline: :class:`DiffusionLabPipeline`, what
``diffusers.DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)`` loads from a folder of
``diffusion-lab-export``.

It is a real ``diffusers.DiffusionPipeline``: its components are the U-Net (``unet/``), the objective's default
scheduler (``scheduler/``) and autoguidance's guide (``guide/``, optional); ``model_index.json`` ``diffusion_lab``
holds the rest of the model (:mod:`diffusion_lab.models.hub_format`). A call takes diffusers' arguments
(``class_labels``, ``num_inference_steps``, ``guidance_scale``, ``generator``, ``output_type``,
``callback_on_step_end``) and samples through the project's own pipeline
(:class:`diffusion_lab.pipeline.ClassConditionalPipeline`, with its progress bar, set by diffusers'
``pipe.set_progress_bar_config``), so a seed gives the images ``load_model(DIR)`` gives::

    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained("my-model", trust_remote_code=True)  # needs diffusion-lab installed
    images = pipe([7, 7, 3], generator=torch.Generator().manual_seed(0)).images  # PIL images

diffusers runs a folder's ``pipeline.py`` only when asked with ``trust_remote_code=True``; this one imports the
class from the installed diffusion-lab and nothing else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import diffusers
import torch
from diffusers import ImagePipelineOutput, SchedulerMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from torch import Tensor

from diffusion_lab.data.labels import Label
from diffusion_lab.diffusion.objectives import Objective
from diffusion_lab.diffusion.objectives.base import init_parameters
from diffusion_lab.diffusion.reverse_process import DEFAULT_GUIDANCE, Interval
from diffusion_lab.diffusion.samplers import Sampler, named_samplers
from diffusion_lab.models.hub_format import INDEX_FILE, INDEX_KEY, build_module, guide_config, recorded_autoguidance
from diffusion_lab.models.unet import ConditionalUNet
from diffusion_lab.pipeline import ClassConditionalPipeline, Guide, Style
from diffusion_lab.utils.files import atomic_write_text

#: The module of a model folder that ``model_index.json`` ``_class_name`` names, and its source.
ENTRY_MODULE = "pipeline"
ENTRY_SOURCE = '''"""The pipeline class of this model folder, from the installed diffusion-lab:
diffusers.DiffusionPipeline.from_pretrained(THIS_FOLDER, trust_remote_code=True) loads it."""

from diffusion_lab.diffusers_pipeline import DiffusionLabPipeline

__all__ = ["DiffusionLabPipeline"]
'''
#: What ``output_type`` may ask for: PIL images, a ``[N, H, W, C]`` array or a ``[N, C, H, W]`` tensor, in [0, 1].
OUTPUT_TYPES = ("pil", "np", "pt")

#: ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs) -> callback_kwargs``.
StepCallback = Callable[[diffusers.DiffusionPipeline, int, Tensor, dict[str, Tensor]], dict[str, Tensor]]


def scheduler_sampler(objective: Objective, scheduler: SchedulerMixin) -> Sampler:
    """A pipeline's scheduler (the saved one, or one swapped in) as the project's :class:`Sampler`: the settings of
    its config, with the ``step`` options and default steps of the named sampler of its class (DDIM's clipped
    model output, its 50 steps)."""
    cls = type(scheduler)
    named = next((s for s in named_samplers().values() if s["name"] == cls.__name__), {"default_steps": 20})
    fitted = objective.scheduler_config(cls) or {}
    settings = init_parameters(cls)
    options = {key: value for key, value in scheduler.config.items() if key in settings and key not in fitted}
    step_options = {key: value for key, value in named.items() if key not in {*settings, "name", "default_steps"}}
    return Sampler(objective, cls.__name__, named["default_steps"], **options, **step_options)


class DiffusionLabPipeline(diffusers.DiffusionPipeline):
    """A class-conditioned model of diffusion-lab as a diffusers pipeline.

    Args:
        unet: the U-Net.
        scheduler: the sampler, a diffusers scheduler that fits the model's objective (saved: the objective's
            default one; swap it as in diffusers, ``pipe.scheduler = Cls.from_config(pipe.scheduler.config)``).
        guide: the guide network of autoguidance (a weaker U-Net of the same data), or None.
        diffusion_lab: what rebuilds the model around its U-Net (``model_index.json`` ``diffusion_lab``:
            objective, schedule, dataset, style statistics, training record).
    """

    model_cpu_offload_seq = "unet"
    _optional_components: ClassVar[list[str]] = ["guide"]
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents"]

    def __init__(
        self,
        unet: ConditionalUNet,
        scheduler: SchedulerMixin,
        guide: ConditionalUNet | None = None,
        diffusion_lab: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if diffusion_lab is None:
            raise ValueError(f"DiffusionLabPipeline needs the model's config ({INDEX_FILE} {INDEX_KEY}): load a "
                             "folder of diffusion-lab-export")  # fmt: skip
        self.register_modules(unet=unet, scheduler=scheduler, guide=guide)
        self.register_to_config(diffusion_lab=diffusion_lab)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained``, and what lets ``diffusers.DiffusionPipeline.from_pretrained`` find this
        class: ``model_index.json`` ``_class_name`` ``["pipeline", "DiffusionLabPipeline"]`` and ``pipeline.py``."""
        if kwargs.get("push_to_hub"):
            raise ValueError("push_to_hub would upload the folder without its pipeline.py: save it, then upload the "
                             "folder with huggingface_hub's upload_folder")  # fmt: skip
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        atomic_write_text(folder / f"{ENTRY_MODULE}.py", ENTRY_SOURCE)
        index = json.loads((folder / INDEX_FILE).read_text())
        index["_class_name"] = [ENTRY_MODULE, DiffusionLabPipeline.__name__]
        atomic_write_text(folder / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True) + "\n")

    def lab_pipeline(self) -> ClassConditionalPipeline:
        """The project's pipeline on this pipeline's U-Net and guide (``load_model(DIR)``'s): what a call samples
        with, and the way to the project's API (``generate_number(pipe.lab_pipeline(), 7)``)."""
        config = self.config.diffusion_lab
        module = build_module(config, self.unet).to(self.unet.device)
        lab = ClassConditionalPipeline(module, dataset=config["dataset"]["name"])
        lab.recipe_autoguidance = recorded_autoguidance(config)
        if self.guide is not None:
            own = guide_config(config)
            guide = build_module(own, self.guide).to(self.guide.device)
            source = "(the guide of this pipeline)"
            lab.set_guide(Guide(guide, own["dataset"]["name"], source, own["training"]["global_step"], own))
        return lab

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Tensor | Sequence[Label] | Label,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        style: Style | None = None,
        autoguidance: float | None = None,
        guidance_interval: Interval = None,
        guidance_rescale: float = 0.0,
        batch_size: int = 128,
        precision: str = "bf16",
    ) -> ImagePipelineOutput | tuple[Any]:
        """Generate one image per class label.

        ``style``, ``autoguidance``, ``guidance_interval``, ``guidance_rescale``, ``batch_size`` and ``precision``
        are those of :meth:`diffusion_lab.pipeline.ClassConditionalPipeline.__call__`.

        Args:
            class_labels: class indices or class names (``"trouser"`` on Fashion-MNIST), or one of them.
            num_inference_steps: sampler steps (None: the scheduler's default in diffusion-lab, 50 for DDIM).
            guidance_scale: classifier-free guidance scale s in diffusers' sense, ``uncond + s (cond - uncond)``
                (1: none): diffusion-lab's weight w = s - 1 (None: diffusion-lab's default w).
            generator: draws the starting noise, then the noise of stochastic steps: the images of
                ``load_model(DIR)(labels, seed=S)`` come from ``torch.Generator().manual_seed(S)`` (on the CPU).
                None: torch's global generator, as in diffusers.
            output_type: ``pil``, ``np`` (``[N, H, W, C]``) or ``pt`` (``[N, C, H, W]``), in [0, 1].
            return_dict: an ``ImagePipelineOutput`` (else a tuple).
            callback_on_step_end: called after every step of every batch as
                ``callback_on_step_end(pipe, step_index, timestep, {"latents": x})``; the ``latents`` it returns
                go on. The step index starts again at 0 for every batch.
            callback_on_step_end_tensor_inputs: the tensors it gets (``latents``: x in the objective's space).

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` without ``return_dict``.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        unknown = sorted(set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs))
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may name {self._callback_tensor_inputs}, not "
                             f"{unknown}")  # fmt: skip
        if guidance_scale is not None and not (isinstance(guidance_scale, (int, float)) and guidance_scale >= 1):
            raise ValueError(f"guidance_scale must be a number >= 1 (1: no guidance), got {guidance_scale!r}")
        guidance = DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale - 1
        lab = self.lab_pipeline()
        lab.set_progress_bar_config(**{"disable": False, **getattr(self, "_progress_bar_config", {})})

        def step_end(_: ClassConditionalPipeline, step: int, timestep: Tensor, tensors: dict) -> dict:
            return callback_on_step_end(self, step, timestep, tensors)  # told this pipeline, as in diffusers

        images = lab(
            class_labels, sampler=scheduler_sampler(lab.model.objective, self.scheduler), steps=num_inference_steps,
            guidance=guidance, batch_size=batch_size, precision=precision, style=style,
            guidance_interval=guidance_interval, guidance_rescale=guidance_rescale, autoguidance=autoguidance,
            callback_on_step_end=None if callback_on_step_end is None else step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            generator=torch.default_generator if generator is None else generator,
        )  # fmt: skip
        self.maybe_free_model_hooks()
        if output_type == "pt":
            out: Any = images
        else:
            out = images.permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                out = self.numpy_to_pil(out)
        return ImagePipelineOutput(images=out) if return_dict else (out,)
