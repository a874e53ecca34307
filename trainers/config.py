"""Typed configuration owned by the trainers.

The study loader (``orchestrator.loading``) merges YAML and command-line overrides over these
dataclasses with OmegaConf and hands back frozen instances; nothing below this package ever sees a
dict config. Every field is documented because the README's key reference is generated from
these docstrings and field comments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: Ground-truth parameters of the Chinchilla law re-fitted to the Epoch replication data
#: (Besiroglu et al. 2024, 240 points, approach 3): the default world of the simulated trainer.
REPLICATION_CHINCHILLA: dict[str, float] = {
    "E": 1.8172,
    "A": 477.8,
    "B": 2143.0,
    "alpha": 0.3473,
    "beta": 0.3672,
}


@dataclass(frozen=True, kw_only=True)
class DomainConfig:
    """One text domain a model trains and is evaluated on."""

    source: str = "stdlib"  # stdlib (Python standard library code) | pydoc (pydoc_data prose)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where training tokens come from and how they are split."""

    # name -> domain; empty means the default pair {code: stdlib, prose: pydoc}
    domains: dict[str, DomainConfig] = field(default_factory=dict)
    tokenizer: Literal["bytes"] = "bytes"  # byte-level, vocabulary 256
    eval_tokens: int = 8192  # held-out tokens per domain scored at the end of each run
    heldout_fraction: float = 0.05  # fraction of each domain's documents kept out of training


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture choices of the GPT; its size comes from the run's target N."""

    attention: Literal["softmax", "sigmoid"] = "softmax"
    positional: Literal["rope", "learned"] = "rope"
    tie_embeddings: bool = True
    head_dim: int = 32  # width per attention head; heads = d_model / head_dim
    mlp_ratio: int = 4  # hidden width of the MLP as a multiple of d_model
    aspect_ratio: float = 32.0  # target d_model / n_layer of the shape rule


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW and its learning-rate schedule (a pure function of the step)."""

    lr: float = 3e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    schedule: Literal["cosine", "wsd"] = "cosine"
    warmup_frac: float = 0.05  # fraction of steps spent warming up linearly from 0
    min_lr_frac: float = 0.1  # final lr as a fraction of lr (cosine floor, wsd end point)
    cooldown_frac: float = 0.2  # wsd: fraction of steps in the final (1 - sqrt) cooldown


@dataclass(frozen=True, kw_only=True)
class SimulatedConfig:
    """The simulated trainer: a ground-truth law plus noise, with a cost model."""

    law: str = "chinchilla"  # name of a law family in laws/
    params: dict[str, float] = field(default_factory=dict)  # empty = the replication's fit
    noise: float = 0.01  # std of multiplicative log-normal noise on the final loss
    flops_per_second: float = 1e13  # simulated sustained throughput of one worker
    overhead_s: float = 2.0  # simulated fixed cost per run (start-up, evaluation)
    curve_points: int = 10  # points of the simulated loss curve


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """Everything a trainer needs besides the run's grid point and seed."""

    kind: str = "dense"  # dense | simulated (see trainers.TRAINER_KINDS)
    seq_len: int = 128  # tokens per training sequence
    batch_size: int = 16  # sequences per optimiser step
    flop_convention: Literal["6N", "6N+attn"] = "6N+attn"  # see trainers.flops
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    threads: int = 1  # torch CPU threads per run (match the run's CPU request)
    log_every: int = 10  # optimiser steps between logged training-loss points
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    simulated: SimulatedConfig = field(default_factory=SimulatedConfig)
