"""PyTorch trainers and the simulated trainer, behind one small base class.

``get_trainer(config)`` maps ``config.kind`` to a trainer; an unknown kind raises with the list of
valid kinds.
"""

from __future__ import annotations

from trainers.base import (
    CurvePoint,
    MetricSink,
    ModelShape,
    NullSink,
    RunPlan,
    RunPoint,
    RunResult,
    RunSpec,
    Trainer,
    TrainingDiverged,
)
from trainers.config import TrainerConfig
from trainers.registry import TRAINER_KINDS, get_trainer

__all__ = [
    "TRAINER_KINDS",
    "CurvePoint",
    "MetricSink",
    "ModelShape",
    "NullSink",
    "RunPlan",
    "RunPoint",
    "RunResult",
    "RunSpec",
    "Trainer",
    "TrainerConfig",
    "TrainingDiverged",
    "get_trainer",
]
