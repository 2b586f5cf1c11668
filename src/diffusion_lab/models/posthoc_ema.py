"""Post-hoc EMA (Karras et al. 2024, EDM2): the EMA length of a trained model chosen after training.

Training tracks power-function EMAs of the weights at two relative lengths ``sigma_rel`` (the EMA's
standard deviation over its age, as a fraction of the training so far) and saves both every few
hundred steps as snapshots (:class:`diffusion_lab.training.posthoc_ema.PostHocEMASnapshots`). The
average of any other length at a snapshot's step is then a linear combination of the snapshots up to
that step, whose coefficients fit its averaging profile to theirs by least squares (EDM2's
Algorithm 3; the profile maths is ``ema-pytorch``'s). Here the snapshots are written and read, the
coefficients solved, and a checkpoint loaded with the weights of a chosen length::

    module, ema = load_at_ema_length("outputs/train/<run>/checkpoints/last.ckpt", sigma_rel=0.08)

The power-function EMA after optimizer step t is ``lerp(average, weights, 1 - beta_t)`` with
``beta_t = (1 - 1/t) ** (gamma + 1)`` (a copy at t = 1): exactly the profile ``(gamma + 1) tau**gamma /
t**(gamma + 1)`` over [0, t] for weights held between steps, which the least-squares fit assumes.
Snapshots are safetensors files (nothing is unpickled when they are read), one per length and step, each
holding the module's floating-point ``state_dict`` entries and, as metadata, its step and length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from ema_pytorch.post_hoc_ema import sigma_rel_to_gamma, solve_weights
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

from diffusion_lab.models.checkpoints import read_checkpoint
from diffusion_lab.models.diffusion_module import DiffusionModule
from diffusion_lab.utils.files import atomic_write

#: The folder beside a run's checkpoints (``checkpoints/posthoc_ema/``) that holds its snapshots.
SNAPSHOT_FOLDER = "posthoc_ema"
#: The ``format`` metadata of a snapshot file.
SNAPSHOT_FORMAT = "diffusion-lab post-hoc EMA snapshot 1"
#: The longest relative EMA length: near the plain average of every step (sigma_rel 0.289, gamma 0).
MAX_SIGMA_REL = 0.25


@dataclass(frozen=True)
class Snapshot:
    """One saved EMA: its file, the optimizer step it was taken at, its length and profile exponent."""

    path: Path
    step: int
    sigma_rel: float
    gamma: float


@dataclass(frozen=True)
class SynthesizedEMA:
    """Which average a synthesised set of weights is: its relative length, its step, and how many snapshots made it."""

    sigma_rel: float
    step: int
    num_snapshots: int

    def __str__(self) -> str:
        """``EMA sigma_rel 0.08 (post-hoc, step 1263)``, for reports and logs."""
        return f"EMA sigma_rel {self.sigma_rel:g} (post-hoc, step {self.step})"


def gamma_of(sigma_rel: float) -> float:
    """The power-function exponent gamma of a relative EMA length (EDM2's Algorithm 2)."""
    if not 0 < sigma_rel <= MAX_SIGMA_REL:
        raise ValueError(f"a relative EMA length must be in (0, {MAX_SIGMA_REL}], got {sigma_rel!r} (e.g. 0.1)")
    return float(sigma_rel_to_gamma(sigma_rel))


def ema_decay(gamma: float, step: int) -> float:
    """``beta_t = (1 - 1/t) ** (gamma + 1)``: the power-function EMA's decay at optimizer step ``t >= 1`` (0 at t=1)."""
    return (1 - 1 / step) ** (gamma + 1)


def snapshot_folder(ckpt: str | Path) -> Path:
    """Where the post-hoc EMA snapshots of a checkpoint's run are: ``posthoc_ema/`` beside the checkpoint."""
    return Path(ckpt).parent / SNAPSHOT_FOLDER


def snapshot_path(folder: str | Path, step: int, sigma_rel: float) -> Path:
    """``FOLDER/step00001200-sigma_rel0.05.safetensors``: names sort by step; the file's metadata is what counts."""
    return Path(folder) / f"step{step:08d}-sigma_rel{sigma_rel:g}.safetensors"


def save_snapshot(folder: str | Path, step: int, sigma_rel: float, tensors: dict[str, Tensor]) -> Path:
    """Write one EMA (``state_dict`` name -> tensor) as a snapshot, atomically; returns its path."""
    metadata = {"format": SNAPSHOT_FORMAT, "step": str(step), "sigma_rel": repr(float(sigma_rel))}
    data = save({name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}, metadata)
    return atomic_write(snapshot_path(folder, step, sigma_rel), lambda file: file.write(data))


def _unreadable(path: Path, reason: str) -> ValueError:
    return ValueError(
        f"{path} is not a readable post-hoc EMA snapshot ({reason}): remove it and choose the EMA length again"
    )


def read_snapshots(folder: str | Path) -> list[Snapshot]:
    """The snapshots in ``folder`` (none when it does not exist), by step then length; a one-line ``ValueError``
    for a file that is not one."""
    snapshots = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(path, framework="pt") as file:
                metadata = file.metadata() or {}
        except (SafetensorError, OSError) as err:
            raise _unreadable(path, str(err).splitlines()[0][:200]) from None
        if metadata.get("format") != SNAPSHOT_FORMAT:
            raise _unreadable(path, "no post-hoc EMA metadata")
        sigma_rel = float(metadata["sigma_rel"])
        snapshots.append(Snapshot(path, int(metadata["step"]), sigma_rel, gamma_of(sigma_rel)))
    return sorted(snapshots, key=lambda s: (s.step, s.sigma_rel))


def snapshot_weights(snapshots: list[Snapshot], sigma_rel: float, step: int) -> Tensor:
    """The coefficients ``[len(snapshots)]`` whose combination of the snapshots is the EMA of ``sigma_rel`` at ``step``.

    ``ema-pytorch``'s least-squares solve (EDM2's Algorithm 3), normalised to sum to 1 as EDM2's
    reference code does: weights that did not change give themselves back, whatever the length.
    """
    steps = torch.tensor([s.step for s in snapshots], dtype=torch.float64)
    gammas = torch.tensor([s.gamma for s in snapshots], dtype=torch.float64)
    target = torch.tensor([step], dtype=torch.float64), torch.tensor([gamma_of(sigma_rel)], dtype=torch.float64)
    weights = solve_weights(steps, gammas, *target).squeeze(-1)
    return weights / weights.sum()


def synthesize(
    folder: str | Path, sigma_rel: float, step: int | None = None
) -> tuple[dict[str, Tensor], SynthesizedEMA]:
    """The EMA weights of relative length ``sigma_rel`` from the snapshots in ``folder``, and which average they are.

    The average is synthesised at the latest snapshot step at or before ``step`` (None: the latest
    snapshot), from every snapshot up to there.

    Raises:
        ValueError: one line, when ``folder`` holds no snapshot up to ``step``, a file is not a snapshot, or the
            snapshots hold different tensors.
    """
    gamma_of(sigma_rel)  # a bad length is refused before any file is read
    snapshots = [s for s in read_snapshots(folder) if step is None or s.step <= step]
    if not snapshots:
        where = "" if step is None else f" at or before step {step}"
        raise ValueError(
            f"{folder} holds no post-hoc EMA snapshots{where}: choose ema_length for a run trained with "
            "callbacks.posthoc_ema (on by default), or pass ema_length=null for the checkpoint's own EMA weights"
        )
    target = snapshots[-1].step
    weights = snapshot_weights(snapshots, sigma_rel, target)
    total: dict[str, Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for snapshot, weight in zip(snapshots, weights.tolist(), strict=True):
        with safe_open(snapshot.path, framework="pt") as file:
            names = file.keys()
            if total and set(names) != set(total):
                raise ValueError(
                    f"the post-hoc EMA snapshots in {folder} hold different models ({snapshot.path.name} differs from "
                    f"{snapshots[0].path.name}): keep only one run's snapshots there"
                )
            for name in names:
                tensor = file.get_tensor(name)
                dtypes[name] = tensor.dtype
                total.setdefault(name, torch.zeros(tensor.shape, dtype=torch.float64)).add_(
                    tensor.double(), alpha=weight
                )
    state = {name: value.to(dtypes[name]) for name, value in total.items()}
    return state, SynthesizedEMA(float(sigma_rel), target, len(snapshots))


def load_at_ema_length(
    ckpt: str | Path, sigma_rel: float, map_location: str | torch.device = "cpu"
) -> tuple[DiffusionModule, SynthesizedEMA]:
    """The module of a training checkpoint with the EMA weights of relative length ``sigma_rel``, synthesised at the
    checkpoint's step (or the latest snapshot before it) from its run's snapshots, and which average they are.

    Raises:
        ValueError: one line, for a model folder of ``diffusion-lab-export``, a run that kept no snapshots,
            or snapshots of another model.
    """
    path = Path(ckpt)
    if path.is_dir():
        raise ValueError(
            f"{path} is an exported model folder, which keeps one set of weights: pass ema_length=null, or the "
            "run's checkpoints/last.ckpt to choose its EMA length"
        )
    checkpoint = read_checkpoint(path, map_location)
    module = DiffusionModule.from_checkpoint(checkpoint, path)
    folder = snapshot_folder(path)
    if not read_snapshots(folder):
        raise ValueError(
            f"{path} comes from a run that kept no post-hoc EMA snapshots (none in {folder}): train with "
            "callbacks.posthoc_ema (on by default) to choose the EMA length, or pass ema_length=null for the "
            "checkpoint's own EMA weights"
        )
    step = checkpoint.get("global_step")
    state, ema = synthesize(folder, sigma_rel, None if step is None else int(step))
    current = module.state_dict()
    expected = {name for name, value in current.items() if value.is_floating_point()}
    if set(state) != expected:
        differ = sorted(set(state) ^ expected)[0]
        raise ValueError(
            f"the post-hoc EMA snapshots in {folder} hold another model than {path} (first difference: "
            f"{differ}): pass that run's own checkpoint"
        )
    module.load_state_dict({**current, **state})
    return module.eval(), ema
