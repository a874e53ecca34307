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
    """One text domain a model trains and is evaluated on (sources: ``trainers.sources``)."""

    # stdlib (Python standard library code) | pydoc (pydoc_data prose) | mlflow_docs (the
    # Markdown documentation shipped inside the mlflow package) | markov (synthetic, known entropy)
    source: str = "stdlib"
    symbols: int = 32  # markov only: alphabet size of the chain (bytes 1 .. symbols), at most 255
    concentration: float = (
        0.1  # markov only: Dirichlet concentration of transition rows (lower = less entropy)
    )
    markov_seed: int = 0  # markov only: seed of the transition matrix and of the generated text
    synthetic_bytes: int = 1 << 20  # markov only: bytes generated (documents of 4096 bytes)


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
    # sigmaReparam (Zhai et al. 2023) on the blocks' linear layers (attention qkv and output, dense
    # MLP up and down): W_hat = gamma / sigma(W) * W, one power iteration per training step, gamma
    # a learned scalar per layer starting at the initial spectral norm. MoE experts keep plain weights
    sigma_reparam: bool = False


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
    warmup_steps: int = 0  # or an absolute number of warmup steps (overrides warmup_frac when > 0)
    min_lr_frac: float = 0.1  # final lr as a fraction of lr (cosine floor, wsd end point)
    cooldown_frac: float = 0.2  # wsd: fraction of steps in the final (1 - sqrt) cooldown
    # model EMA momentum rho at ema_batch_size (0 = no EMA). Held-out losses are then the EMA
    # model's, and a checkpoint's model is the EMA. At another batch size B the momentum follows the
    # EMA scaling rule (Busbridge et al. 2023): rho ** (B / ema_batch_size)
    ema: float = 0.0
    ema_batch_size: int = 0  # the batch size (sequences) ema is given for; 0 = this run's batch_size
    # The batch size (sequences) lr, beta1, beta2, eps and ema were tuned at; null = no scaling.
    # At batch size B, with kappa = B / reference_batch_size, the run trains with Adam's
    # square-root rule and the EMA scaling rule (Malladi et al. 2022; Busbridge et al. 2023):
    # lr * sqrt(kappa), 1 - beta_i scaled by kappa, eps / sqrt(kappa), ema ** kappa (then
    # ema_batch_size must be 0 or equal to it). See trainers.batch_scaling
    reference_batch_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class MoEConfig:
    """Mixture-of-experts MLPs (trainer kind ``moe``).

    Each token uses K = (1 - S) * E experts, with S the run's sparsity (``RunPoint.sparsity``),
    which must make K a whole number.
    """

    experts: int = 8  # E routed experts per layer, each an MLP of width mlp_ratio * d_model
    # which parameter count the target N fixes; an active count no shape reaches within 5 % is
    # refused at study load, naming the nearest counts (trainers.shapes)
    hold: Literal["total", "active"] = "total"
    aux_loss_coef: float = 0.01  # weight of the load-balancing loss (Fedus et al. 2022: 0.01)


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Knowledge distillation from a teacher run (trainer kind ``distill``).

    Defaults are the distillation-scaling-law paper's (Busbridge et al. 2025): pure distillation
    (weight 1) at temperature 1.
    """

    temperature: float = 1.0  # tau: teacher and student logits are divided by it
    weight: float = 1.0  # lambda: loss = (1 - lambda) * cross-entropy + lambda * distillation


@dataclass(frozen=True, kw_only=True)
class SimulatedConfig:
    """The simulated trainer: a ground-truth law plus noise, with a cost model."""

    # name of a law family in laws/ taking N, D and optionally S (the run's sparsity; a simulated
    # MoE computes with N(1-S) active parameters) and mixture weights h1..hk
    law: str = "chinchilla"
    params: dict[str, float] = field(default_factory=dict)  # empty = the replication's Chinchilla fit (chinchilla only)
    # law distillation (with grid.teachers) only: parameters of the supervised law
    # chinchilla_gamma (E, A, B, alpha, beta, gamma) that the simulated teachers follow and that
    # gives the distillation truth the student's supervised loss Ls~
    supervised: dict[str, float] = field(default_factory=dict)
    noise: float = 0.01  # std of multiplicative log-normal noise on the final loss
    flops_per_second: float = 1e13  # simulated sustained throughput of one worker
    overhead_s: float = 2.0  # simulated fixed cost per run (start-up, evaluation)
    curve_points: int = 10  # points of the simulated loss curve
    sleep_s: float = 0.0  # wall seconds each run really takes, spread over its curve (pacing for demos and failure drills)


@dataclass(frozen=True, kw_only=True)
class ReplayConfig:
    """The replay trainer: runs answered from a table of runs already finished elsewhere."""

    # CSV or Parquet file (.parquet, .pq), one row per finished run (resolved against the
    # working directory)
    path: str = ""
    # law input name -> column, e.g. {N: Model Size, C: Training FLOP, loss: loss}; names not
    # given are read from same-named columns; C without D gives D = C / (6 N)
    columns: dict[str, str] = field(default_factory=dict)
    # more input columns than N and D, each a law input of that name (S, h1, h2, L_T, ...; through
    # columns when the table names it otherwise); rows differing in them are different runs
    inputs: list[str] = field(default_factory=list)
    # more loss columns, each recorded as the run's eval_loss/<column> (a law fits one with
    # loss: eval_loss/<column>)
    losses: list[str] = field(default_factory=list)
    # a column labelling each row's resampling unit (a model family, a training code base):
    # bootstrap intervals resample whole groups instead of single configurations
    group: str | None = None
    cost: str = "6*N*D"  # FLOPs of a row: an expression of N, D and the inputs (+ - * / ** and numbers)
    max_loss: float | None = None  # drop rows whose loss is above this (outliers, diverged runs)


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """Everything a trainer needs besides the run's grid point and seed."""

    kind: str = "dense"  # dense | distill | moe | replay | simulated (see trainers.TRAINER_KINDS)
    seq_len: int = 128  # tokens per training sequence
    batch_size: int = 16  # sequences per optimiser step
    flop_convention: Literal["6N", "6N+attn"] = "6N+attn"  # see trainers.flops
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    threads: int = 1  # torch CPU threads per run (match the run's CPU request)
    # torch.compile the training forward and backward: null = on CUDA only (on CPU, compiling
    # these small models costs more than it saves); not part of a run's identity
    compile: bool | None = None
    log_every: int = 10  # optimiser steps between logged training-loss points
    # optimiser steps between held-out evaluations of every domain, logged as eval_loss/<domain>
    # (plus one before the first step); 0 = only at the end of the run
    eval_every: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    simulated: SimulatedConfig = field(default_factory=SimulatedConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
