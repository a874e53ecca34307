"""Checkpoints a run can resume from, bit for bit.

A checkpoint holds everything the rest of the run depends on: the model's and the optimiser's
state, the data sampler's position (batches drawn, its systematic offset and its generator
state), the loss curve logged so far and the training seconds spent. The learning rate is a pure
function of the step (``trainers.schedule``), so nothing else is needed: a run resumed from its
last checkpoint draws the same batches and takes the same optimiser steps as an uninterrupted
run with the same seed, and on CPU ends with identical weights and losses.

Files are written atomically (to a temporary name in the same directory, then renamed), so a run
killed while saving leaves the previous checkpoint intact. They contain only tensors and plain
Python containers and numbers, and are loaded with ``torch.load(weights_only=True)``, which
refuses arbitrary pickled objects.

Layout: ``<checkpoint_dir>/last.pt`` (see ``RunSpec.checkpoint_dir``). A checkpoint also
records the network's shape and model configuration, so the checkpoint of a finished run is its
final model: ``load_model`` rebuilds it (from the EMA's weights when the run kept an EMA), e.g. to use the run
as a distillation teacher.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from trainers.base import CurvePoint, ModelShape
from trainers.config import ModelConfig, TrainerConfig
from trainers.model import GPT

#: Version of the checkpoint layout; a file of another version is refused.
CHECKPOINT_FORMAT = 1

#: File name of a run's latest checkpoint inside its checkpoint directory.
LAST = "last.pt"


@dataclass(frozen=True)
class TrainState:
    """Where a run stands: the next step to take and what it needs to take it."""

    step: int  # optimiser steps already taken
    shape: ModelShape  # the network's architecture, so a checkpoint is self-describing
    model_config: ModelConfig
    model: dict[str, Any]
    optimizer: dict[str, Any]
    sampler: dict[str, Any]
    curve: tuple[CurvePoint, ...]
    train_seconds: float
    # the model EMA's weights and update count (``OptimConfig.ema``), None without an EMA; a
    # finished run's EMA is its model for other runs (teacher, finetuning start)
    ema: dict[str, Any] | None = None
    ema_steps: int = 0


def checkpoint_path(checkpoint_dir: str | os.PathLike[str]) -> Path:
    """The latest checkpoint's path inside ``checkpoint_dir``."""
    return Path(checkpoint_dir) / LAST


def final_checkpoint(checkpoint_dir: str | os.PathLike[str], config: TrainerConfig) -> Path:
    """The file a finished run leaves for the runs that start from it: its latest checkpoint, or,
    for a simulated run (which has no weights), the final loss it recorded
    (:data:`trainers.simulated.RESULT_FILE`)."""
    if config.kind == "simulated":
        from trainers.simulated import RESULT_FILE

        return Path(checkpoint_dir) / RESULT_FILE
    return checkpoint_path(checkpoint_dir)


def kept_checkpoint_path(checkpoint_dir: str | os.PathLike[str], step: int) -> Path:
    """The checkpoint kept at optimiser step ``step`` (``RunSpec.keep_steps``)."""
    return Path(checkpoint_dir) / f"step_{step}.pt"


def load_branch_point(path: str | os.PathLike[str]) -> TrainState:
    """The state another run kept at a branch point (any run key), to continue from."""
    payload = _load_any(path)
    return _state(payload)


def save_checkpoint(path: Path, run_key: str, state: TrainState) -> None:
    """Write ``state`` of run ``run_key`` to ``path`` atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "run_key": run_key,
        "step": state.step,
        "shape": asdict(state.shape),
        "model_config": asdict(state.model_config),
        "model": state.model,
        "optimizer": state.optimizer,
        "sampler": state.sampler,
        "curve": [[p.step, p.tokens, p.train_loss, p.lr] for p in state.curve],
        "train_seconds": state.train_seconds,
    }
    if state.ema is not None:
        payload["ema"] = state.ema
        payload["ema_steps"] = state.ema_steps
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path, run_key: str | None) -> dict[str, Any]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {path}: format {payload.get('format')!r}, expected {CHECKPOINT_FORMAT}"
        )
    if run_key is not None and payload["run_key"] != run_key:
        raise ValueError(
            f"checkpoint {path} belongs to run {payload['run_key']!r}, not {run_key!r}: "
            "give every run its own checkpoint_dir"
        )
    return payload


def load_checkpoint(path: Path, run_key: str) -> TrainState | None:
    """The state saved at ``path`` for run ``run_key``, or None when there is no checkpoint.

    Raises ``ValueError`` when the file belongs to another run or has another layout version.
    """
    if not path.exists():
        return None
    return _state(_load(path, run_key))


def _state(payload: dict[str, Any]) -> TrainState:
    return TrainState(
        step=int(payload["step"]),
        shape=ModelShape(**payload["shape"]),
        model_config=ModelConfig(**payload["model_config"]),
        model=payload["model"],
        optimizer=payload["optimizer"],
        sampler=payload["sampler"],
        curve=tuple(
            CurvePoint(step=int(s), tokens=int(t), train_loss=float(loss), lr=float(lr))
            for s, t, loss, lr in payload["curve"]
        ),
        train_seconds=float(payload["train_seconds"]),
        ema=payload.get("ema"),
        ema_steps=int(payload.get("ema_steps", 0)),
    )


def _load_any(path: str | os.PathLike[str]) -> dict[str, Any]:
    file = Path(path)
    if file.is_dir():
        file = checkpoint_path(file)
    if not file.exists():
        raise ValueError(f"checkpoint {file} does not exist")
    return _load(file, None)


def load_model_state(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """(model state dict, steps taken) of the checkpoint at ``path`` (a file or a directory); the
    EMA's weights when the run kept one."""
    payload = _load_any(path)
    return payload.get("ema") or payload["model"], int(payload["step"])


def load_checkpoint_shape(path: str | os.PathLike[str]) -> ModelShape:
    """The shape of the network saved at ``path`` (a file or a directory)."""
    return ModelShape(**_load_any(path)["shape"])


def load_model(path: str | os.PathLike[str]) -> tuple[GPT, int]:
    """The network saved at ``path`` (a file or a directory), on CPU, and its steps taken."""
    payload = _load_any(path)
    model = GPT(ModelShape(**payload["shape"]), ModelConfig(**payload["model_config"]))
    model.load_state_dict(payload.get("ema") or payload["model"])
    return model, int(payload["step"])
