"""Typed configuration of a study.

A study YAML is merged over these dataclasses (see ``orchestrator.loading``); the trainer section
is owned by ``trainers.config``. Field comments are the documentation of every study key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from omegaconf import MISSING

from trainers.config import TrainerConfig


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Where runs are logged."""

    # null = an embedded sqlite store under .isoflop/ in the working directory;
    # or an MLflow tracking URI (http://host:5000, sqlite:////abs/path.db)
    uri: str | None = None
    experiment: str | None = None  # MLflow experiment name; null = the study name
    # seconds between a training's writes of its buffered curves to the store; a run shorter
    # than this hands them to the driver at its end and never opens the store itself
    flush_every_s: float = 5.0
    # seconds between refreshes of the study's figures on its parent run while it runs (after
    # a refit; 0 = after every refit); they are drawn once more at the end
    figures_every_s: float = 30.0


@dataclass(frozen=True, kw_only=True)
class NodeTypeConfig:
    """A kind of node an autoscaler can add (as in ``available_node_types`` of ``ray up`` or a
    KubeRay worker group)."""

    cpus: float = MISSING  # CPUs of one node (its Ray CPU resource)
    gpus: float = 0.0  # GPUs of one node
    memory_mb: float = 0.0  # memory one node offers to Ray; 0 = not limited
    max_nodes: int = 1  # how many of them the autoscaler may run at once


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """Which Ray cluster runs the study."""

    address: str | None = None  # null = start a local Ray; "auto" or ray://head:10001 to attach
    num_cpus: int | None = None  # local Ray only: CPUs to declare (null = all of this machine)
    num_gpus: int | None = None  # local Ray only: GPUs to declare (null = detect)
    # an autoscaling cluster: the node types its autoscaler can add. Feasibility and the number
    # of runs kept in flight then count them next to the nodes alive now, so a study is not
    # refused (or run one at a time) because the GPU nodes have not been launched yet
    autoscale: list[NodeTypeConfig] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class IsoflopConfig:
    """The isoFLOP form of a grid: model sizes around the compute-optimal one at each budget."""

    budgets: list[float] = field(default_factory=list)  # training FLOPs per run
    points_per_budget: int = 5  # model sizes per budget, log-spaced
    span: float = 16.0  # largest / smallest N at one budget, centred on N = sqrt(C / 120)


@dataclass(frozen=True, kw_only=True)
class SimplexConfig:
    """Every domain mixture on a simplex grid: weights ``min_weight + j * step`` (whole j >= 0)
    summing to 1, one weight per domain of trainer.data (Shukor et al. 2025 use step 0.1 with
    every weight at least 0.1 for their mixture laws)."""

    step: float = MISSING  # spacing of the grid
    min_weight: float = 0.0  # every domain's weight is at least this


@dataclass(frozen=True, kw_only=True)
class RangeConfig:
    """A continuous axis: every value from min to max (sampled on a log scale)."""

    min: float = MISSING
    max: float = MISSING


@dataclass(frozen=True, kw_only=True)
class SpaceConfig:
    """A continuous region of runs for a budgeted selection to choose from, instead of a grid.

    The candidate runs are ``candidates`` points of a scrambled Sobol sequence (seeded by the
    study's seed) over log N, and log D, log C or log tokens-per-parameter (give one), and the
    mixture weights when ``mixture`` is on; grid.sparsity and grid.mixture still cross them as
    discrete axes. Needs selection.mode active, random or cheapest: a continuous space has no
    grid to train whole.
    """

    N: RangeConfig | None = None  # target parameter counts
    D: RangeConfig | None = None  # training tokens
    C: RangeConfig | None = None  # or training FLOPs (D from the trainer's FLOPs per token)
    tokens_per_param: RangeConfig | None = None  # or D / N
    # continuous mixture weights over trainer.data's domains (stick-breaking of uniform
    # variables: a flat Dirichlet), each at least min_weight
    mixture: bool = False
    min_weight: float = 0.0
    candidates: int = 512  # points drawn from the space (the selection's candidate pool)


@dataclass(frozen=True, kw_only=True)
class TeacherGridConfig:
    """Teachers of a distillation study: dense runs trained first, crossed with the students.

    Every student of the grid (trainer kind distill) is distilled from every teacher; a teacher is
    trained once (on the student's mixture, with the study's trainer settings as a dense run)
    and its checkpoint read by all of its students.
    """

    N: list[float] = field(default_factory=list)  # teacher sizes
    D: list[float] = field(default_factory=list)  # teacher training tokens (crossed with N)
    tokens_per_param: list[float] = field(default_factory=list)  # or D = ratio * N
    # other studies in the same tracking store (and resources.checkpoint_dir) whose finished runs
    # stand in for these teachers: a teacher with the same run key (same size, tokens, mixture,
    # seed and trainer settings) is not trained again but read from there
    from_studies: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class FinetuneGridConfig:
    """Finetuning with pretraining-data injection (Bethune et al. 2025): for each N, one run
    pretrained on the pretraining mixture, then the grid's runs finetune it for D_ft tokens
    (grid.D or grid.tokens_per_param) on the target domain with a share p of pretraining data."""

    domain: str = MISSING  # the finetuning (target) domain, one of trainer.data.domains
    injection: list[float] = field(default_factory=lambda: [0.0])  # shares p of pretraining data
    pretrain_tokens_per_param: float = 20.0  # pretraining tokens = ratio * N
    # pretraining weights over the domains (domain order; the target's weight must be 0);
    # empty = uniform over the other domains
    pretrain_mixture: list[float] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class GridConfig:
    """The axes a study expands over. Give N with D or tokens_per_param, or an isoflop block."""

    N: list[float] = field(default_factory=list)  # explicit target parameter counts
    D: list[float] = field(default_factory=list)  # explicit training-token counts (crossed with N)
    tokens_per_param: list[float] = field(default_factory=list)  # D = ratio * N (crossed with N)
    isoflop: IsoflopConfig | None = None  # compute budgets x sizes per budget
    space: SpaceConfig | None = None  # or a continuous region for a budgeted selection
    mixture: list[list[float]] = field(default_factory=list)  # domain weight vectors (crossed)
    simplex: SimplexConfig | None = None  # or every mixture of a simplex grid (crossed)
    # MoE sparsities S = (E - K) / E (crossed; trainer kind moe). With isoflop budgets, each
    # point's D comes from its own FLOPs per token, which depend on S through the active parameters
    sparsity: list[float] = field(default_factory=list)
    replicates: int = 1  # seeds per grid point: seed, seed + 1, ...
    teachers: TeacherGridConfig | None = None  # distillation: teacher runs, crossed with the students
    finetune: FinetuneGridConfig | None = None  # finetuning runs from pretrained runs of each N
    # WSD cooldowns branched from one long constant-rate run per N (Hagele et al. 2024): the
    # trunk trains to the last branch point, keeping a checkpoint at each; every D of the grid
    # is then a short (1 - sqrt) cooldown from its branch point, ending exactly as a run trained
    # from scratch to that D would (trainer.optim.schedule must be wsd)
    cooldown_branches: bool = False


@dataclass(frozen=True, kw_only=True)
class LawConfig:
    """A law the study fits: its family, the runs it is fitted to and the loss it explains.

    In YAML a bare family name (``laws: [chinchilla]``) is short for ``{family: chinchilla}``.
    """

    # chinchilla | chinchilla_gamma | distillation | sparsity | mixture_additive | mixture_joint |
    # forgetting | forgetting_ft | custom (with expression, inputs and params)
    family: str = MISSING
    name: str | None = None  # how the fit is logged and exported; null = the family name
    # what the law predicts: loss (held-out, mixture-weighted), eval_loss/<domain>, or
    # pretrain_loss (finetuning runs: the held-out loss on the pretraining mixture)
    loss: str = "loss"
    # which runs it is fitted to: main (the grid's own runs), teacher (distillation teachers),
    # pretrain (the runs finetuning starts from) or all
    runs: Literal["main", "teacher", "pretrain", "all"] = "main"
    # distillation: the study law (chinchilla_gamma or chinchilla) whose fit gives the student's
    # supervised loss Ls~; null = the published supervised law of Busbridge et al. 2025
    supervised: str | None = None
    expression: str | None = None  # custom: the formula over inputs and params, e.g. "E + A / N**alpha"
    inputs: list[str] = field(default_factory=list)  # custom: input names (N, D, C, S, h1.., ...)
    # custom: parameter -> initial values, or {log: true, init: [...]} for a log-parameterised one
    params: dict[str, Any] = field(default_factory=dict)


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
    # stop early once every target's 95% interval is within +-tolerance (relative; percentile
    # intervals of 200 bootstrap refits, from two runs per law parameter on); 0 = spend the budget
    tolerance: float = 0.0
    initial_runs: int = 0  # space-filling runs before the criterion takes over; 0 = 2 x law parameters
    # score = information / cost^exponent (1 = pure information per FLOP, 0 = information alone);
    # null = plan the remaining budget for exponents 0 to 1 and follow the plan that leaves the
    # targets least uncertain (re-planned after every run)
    cost_exponent: float | None = None
    # do not trust the law: split the fit's residuals into noise and a smooth misfit of the law,
    # and pick runs by the targets' error against the full grid's fit, bias included (a misfit
    # makes the extreme runs that pure variance reduction favours pull the fit away); false =
    # variance reduction alone, as if the law were exact
    discrepancy: bool = True
    # the misfit assumed until the residuals show a larger one: standard deviation of a run's
    # log-loss (0.02 = 2 %), smooth over the pool. The first, cheap runs rarely reveal how far
    # the law is off at the large end; 0 = trust the residuals alone
    misfit_prior: float = 0.02
    cost_overhead_flops: float = 0.0  # fixed cost added to every run (start-up, evaluation)
    refit_every: int = 10  # a full multi-start refit every this many updates (others are warm-started)


@dataclass(frozen=True, kw_only=True)
class ResourcesConfig:
    """What each run asks the cluster for, and how the scheduler treats failures."""

    cpus_per_run: float = 1.0
    # auto: real trainings on a cluster with GPUs get the share of a GPU their memory budget
    # needs (1/8, 1/4, 1/2 or 1, so small models pack several to a GPU) when the GPUs' memory is
    # known, else one GPU each; simulated and replayed runs none. Or a number for every run
    gpus_per_run: str = "auto"
    # memory of one of the cluster's GPUs, for sizing auto GPU shares; 0 = not known (a whole
    # GPU per run, unless detect_gpu_memory). A run whose budget one GPU cannot hold gets
    # several, one data-parallel worker on each
    gpu_memory_mb: float = 0.0
    # with gpu_memory_mb 0: take a GPU's memory from the accelerator type Ray detects on each
    # GPU node (the smallest across the cluster; an unknown type keeps whole GPUs). Off by
    # default: Ray names a node's GPUs by the physical model, so a MIG slice or a GPU other
    # jobs share would be taken for the whole card
    detect_gpu_memory: bool = False
    # data-parallel workers per run (DistributedDataParallel through Ray Train, one placement
    # group per run): auto = one per GPU when a run gets more than one, else 1; or a number
    # (each worker then has cpus_per_run CPUs and its part of the run's GPUs)
    workers_per_run: str = "auto"
    # memory each run asks Ray for: auto (its budget from trainers.memory: model state,
    # activations and runtime, with 50 % headroom; nothing for simulated and replayed runs), a
    # number of MB, or 0 to ask for none. Ray places runs only where their memory fits
    memory_per_run: str = "auto"
    max_concurrent: int = 0  # runs in flight at once; 0 = as many as the cluster's CPUs allow
    max_retries: int = 1  # extra attempts after a failed run
    # where runs keep checkpoints (one folder per run key); it must be readable by every worker
    # (a shared filesystem on a cluster). null = .isoflop/checkpoints in the working directory
    checkpoint_dir: str | None = None
    # checkpoint every run, not only the teachers and pretrained runs others start from, so a
    # retried attempt resumes where the failed one stopped
    checkpoint_all: bool = False
    checkpoint_every: int = 0  # optimiser steps between checkpoints; 0 = only the final one
    wait_timeout_s: float = 1.0  # how long one scheduler step waits for a result
    # report a run that no node has started this many seconds after it was submitted (Ray keeps
    # such a task pending without an error); 0 = never
    pending_warn_s: float = 600.0


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """What the exported laws report."""

    budgets: list[float] = field(default_factory=list)  # FLOPs at which to give N_opt and D_opt
    # bootstrap resamples of every law (whole configurations resampled, seeded by the study's
    # seed) for percentile intervals next to the parametric ones; 0 = parametric intervals only
    bootstrap: int = 0
    # (N, D) points at which to give the optimal data mixture of the study's mixture laws (one
    # per target domain, equally weighted), e.g. [{N: 1.0e9, D: 2.0e10}]; empty = none
    mixture_at: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """A scaling-law study: what to train, where, and which laws to fit."""

    name: str = MISSING  # identifies the study in the tracking store
    seed: int = 0  # base seed of every run
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    laws: list[LawConfig] = field(default_factory=lambda: [LawConfig(family="chinchilla")])  # laws to fit
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
