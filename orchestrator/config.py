"""Typed configuration of a study.

A study YAML is merged over these dataclasses (see ``orchestrator.loading``); the trainer section
is owned by ``trainers.config``. Field comments are the documentation of every study key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from omegaconf import MISSING

from trainers.config import TrainerConfig


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Where runs are logged."""

    # null = an embedded sqlite store under .isoflop/ in the working directory;
    # or an MLflow tracking URI (http://host:5000, sqlite:////abs/path.db)
    uri: str | None = None
    experiment: str | None = None  # MLflow experiment name; null = the study name


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """Which Ray cluster runs the study."""

    address: str | None = None  # null = start a local Ray; "auto" or ray://head:10001 to attach
    num_cpus: int | None = None  # local Ray only: CPUs to declare (null = all of this machine)
    num_gpus: int | None = None  # local Ray only: GPUs to declare (null = detect)


@dataclass(frozen=True, kw_only=True)
class IsoflopConfig:
    """The isoFLOP form of a grid: model sizes around the compute-optimal one at each budget."""

    budgets: list[float] = field(default_factory=list)  # training FLOPs per run
    points_per_budget: int = 5  # model sizes per budget, log-spaced
    span: float = 16.0  # largest / smallest N at one budget, centred on N = sqrt(C / 120)


@dataclass(frozen=True, kw_only=True)
class GridConfig:
    """The axes a study expands over. Give N with D or tokens_per_param, or an isoflop block."""

    N: list[float] = field(default_factory=list)  # explicit target parameter counts
    D: list[float] = field(default_factory=list)  # explicit training-token counts (crossed with N)
    tokens_per_param: list[float] = field(default_factory=list)  # D = ratio * N (crossed with N)
    isoflop: IsoflopConfig | None = None  # compute budgets x sizes per budget
    mixture: list[list[float]] = field(default_factory=list)  # domain weight vectors (crossed)
    # MoE sparsities S = (E - K) / E (crossed; trainer kind moe). With isoflop budgets, each
    # point's D comes from its own FLOPs per token, which depend on S through the active parameters
    sparsity: list[float] = field(default_factory=list)
    replicates: int = 1  # seeds per grid point: seed, seed + 1, ...


@dataclass(frozen=True, kw_only=True)
class TargetConfig:
    """Where the fitted law must predict well (active selection's objective)."""

    budget: float | None = None  # FLOPs of the run you plan: loss and N_opt at its compute optimum
    quantities: list[str] = field(default_factory=lambda: ["loss", "N_opt"])  # at the budget
    points: list[dict[str, float]] = field(default_factory=list)  # law inputs, e.g. {N: 1e9, D: 2e10}


@dataclass(frozen=True, kw_only=True)
class SelectionConfig:
    """How runs are chosen from the grid: all of them, or a budgeted subset picked online."""

    # grid = every point; active = most information about the target per FLOP (Optuna ask/tell);
    # random and cheapest = baselines under the same budget
    mode: Literal["grid", "active", "random", "cheapest"] = "grid"
    budget_flops: float | None = None  # training FLOPs to spend (not grid mode)
    budget_fraction: float | None = None  # or: this fraction of the full grid's FLOPs
    law: str | None = None  # the law whose target predictions drive active selection; null = laws[0]
    target: TargetConfig = field(default_factory=TargetConfig)
    tolerance: float = 0.0  # stop early once every target's 95% interval is within +-tolerance (relative)
    initial_runs: int = 0  # space-filling runs before the criterion takes over; 0 = 2 x law parameters
    cost_exponent: float = 0.4  # score = information / cost^exponent (1 = pure information per FLOP)
    cost_overhead_flops: float = 0.0  # fixed cost added to every run (start-up, evaluation)
    refit_every: int = 10  # a full multi-start refit every this many updates (others are warm-started)


@dataclass(frozen=True, kw_only=True)
class ResourcesConfig:
    """What each run asks the cluster for, and how the scheduler treats failures."""

    cpus_per_run: float = 1.0
    gpus_per_run: str = "auto"  # auto (1 GPU for real models when the cluster has GPUs, else 0) or a number
    max_concurrent: int = 0  # runs in flight at once; 0 = as many as the cluster's CPUs allow
    max_retries: int = 1  # extra attempts after a failed run
    wait_timeout_s: float = 1.0  # how long one scheduler step waits for a result


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """What the exported laws report."""

    budgets: list[float] = field(default_factory=list)  # FLOPs at which to give N_opt and D_opt


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """A scaling-law study: what to train, where, and which laws to fit."""

    name: str = MISSING  # identifies the study in the tracking store
    seed: int = 0  # base seed of every run
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    laws: list[str] = field(default_factory=lambda: ["chinchilla"])  # law families to fit
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
