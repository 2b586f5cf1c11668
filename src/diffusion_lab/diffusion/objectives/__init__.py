"""Training objectives, one per module: what the U-Net predicts and how its inputs are noised."""

from diffusion_lab.diffusion.objectives.base import Objective, TrainingBatch
from diffusion_lab.diffusion.objectives.edm import EDMObjective
from diffusion_lab.diffusion.objectives.epsilon import EpsilonObjective
from diffusion_lab.diffusion.objectives.flow import FlowObjective
from diffusion_lab.diffusion.objectives.v_prediction import VObjective

#: Objectives by config group option (``objective=NAME``).
OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (EpsilonObjective, VObjective, FlowObjective, EDMObjective)
}

__all__ = [
    "OBJECTIVES",
    "EDMObjective",
    "EpsilonObjective",
    "FlowObjective",
    "Objective",
    "TrainingBatch",
    "VObjective",
]
