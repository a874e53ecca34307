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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

from orchestrator.config import StudyConfig
from orchestrator.errors import StudyError
from trainers import RunPlan, RunPoint, RunSpec, Trainer, get_trainer

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


def run_key(point: RunPoint, trainer_config: object, seed: int, plan: RunPlan | None = None) -> str:
    """Deterministic identity of a run: a hash of its resolved configuration and seed.

    With the trainer's ``plan``, the requested size is replaced by what it resolves to (the model
    shape and its exact parameter count), so two requested sizes that round to the same model are
    one run. The study's name is left out on purpose, so that the same run in two studies (a
    teacher shared by several studies) is recognisably the same run.
    """
    resolved: dict[str, object] = asdict(point)
    if plan is not None:
        resolved["n_params"] = plan.n_params
        resolved["shape"] = None if plan.shape is None else asdict(plan.shape)
    payload = json.dumps(
        {"point": resolved, "trainer": asdict(trainer_config), "seed": seed},  # type: ignore[call-overload]
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def expand(study: StudyConfig, trainer: Trainer | None = None) -> list[PlannedRun]:
    """Every run the study's grid names, in a stable order, each planned by the trainer."""
    trainer = trainer or get_trainer(study.trainer)
    base_points = _base_points(study, trainer)
    mixtures: list[tuple[float, ...]] = [tuple(m) for m in study.grid.mixture] or [()]
    runs: list[PlannedRun] = []
    seen: set[str] = set()
    for (point, budget), mixture, rep in itertools.product(
        base_points, mixtures, range(study.grid.replicates)
    ):
        point = replace(point, mixture=mixture)  # sparsity is crossed in _base_points (it sets D)
        seed = study.seed + rep
        plan = _plan(trainer, point, "grid")
        key = run_key(point, study.trainer, seed, plan)
        if key in seen:  # two axes values (or two requested sizes) that resolve to the same run
            continue
        seen.add(key)
        spec = RunSpec(run_key=key, study=study.name, seed=seed, point=point, trainer=study.trainer)
        runs.append(PlannedRun(spec=spec, plan=plan, budget=budget))
    return runs


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
