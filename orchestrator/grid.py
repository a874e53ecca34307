"""Expand a study's grid into fully resolved runs, each with a deterministic identity.

Axes: explicit sizes N crossed with explicit token counts D (or tokens-per-parameter ratios), or
the isoFLOP form (compute budgets x sizes per budget, with D derived from the budget through the
trainer's FLOP convention), then crossed with mixtures and replicate seeds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from orchestrator.config import StudyConfig
from orchestrator.errors import StudyError
from trainers import RunPlan, RunPoint, RunSpec, Trainer, get_trainer
from trainers.config import TrainerConfig
from trainers.identity import config_identity
from trainers.schedule import cooldown_steps

#: Chinchilla's rule of thumb (Hoffmann et al. 2022): about 20 tokens per parameter at the
#: compute optimum, so C = 6 N D = 120 N^2 and N_opt ~ sqrt(C / 120). It only centres the isoFLOP
#: sizes; the fitted law decides the real optimum.
TOKENS_PER_PARAM_AT_OPTIMUM = 20.0


@dataclass(frozen=True, kw_only=True)
class PlannedRun:
    """A run of the study with its cost known up front."""

    spec: RunSpec
    plan: RunPlan
    budget: float | None = None  # the isoFLOP budget this run belongs to, if any
    tags: Mapping[str, str] = field(default_factory=dict)  # extra tags for its tracked runs
    stage: str = "main"  # main (the grid's own runs), or teacher, pretrain or trunk (runs others start from)
    inputs: Mapping[str, float] = field(default_factory=dict)  # extra law inputs (D_ft, p)
    # runs this one needs finished first, by how it uses them: teacher (distillation: its
    # checkpoint becomes RunSpec.teacher_checkpoint, its loss the input L_T), init (finetuning:
    # RunSpec.init_checkpoint and init_mixture, its loss the input L_pt0) or branch (a WSD
    # cooldown: RunSpec.branch_from, the trunk's checkpoint at its branch point)
    depends_on: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.spec.run_key


def run_key(point: RunPoint, trainer_config: object, seed: int, plan: RunPlan | None = None) -> str:
    """Deterministic identity of a run: a hash of its resolved configuration and seed.

    With the trainer's ``plan``, the requested size is replaced by what it resolves to (the model
    shape and its exact parameter count), so two requested sizes that round to the same model are
    one run. The study's name is left out on purpose, so that the same run in two studies (a
    teacher shared by several studies) is recognisably the same run.
    """
    resolved: dict[str, object] = asdict(point)
    # fields added later, left out while unused so that every other run keeps its key
    for name in ("inputs", "group"):
        if not resolved[name]:
            del resolved[name]
    if plan is not None:
        resolved["n_params"] = plan.n_params
        resolved["shape"] = None if plan.shape is None else asdict(plan.shape)
    trainer = config_identity(trainer_config)  # type: ignore[arg-type]
    payload = json.dumps(
        {"point": resolved, "trainer": trainer, "seed": seed},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def grid_mixtures(study: StudyConfig) -> list[tuple[float, ...]]:
    """The mixtures the grid crosses: ``grid.mixture`` as given, or every point of the
    ``grid.simplex`` grid over the trainer's domains; empty when the study names none."""
    simplex = study.grid.simplex
    if simplex is None:
        return [tuple(m) for m in study.grid.mixture]
    from trainers.data import domains_of, simplex_grid

    try:
        return simplex_grid(len(domains_of(study.trainer.data)), simplex.step, simplex.min_weight)
    except ValueError as exc:
        raise StudyError("grid.simplex", str(exc).removeprefix("mixture: ")) from None


def mixture_width(study: StudyConfig) -> int:
    """How many domain weights each run's mixture has: those of grid.mixture or grid.simplex,
    one per domain with a continuous grid.space mixture, else 0 (the trainer's default mix)."""
    mixtures = grid_mixtures(study)
    if mixtures:
        return len(mixtures[0])
    space = study.grid.space
    return len(domain_names(study)) if space is not None and space.mixture else 0


def expand(study: StudyConfig, trainer: Trainer | None = None) -> list[PlannedRun]:
    """Every run the study's grid names, in a stable order, each planned by the trainer.

    Runs that others depend on (distillation teachers, pretrained runs) come first, each once.
    """
    trainer = trainer or get_trainer(study.trainer)
    base_points = _base_points(study, trainer)
    mixtures: list[tuple[float, ...]] = grid_mixtures(study) or [()]
    runs: dict[str, PlannedRun] = {}
    upstream: dict[str, PlannedRun] = {}
    for (point, budget), mixture, rep in itertools.product(
        base_points, mixtures, range(study.grid.replicates)
    ):
        # sparsity is crossed in _base_points (it sets D); a continuous space draws the mixture
        point = replace(point, mixture=mixture) if mixture or not point.mixture else point
        seed = study.seed + rep
        for variant in _dependent_variants(study, point, upstream, seed):
            config = variant.trainer or study.trainer
            plan = _plan(trainer if variant.trainer is None else get_trainer(config), variant.point, "grid")
            key = run_key(variant.point, config, seed, plan)
            if key in runs:  # two axes values (or two requested sizes) that resolve to the same run
                continue
            spec = RunSpec(run_key=key, study=study.name, seed=seed, point=variant.point, trainer=config)
            runs[key] = PlannedRun(
                spec=spec, plan=plan, budget=budget, inputs=variant.inputs, depends_on=variant.depends_on
            )
    return [*upstream.values(), *runs.values()]


@dataclass(frozen=True, kw_only=True)
class _Variant:
    point: RunPoint
    inputs: Mapping[str, float] = field(default_factory=dict)
    depends_on: Mapping[str, str] = field(default_factory=dict)
    trainer: TrainerConfig | None = None  # a configuration of its own (cooldown branches)


def _dependent_variants(
    study: StudyConfig, point: RunPoint, upstream: dict[str, PlannedRun], seed: int
) -> list[_Variant]:
    """The runs a grid point stands for: itself, or one student per teacher (``grid.teachers``),
    or one finetuning run per injection share (``grid.finetune``), or a cooldown branched from its
    size's trunk (``grid.cooldown_branches``). Their teachers, pretrained runs and trunks are
    added to ``upstream``."""
    g = study.grid
    if g.cooldown_branches:
        trunk, config = _trunk(study, point, seed)
        upstream.setdefault(trunk.key, trunk)
        return [_Variant(point=point, depends_on={"branch": trunk.key}, trainer=config)]
    if g.teachers is not None:
        out = []
        for teacher in _upstream_runs(study, g.teachers.N, g.teachers.D, g.teachers.tokens_per_param, point.mixture, "teacher", "grid.teachers"):
            upstream.setdefault(teacher.key, teacher)
            out.append(_Variant(point=replace(point, teacher=teacher.key), depends_on={"teacher": teacher.key}))
        return out
    if g.finetune is not None:
        ft = g.finetune
        names = list(domain_names(study))
        target = names.index(ft.domain)
        pre_mix = pretrain_mixture(study)
        (pre,) = _upstream_runs(study, [point.n_params], [], [ft.pretrain_tokens_per_param], pre_mix, "pretrain", "grid.finetune")
        upstream.setdefault(pre.key, pre)
        out = []
        for p in ft.injection:
            mixture = tuple(p * w if i != target else 1.0 - p for i, w in enumerate(pre_mix))
            out.append(
                _Variant(
                    point=replace(point, mixture=mixture, init_from=pre.key),
                    inputs={"D_ft": float(point.tokens), "p": float(p)},
                    depends_on={"init": pre.key},
                )
            )
        return out
    return [_Variant(point=point)]


def _trunk(study: StudyConfig, point: RunPoint, seed: int) -> tuple[PlannedRun, TrainerConfig]:
    """The constant-rate trunk that ``point``'s cooldown branches from, and the configuration of
    the branches (every token count of the point's size shares the trunk, its seed and warmup)."""
    g = study.grid
    optim = study.trainer.optim
    trainer = get_trainer(study.trainer)
    sizes = g.D or [r * point.n_params for r in g.tokens_per_param]
    steps = sorted({_plan(trainer, replace(point, tokens=int(round(d))), "grid.D").steps for d in sizes})
    warmup = round(optim.warmup_frac * steps[0])  # the shortest run's warmup, shared by all
    branch_config = replace(study.trainer, optim=replace(optim, warmup_steps=warmup))
    points = sorted({s - cooldown_steps(s, branch_config.optim) for s in steps})
    if points[0] <= warmup:
        raise StudyError(
            "grid.cooldown_branches",
            f"N={point.n_params:.3g}: the shortest run ({steps[0]} steps) would branch at step {points[0]}, "
            f"inside the shared warmup of {warmup} steps; lower trainer.optim.warmup_frac or raise D",
        )
    trunk_config = replace(study.trainer, optim=replace(optim, warmup_steps=warmup, cooldown_frac=0.0))
    tokens_per_step = study.trainer.batch_size * study.trainer.seq_len
    trunk_point = replace(point, tokens=points[-1] * tokens_per_step)
    plan = _plan(get_trainer(trunk_config), trunk_point, "grid.cooldown_branches")
    key = run_key(trunk_point, trunk_config, seed, plan)
    spec = RunSpec(
        run_key=key, study=study.name, seed=seed, point=trunk_point, trainer=trunk_config, keep_steps=tuple(points)
    )
    return PlannedRun(spec=spec, plan=plan, stage="trunk"), branch_config


def trained_flops(run: PlannedRun) -> float:
    """FLOPs a run really trains: a cooldown branch trains only its cooldown (its trunk pays for
    the rest); every other run its whole plan."""
    if "branch" not in run.depends_on:
        return run.plan.flops
    return run.plan.flops * (1.0 - branch_step(run.plan, run.spec.trainer) / run.plan.steps)


def branch_step(plan: RunPlan, config: TrainerConfig) -> int:
    """The optimiser step a cooldown branch of ``plan`` starts from (where its cooldown begins)."""
    return plan.steps - cooldown_steps(plan.steps, config.optim)


def domain_names(study: StudyConfig) -> tuple[str, ...]:
    """The study's data domains in order (the default pair when none are given; a replayed
    table's: one per mixture weight it gives as an input, h1 .. hk)."""
    from trainers.data import domains_of

    if study.trainer.kind == "replay":
        from trainers.replay import mixture_weights

        weights = mixture_weights(study.trainer.replay.inputs)
        if weights:
            return tuple(sorted(weights, key=lambda x: int(x[1:])))
    return tuple(domains_of(study.trainer.data))


def pretrain_mixture(study: StudyConfig) -> tuple[float, ...]:
    """Domain weights of a finetuning study's pretrained runs (normalised)."""
    ft = study.grid.finetune
    assert ft is not None
    names = domain_names(study)
    if ft.pretrain_mixture:
        total = sum(ft.pretrain_mixture)
        return tuple(w / total for w in ft.pretrain_mixture)
    others = len(names) - 1
    return tuple(0.0 if n == ft.domain else 1.0 / others for n in names)


def _upstream_runs(
    study: StudyConfig,
    sizes: list[float],
    tokens: list[float],
    ratios: list[float],
    mixture: tuple[float, ...],
    stage: str,
    key: str,
) -> list[PlannedRun]:
    """Dense runs other runs start from: every size crossed with every token count (or ratio).
    A simulated study's are simulated supervised runs (``trainers.simulated.teacher_config``)."""
    if study.trainer.kind == "simulated":
        from trainers.simulated import teacher_config

        config = teacher_config(study.trainer)
    else:
        config = replace(study.trainer, kind="dense")
    dense = get_trainer(config)
    out = []
    for n in sizes:
        for d in tokens or [r * n for r in ratios]:
            point = RunPoint(n_params=int(round(n)), tokens=int(round(d)), mixture=mixture)
            plan = _plan(dense, point, key)
            rkey = run_key(point, config, study.seed, plan)
            spec = RunSpec(run_key=rkey, study=study.name, seed=study.seed, point=point, trainer=config)
            out.append(PlannedRun(spec=spec, plan=plan, stage=stage))
    return out


def _plan(trainer: Trainer, point: RunPoint, key: str) -> RunPlan:
    try:
        return trainer.plan(point)
    except ValueError as exc:
        raise StudyError(key, f"run N={point.n_params:.3g}, D={point.tokens:.3g} is impossible: {exc}") from None


def _base_points(study: StudyConfig, trainer: Trainer) -> list[tuple[RunPoint, float | None]]:
    g = study.grid
    if study.trainer.kind == "replay":  # the grid is the table of finished runs
        from trainers.replay import table_points

        try:
            return [(p, None) for p in table_points(study.trainer)]
        except ValueError as exc:
            key, _, message = str(exc).partition(": ")
            raise StudyError(key, message) from None
    if g.isoflop is not None:
        return _isoflop_points(study, trainer)
    if g.space is not None:
        return _space_points(study, trainer)
    points: list[tuple[RunPoint, float | None]] = []
    for n in g.N:
        tokens = list(g.D) if g.D else [r * n for r in g.tokens_per_param]
        for d in tokens:
            for sp in g.sparsity or [0.0]:
                points.append((RunPoint(n_params=int(round(n)), tokens=int(round(d)), sparsity=sp), None))
    return points


def isoflop_sizes(budget: float, points: int, span: float) -> list[float]:
    """Target sizes at one budget: ``points`` sizes log-spaced over ``span``, centred on the
    rule-of-thumb optimum sqrt(C / (6 * 20))."""
    centre = math.sqrt(budget / (6.0 * TOKENS_PER_PARAM_AT_OPTIMUM))
    if points == 1:
        return [centre]
    return [centre * span ** (i / (points - 1) - 0.5) for i in range(points)]


def _isoflop_points(study: StudyConfig, trainer: Trainer) -> list[tuple[RunPoint, float | None]]:
    iso = study.grid.isoflop
    assert iso is not None
    points: list[tuple[RunPoint, float | None]] = []
    for i, budget in enumerate(iso.budgets):
        key = f"grid.isoflop.budgets[{i}]"
        for n, sp in itertools.product(isoflop_sizes(budget, iso.points_per_budget, iso.span), study.grid.sparsity or [0.0]):
            try:
                per_token = trainer.plan(RunPoint(n_params=int(round(n)), tokens=1, sparsity=sp)).flops_per_token
            except ValueError as exc:
                raise StudyError(key, f"budget {budget:.3g} FLOPs asks for a model of N={n:.3g}, S={sp:g}: {exc}") from None
            tokens = budget / per_token
            # A run shorter than one optimiser step cannot be trained at all.
            min_tokens = study.trainer.batch_size * study.trainer.seq_len
            if study.trainer.kind != "simulated" and tokens < min_tokens:
                raise StudyError(
                    key,
                    f"budget {budget:.3g} FLOPs is too small: a model of N={n:.3g} would train on "
                    f"{tokens:.3g} tokens, less than one step ({min_tokens} tokens)",
                )
            point = RunPoint(n_params=int(round(n)), tokens=int(round(tokens)), sparsity=sp)
            points.append((point, budget))
    return points


def stick_breaking(v: np.ndarray, k: int, min_weight: float = 0.0) -> np.ndarray:
    """Mixture weights [n, k] from uniform variables v [n, k - 1]: stick-breaking with
    b_i = 1 - (1 - v_i)^(1 / (k - 1 - i)), which maps the unit cube one-to-one onto the simplex
    and uniform v onto a flat Dirichlet; then every weight is lifted to at least ``min_weight``."""
    n = v.shape[0]
    w = np.zeros((n, k))
    left = np.ones(n)
    for i in range(k - 1):
        b = 1.0 - (1.0 - v[:, i]) ** (1.0 / (k - 1 - i))
        w[:, i] = left * b
        left = left * (1.0 - b)
    w[:, k - 1] = left
    return min_weight + (1.0 - k * min_weight) * w


def _space_points(study: StudyConfig, trainer: Trainer) -> list[tuple[RunPoint, float | None]]:
    """``grid.space``: a scrambled Sobol sample of the continuous region (seeded), crossed with
    grid.sparsity."""
    from scipy.stats import qmc

    space = study.grid.space
    assert space is not None and space.N is not None
    second, axis = next((r, a) for a, r in (("D", space.D), ("C", space.C), ("tokens_per_param", space.tokens_per_param)) if r is not None)
    k = len(domain_names(study)) if space.mixture else 0
    with warnings.catch_warnings():  # a pool size that is not a power of two is fine here
        warnings.simplefilter("ignore", UserWarning)
        u = qmc.Sobol(d=2 + max(k - 1, 0), scramble=True, seed=study.seed).random(space.candidates)

    def log_uniform(r: object, col: np.ndarray) -> np.ndarray:
        lo, hi = math.log(r.min), math.log(r.max)  # type: ignore[attr-defined]
        return np.exp(lo + col * (hi - lo))

    sizes, seconds = log_uniform(space.N, u[:, 0]), log_uniform(second, u[:, 1])
    mixtures = stick_breaking(u[:, 2:], k, space.min_weight) if k else None
    min_tokens = study.trainer.batch_size * study.trainer.seq_len
    points: list[tuple[RunPoint, float | None]] = []
    for i, (n, x) in enumerate(zip(sizes, seconds, strict=True)):
        mixture = tuple(float(w) for w in mixtures[i]) if mixtures is not None else ()
        for sp in study.grid.sparsity or [0.0]:
            if axis == "C":
                try:
                    per_token = trainer.plan(RunPoint(n_params=int(round(n)), tokens=1, sparsity=sp)).flops_per_token
                except ValueError as exc:
                    raise StudyError("grid.space.N", f"a model of N={n:.3g}, S={sp:g} is impossible: {exc}") from None
                tokens = x / per_token
            else:
                tokens = x if axis == "D" else x * n
            if study.trainer.kind != "simulated" and tokens < min_tokens:
                raise StudyError(
                    f"grid.space.{axis}.min",
                    f"a candidate of N={n:.3g} would train on {tokens:.3g} tokens, less than one step ({min_tokens} tokens)",
                )
            points.append((RunPoint(n_params=int(round(n)), tokens=int(round(tokens)), sparsity=sp, mixture=mixture), None))
    return points
