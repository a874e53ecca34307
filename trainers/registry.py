"""Name -> trainer factory, used only at the YAML boundary."""

from __future__ import annotations

import importlib

from trainers.base import Trainer
from trainers.config import TrainerConfig

# kind -> "module:Class"; imported lazily so the driver never imports torch-heavy modules it
# does not need.
_TRAINERS: dict[str, str] = {
    "dense": "trainers.dense:DenseTrainer",
    "distill": "trainers.distill:DistillTrainer",
    "moe": "trainers.sparse:MoETrainer",
    "replay": "trainers.replay:ReplayTrainer",
    "simulated": "trainers.simulated:SimulatedTrainer",
}

TRAINER_KINDS: tuple[str, ...] = tuple(sorted(_TRAINERS))


def get_trainer(config: TrainerConfig) -> Trainer:
    """Build the trainer ``config.kind`` names."""
    target = _TRAINERS.get(config.kind)
    if target is None:
        raise ValueError(
            f"trainer.kind: unknown trainer {config.kind!r}; valid kinds: {', '.join(TRAINER_KINDS)}"
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(config)
