"""PyTorch trainers and the simulated trainer, behind one small base class.

``get_trainer(config)`` maps ``config.kind`` to a trainer; an unknown kind raises with the list of
valid kinds:

``dense``
    A GPT on offline byte-level text domains (``trainers.dense``); also finetuning, when the
    spec names an ``init_checkpoint`` to start from.
``moe``
    The same GPT with top-k routed expert MLPs; sparsity from ``RunPoint.sparsity``
    (``trainers.sparse``).
``distill``
    A dense student trained on the logits of a teacher run's checkpoint (``trainers.distill``).
``simulated``
    A known scaling law plus noise, for testing studies end to end (``trainers.simulated``).

Runs that depend on another run (a student on its teacher, a finetuning run on its pretrained
run) name it in their point (``RunPoint.teacher``, ``RunPoint.init_from``: run keys, part of the
run's identity) and receive its checkpoint path in their spec (``RunSpec.teacher_checkpoint``,
``RunSpec.init_checkpoint``); the dependency must have run with a ``checkpoint_dir``.
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
