"""The contract between the orchestrator and every trainer.

The orchestrator expands a study into ``RunSpec`` objects, asks a ``Trainer`` for each run's
``RunPlan`` (exact size and cost, known before training), ships the spec to a worker, and gets a
``RunResult`` back. Everything here is a frozen dataclass so it pickles cleanly into Ray tasks and
hashes into a run identity.

Tensor-shape legend used in trainers/ and kernels/: ``b`` batch, ``t`` sequence position,
``d`` model width, ``h`` attention heads, ``k`` head dimension, ``v`` vocabulary, ``f`` MLP
hidden width, ``e`` experts. A tensor named ``x_btd`` has shape (batch, time, width).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Protocol

from trainers.config import TrainerConfig
from trainers.validation import validate_trainer_config


@dataclass(frozen=True, kw_only=True)
class RunPoint:
    """Coordinates of one run on the study grid: what the scaling laws see as inputs."""

    n_params: int  # target parameter count N; the shape rule realises it approximately
    tokens: int  # training tokens D
    mixture: tuple[float, ...] = ()  # domain weights h in domain order; () = uniform
    sparsity: float = 0.0  # MoE sparsity S = (E - K) / E; 0 = dense
    teacher: str | None = None  # run key of the teacher run (distillation)
    # run key of the run whose final weights this run starts from (finetuning: its mixture
    # then holds the target domain and, as injection, a share p of the pretraining domains)
    init_from: str | None = None
    # more law inputs of the point, by name (a replayed table's input columns beyond N and D)
    inputs: tuple[tuple[str, float], ...] = ()
    # the resampling unit the point belongs to for bootstrap intervals ("" = its own inputs;
    # a replayed table's group column)
    group: str = ""


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """A fully resolved run: its identity, seed, grid point and trainer configuration."""

    run_key: str
    study: str
    seed: int
    point: RunPoint
    trainer: TrainerConfig
    # Directory of this run's checkpoints ("" = none). When it holds a checkpoint of the same
    # run, training resumes from it and ends exactly as an uninterrupted run would; the final
    # checkpoint stays there as the run's model (see trainers.checkpoint). Give every run its own
    # directory. Not part of the run's identity: checkpointing never changes a result.
    checkpoint_dir: str = ""
    checkpoint_every: int = 0  # optimiser steps between checkpoints; 0 = at every log point
    # Distillation (kind ``distill``): the checkpoint of the finished teacher run named by
    # ``point.teacher`` (its checkpoint_dir, or the file in it). The scheduler trains the teacher
    # first, with a checkpoint_dir workers can read, and fills this in before the student starts.
    teacher_checkpoint: str = ""
    # Finetuning: the checkpoint of the finished run named by ``point.init_from``; the model
    # starts from its weights (same shape), with a fresh optimiser and schedule. Filled in by
    # the scheduler like teacher_checkpoint.
    init_checkpoint: str = ""
    # Finetuning: the domain weights the init_from run was pretrained on. When given, the
    # held-out loss on that mixture is logged as ``pretrain_loss`` at every evaluation and at the
    # end (the forgetting law's target; L_pt0 is its value before the first step).
    init_mixture: tuple[float, ...] = ()
    # WSD cooldown branches: the trunk keeps a checkpoint file ``step_<n>.pt`` at each of these
    # optimiser steps (next to last.pt in checkpoint_dir) ...
    keep_steps: tuple[int, ...] = ()
    # ... and a branch continues from one of them (model, optimiser and data position), then
    # cools down over the rest of its own schedule. The trunk and the branch share seed, warmup
    # and learning rate up to the branch point, so the branch ends exactly as a run trained from
    # scratch to its token count would. Filled in by the scheduler.
    branch_from: str = ""


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """The architecture a target N resolves to (see ``trainers.shapes`` for the rule)."""

    n_layer: int
    d_model: int
    n_head: int
    d_ff: int
    vocab_size: int
    seq_len: int
    n_experts: int = 0  # routed experts per layer (E); 0 = dense MLPs
    top_k: int = 0  # experts each token is routed to (K); 0 = dense MLPs


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """Size and cost of a run, known before it trains."""

    shape: ModelShape | None  # None for trainers without a real model (simulated)
    n_params: int  # exact total parameter count
    n_params_non_embedding: int  # total minus token/position embeddings (tied head counted once)
    n_params_active: int  # parameters touched per token (MoE: shared + top-k experts)
    flops_per_token: float  # training FLOPs per token under ``flop_convention``
    tokens: int  # tokens actually trained on (whole steps)
    steps: int  # optimiser steps
    flops: float  # total training FLOPs = flops_per_token * tokens
    flop_convention: str


@dataclass(frozen=True, kw_only=True)
class CurvePoint:
    """One point of a run's loss curve."""

    step: int
    tokens: int
    train_loss: float
    lr: float


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What a finished run reports back to the driver."""

    run_key: str
    plan: RunPlan
    final_loss: float  # held-out loss in nats/token, averaged over the mixture's domains
    eval_losses: Mapping[str, float] = field(default_factory=dict)  # per domain, nats/token
    curve: tuple[CurvePoint, ...] = ()
    wall_time_s: float = 0.0
    tokens_per_s: float = 0.0
    # Further end-of-run metrics of some trainer kinds, also sent to the metric sink; e.g.
    # distillation's teacher loss L_T ("teacher_eval_loss", and "teacher_eval_loss/<domain>").
    metrics: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain data (JSON-able): a result read back with :meth:`from_dict` runs no code."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> RunResult:
        plan = dict(data["plan"])
        shape = plan.pop("shape")
        return cls(
            run_key=data["run_key"],
            plan=RunPlan(shape=ModelShape(**shape) if shape is not None else None, **plan),
            final_loss=float(data["final_loss"]),
            eval_losses=dict(data.get("eval_losses", {})),
            curve=tuple(CurvePoint(**c) for c in data.get("curve", ())),
            wall_time_s=float(data.get("wall_time_s", 0.0)),
            tokens_per_s=float(data.get("tokens_per_s", 0.0)),
            metrics=dict(data.get("metrics", {})),
        )


class MetricSink(Protocol):
    """Where a trainer streams metrics while it runs (an MLflow child run, or a test list)."""

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None: ...


class NullSink:
    """A sink that drops everything."""

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        return None


class Trainer(ABC):
    """Base class of every trainer kind.

    ``plan`` is called on the driver for every run while a study is expanded and validated, so it
    must be cheap and must not touch data or devices. ``train`` is called once per attempt inside
    a worker process; it must be deterministic for a given ``spec`` (same seed, same result on
    CPU) and must raise on failure (a diverged loss raises ``TrainingDiverged``).
    """

    kind: ClassVar[str]

    def __init__(self, config: TrainerConfig) -> None:
        """Rejects impossible configuration values at once (``trainers.validation``)."""
        validate_trainer_config(config)
        self.config = config

    @abstractmethod
    def plan(self, point: RunPoint) -> RunPlan:
        """Exact size and cost of training ``point``; raises ``ValueError`` if impossible."""

    @abstractmethod
    def train(self, spec: RunSpec, sink: MetricSink) -> RunResult:
        """Train one run to completion and return its result."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""
