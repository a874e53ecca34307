"""``fit``: one batched multi-start fitter for every law family.

Recipe (Hoffmann et al. 2022, App. D.2; Besiroglu et al. 2024): minimise the SUM over points of
Huber_delta(residual) from every start of the law's initialisation grid and keep the best start.
All starts are optimised together as one batch (:func:`laws.optimizer.minimise_batched`).

Two speed-ups, both reported in ``FitReport.method``: large grids are screened (every start
takes a few Newton steps, the best continue to convergence; :class:`Screen`), and the fit runs a
Huber continuation: first with a large threshold (delta = 1: least squares for residuals below
1, smooth and fast for Newton), warm-starting the recipe's delta, whose optimum is the result.
On the flat linear tails of a small-delta Huber the Newton model is poor and starts crawl; the
smooth phase moves them to the right basin first (with it, parameter recovery succeeds for the
sparsity and mixture laws, where it failed from the raw grid). Continuation phases are capped
at ``CONTINUATION_MAX_ITER`` iterations; when the best start of the recipe's phase has not
converged, a few of the best starts are polished with more iterations (``POLISH_STARTS``,
``POLISH_FACTOR``), so slow final approaches converge without the whole batch paying for them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from laws.base import DTYPE, MAX_LOG, FitRecipe, ScalingLaw
from laws.objective import Objective
from laws.optimizer import BatchResult, NewtonOptions, minimise_batched, torch_threads
from laws.result import FitReport, LawFit
from laws.validate import check_data

#: absolute floor of the "reached the best objective" tolerance (objectives of exact fits are ~0)
BEST_ABS_TOL = 1e-15
#: Newton iterations of each continuation phase before the recipe's. That phase only moves the
#: starts to the right basin; where the data leave a direction unidentified (a term that can
#: vanish, e.g. E -> 0 in a mixture law) its least-squares optimum lies at infinity and running it
#: to convergence only crawls there. The recipe's phase gets ``NewtonOptions.max_iter``.
CONTINUATION_MAX_ITER = 50
#: when the best start has not converged after ``NewtonOptions.max_iter`` iterations, this many
#: of the best unconverged starts continue, in up to ``POLISH_FACTOR`` rounds of ``max_iter``,
#: until the best start has converged. An optimum
#: approached along a weakly identified direction (a residual crossing the Huber kink at every
#: other step while a parameter drifts towards a boundary such as log E -> -inf) needs several
#: hundred damped steps: with 200 and no polish, the best start of noisy sparsity and mixture fits
#: stopped with a gradient of 1e-4 (and a bootstrap started there converged in no resample).
#: Polishing only a few starts keeps the cost of the stragglers off the batch.
POLISH_STARTS = 8
POLISH_FACTOR = 10
#: a best objective reached by a single start is reported when there were at least this many
SINGLE_START_MIN_STARTS = 10
#: a log-parameterised parameter ending more than this (in natural-log units, a factor e^20, about
#: 5e8) outside the range of the starts ran off towards 0 or infinity: its term vanished or took
#: over, and the data do not identify it
RUNAWAY_LOG = 20.0
#: an exponent of the law's formula (``X**p``, ``X**(-p)``) with |p| below this makes its power
#: constant over the data, so its term is confounded with the law's constants
ZERO_EXPONENT = 1e-3


def fit(
    law: ScalingLaw | str,
    inputs: Mapping[str, ArrayLike],
    loss: ArrayLike,
    *,
    init: ArrayLike | None = None,
    recipe: FitRecipe | None = None,
    options: NewtonOptions | None = None,
    best_tol: float = 1e-6,
    screen: Screen | None = None,
    weights: ArrayLike | None = None,
    covariance: bool = True,
    threads: int | None = 1,
    continuation: Sequence[float] = (1.0,),
    polish: int | None = None,
) -> LawFit:
    """Fit ``law`` to ``loss`` observed at ``inputs`` (one array per law input).

    ``init``: starts [S, P] in the fit parameterisation (default: ``law.init_grid()``).
    ``recipe``: overrides the family's Huber delta / residual scale. ``best_tol``: relative
    objective tolerance for counting starts that reached the best optimum. Raises ValueError on
    degenerate data (see :func:`laws.validate.check_data`); suspect data and unconverged
    optimisation are reported in ``LawFit.report.warnings``. ``threads``: torch intra-op threads
    while fitting (None: leave torch's setting; see :func:`laws.optimizer.torch_threads`).
    ``continuation``: larger Huber thresholds fitted first, each warm-starting the next and the
    last the recipe's (with delta = 1 the first phase is least squares for residuals below 1):
    the smooth objective screens and moves the starts quickly; the recipe's objective decides.
    ``()`` fits the recipe's objective only. ``polish``: at most this many more rounds of
    ``options.max_iter`` iterations for the best unconverged starts (default :data:`POLISH_FACTOR`); 0
    reports the best start where the iterations left it (a warm refit that the next one continues).
    """
    with torch_threads(threads):
        return _fit(law, inputs, loss, init=init, recipe=recipe, options=options, best_tol=best_tol,
                    screen=screen, weights=weights, covariance=covariance, continuation=continuation,
                    polish=polish)


def _fit(
    law: ScalingLaw | str,
    inputs: Mapping[str, ArrayLike],
    loss: ArrayLike,
    *,
    init: ArrayLike | None,
    recipe: FitRecipe | None,
    options: NewtonOptions | None,
    best_tol: float,
    screen: Screen | None,
    weights: ArrayLike | None,
    covariance: bool,
    continuation: Sequence[float],
    polish: int | None = None,
) -> LawFit:
    if isinstance(law, str):
        from laws.registry import get_law

        law = get_law(law)
    xs, y, warnings = check_data(law, inputs, loss)
    x = law.prepare_inputs(xs)
    starts = law.init_grid() if init is None else torch.as_tensor(np.asarray(init, dtype=np.float64))
    if starts.ndim != 2 or starts.shape[1] != law.n_params:
        raise ValueError(f"init must have shape [S, {law.n_params}] for law {law.name!r}, got {tuple(starts.shape)}")
    w = None
    if weights is not None:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64).reshape(-1))
        if w.shape[0] != y.shape[0] or bool((w < 0).any()):
            raise ValueError(f"weights must be {y.shape[0]} non-negative values, got shape {tuple(w.shape)}")
    rec = recipe or law.recipe
    deltas = [float(d) for d in continuation if d > rec.delta] + [rec.delta]
    objectives = [
        Objective(law, x, torch.from_numpy(y.copy()), recipe=replace(rec, delta=d), weights=w) for d in deltas
    ]
    objective = objectives[-1]
    t0 = time.perf_counter()
    res, method = run_starts(objectives, starts.to(DTYPE), options=options or NewtonOptions(), screen=screen,
                             polish=polish)
    seconds = time.perf_counter() - t0
    finite = torch.isfinite(res.objective)
    if not finite.any():
        raise ValueError(f"law {law.name!r}: the objective is not finite at any of the {starts.shape[0]} starts")
    # an optimum whose natural parameters overflow (log A = 800: A/N^alpha is finite in log space,
    # A is not) cannot be reported, predicted with or exported: the best start that has them wins
    usable = finite & law.representable(res.theta)
    if not usable.any():
        raise ValueError(
            f"law {law.name!r}: every start that reached a finite objective ran a log-parameter past "
            f"exp's float64 range (log > {MAX_LOG:.1f}); the data do not identify the law"
        )
    inf = torch.full_like(res.objective, np.inf)
    objective_ = torch.where(usable, res.objective, inf)
    best = int(torch.argmin(objective_))
    f_best = float(res.objective[best])
    # relative tolerance, with an absolute floor for (near-)exact fits whose optimum is ~0
    n_best = int((objective_ <= f_best + max(best_tol * abs(f_best), BEST_ABS_TOL)).sum())
    theta = res.theta[best]
    warns = list(warnings)
    lowest = int(torch.argmin(torch.where(finite, res.objective, inf)))
    if lowest != best and float(res.objective[lowest]) < f_best:
        t_low = res.theta[lowest]
        over = [(p.name, float(v)) for p, v in zip(law.params, t_low, strict=True) if p.log and float(v) > MAX_LOG]
        what = ", ".join(f"{n} = exp({v:.4g})" for n, v in over) or "a non-finite parameter"
        warns.append(
            f"the lowest objective ({float(res.objective[lowest]):.6g}) was reached at {what}, beyond float64's range; "
            f"the best start with finite parameters is reported (objective {f_best:.6g}): the data do not identify the law"
        )
    converged = bool(res.converged[best])
    if not converged:
        warns.append(
            f"best start did not converge in {res.iterations} iterations (gradient max-norm {float(res.grad_norm[best]):.3g})"
        )
    if n_best == 1 and starts.shape[0] >= SINGLE_START_MIN_STARTS:
        warns.append(
            f"only 1 of {starts.shape[0]} starts reached the best objective (relative tolerance {best_tol:g}): "
            "the optimum may be a narrow or spurious basin; the data may not identify the law"
        )
    warns += parameter_warnings(law, theta, starts)
    params = law.to_natural(theta)
    cov = None
    if covariance:
        from laws.uncertainty import fit_covariance

        cov_m = fit_covariance(objective, theta)
        if cov_m is None:
            warns.append("parametric covariance unavailable: the Hessian at the optimum is singular")
        else:
            cov = tuple(tuple(float(v) for v in row) for row in cov_m)
    report = FitReport(
        n_points=int(y.shape[0]),
        n_starts=int(starts.shape[0]),
        n_best=n_best,
        best_tol=best_tol,
        grad_norm=float(res.grad_norm[best]),
        converged=converged,
        n_converged=int(res.converged.sum()),
        iterations=res.iterations,
        seconds=seconds,
        method=method,
        warnings=tuple(warns),
    )
    return LawFit(
        law=law.name,
        params=params,
        objective=f_best,
        report=report,
        covariance=cov,
        law_spec=law.spec(),
    )


@dataclass(frozen=True, kw_only=True)
class Screen:
    """Two-phase multi-start: every start takes ``iterations`` Newton steps (all in one batch, on
    the first continuation objective), then the ``keep`` lowest-objective starts continue to
    convergence; the rest stop where they are (their objectives, re-evaluated on the recipe's
    objective, still count in the report). ``keep=0`` disables screening. Applied by
    default only to grids of more than ``min_starts`` starts. The method string of the
    :class:`FitReport` says which was used.
    """

    iterations: int = 3
    keep: int = 64
    min_starts: int = 512
    # ``iterations=0`` ranks the starts by their objective alone (values, no derivatives): the
    # cheap screen for very large grids such as the distillation law's full 162,000 starts


def run_starts(
    objectives: Sequence[Objective], starts: Tensor, *, options: NewtonOptions, screen: Screen | None,
    polish: int | None = None,
) -> tuple[BatchResult, str]:
    """Optimise every start (batched) through the continuation ``objectives`` (smoothest first,
    the recipe's last), screened or not; returns per-start results on the last objective and the
    method description for the report."""
    final = objectives[-1]
    s = starts.shape[0]
    scr = screen if screen is not None else (Screen() if s > Screen().min_starts else Screen(keep=0))
    screened = 0 < scr.keep < s
    iterations = 0
    if screened and scr.iterations == 0:
        # rank the starts by their objective alone: one value evaluation each, no derivatives
        with torch.no_grad():
            f0 = objectives[0].value(starts, torch.arange(s))
        first = BatchResult(theta=starts, objective=f0, grad_norm=torch.full_like(f0, float("nan")),
                            converged=torch.zeros(s, dtype=torch.bool), iterations=0)
    elif screened:
        first = minimise_batched(
            objectives[0].jet, objectives[0].value, starts, options=replace(options, max_iter=scr.iterations)
        )
        iterations += first.iterations
    if screened:
        order = torch.argsort(torch.where(torch.isfinite(first.objective), first.objective, torch.inf))
        keep = order[: scr.keep]
        theta_k = first.theta[keep]
    else:
        keep = torch.arange(s)
        theta_k = starts
    for obj in objectives:
        opts = options if obj is final else replace(options, max_iter=min(options.max_iter, CONTINUATION_MAX_ITER))
        res = minimise_batched(obj.jet, obj.value, theta_k, options=opts)
        theta_k = res.theta
        iterations += res.iterations
    res, polished = _polish(final, res, options, rounds=POLISH_FACTOR if polish is None else polish)
    iterations += polished
    note = f"; the best {POLISH_STARTS} unconverged starts polished ({polished} more iterations)" if polished else ""
    if not screened:
        return (
            BatchResult(theta=res.theta, objective=res.objective, grad_norm=res.grad_norm,
                        converged=res.converged, iterations=iterations),
            f"{_continuation(objectives)}batched damped Newton (exact Hessian), all {s} starts to convergence{note}",
        )
    # starts stopped after screening: their objective on the recipe's delta, never "converged"
    theta = first.theta.clone()
    theta[keep] = res.theta
    with torch.no_grad():
        objective = final.value(theta, torch.arange(s))
    objective[keep] = res.objective
    gnorm = torch.full((s,), float("nan"), dtype=theta.dtype)
    gnorm[keep] = res.grad_norm
    conv = torch.zeros(s, dtype=torch.bool)
    conv[keep] = res.converged
    method = (
        f"{_continuation(objectives)}batched damped Newton (exact Hessian): all {s} starts x "
        f"{scr.iterations} iterations, then the best {scr.keep} to convergence{note}"
        if scr.iterations else
        f"{_continuation(objectives)}batched damped Newton (exact Hessian): all {s} starts ranked by their "
        f"objective, the best {scr.keep} to convergence{note}"
    )
    return BatchResult(theta=theta, objective=objective, grad_norm=gnorm, converged=conv, iterations=iterations), method


def _polish(
    objective: Objective, res: BatchResult, options: NewtonOptions, rounds: int
) -> tuple[BatchResult, int]:
    """While the best start has not converged, continue the ``POLISH_STARTS`` best unconverged
    starts in rounds of ``options.max_iter`` iterations, at most ``rounds`` rounds (the
    rest of the batch is not paid for); stops as soon as the lowest objective belongs to a
    converged start. Returns the updated results and the iterations run."""
    theta, objective_, gnorm, conv = (t.clone() for t in (res.theta, res.objective, res.grad_norm, res.converged))
    total = 0
    for _ in range(max(rounds, 0)):
        finite = torch.where(torch.isfinite(objective_), objective_, torch.inf)
        best = int(torch.argmin(finite))
        if bool(conv[best]) or not torch.isfinite(finite[best]):
            break
        order = torch.argsort(finite)
        order = order[torch.isfinite(finite[order]) & ~conv[order]][:POLISH_STARTS]
        more = minimise_batched(objective.jet, objective.value, theta[order], options=options)
        theta[order], objective_[order], gnorm[order], conv[order] = (
            more.theta, more.objective, more.grad_norm, more.converged)
        total += more.iterations
    return BatchResult(theta=theta, objective=objective_, grad_norm=gnorm, converged=conv,
                       iterations=res.iterations + total), total


def _continuation(objectives: Sequence[Objective]) -> str:
    if len(objectives) == 1:
        return ""
    return "Huber continuation (delta " + " -> ".join(f"{o.delta:g}" for o in objectives) + "); "


def exponent_names(law: ScalingLaw) -> tuple[str, ...]:
    """Parameters that appear as an exponent in the law's formula, alone or negated
    (``N**alpha``, ``L_T**(-c0)``); log-parameterised ones excluded (they cannot reach 0)."""
    pattern = re.compile(r"\*\*\s*(\(\s*)?-?\s*([A-Za-z_]\w*)(?(1)\s*\))")
    linear = {p.name for p in law.params if not p.log}
    found = [m.group(2) for m in pattern.finditer(law.formula or "")]
    return tuple(dict.fromkeys(n for n in found if n in linear))


def parameter_warnings(law: ScalingLaw, theta: Tensor, starts: Tensor) -> list[str]:
    """Parameters the optimum left unidentified: a log-parameter more than :data:`RUNAWAY_LOG`
    outside its starts' range (a term that vanished, value -> 0, or diverged) and an exponent at
    ~0 (:data:`ZERO_EXPONENT`; its power is constant). The law's parameterisation has no other
    bounds."""
    out: list[str] = []
    t = theta.detach().to(DTYPE)
    for i, p in enumerate(law.params):
        if not p.log:
            continue
        col = starts[:, i]
        col = col[torch.isfinite(col)]
        v = float(t[i])
        if col.numel() == 0 or not np.isfinite(v):
            continue
        lo, hi = float(col.min()), float(col.max())
        if v < lo - RUNAWAY_LOG:
            out.append(f"parameter {p.name} = {np.exp(v):.3g} (log {v:.3g}) ran to ~0, far below its starts "
                       f"(log {lo:g} to {hi:g}): its term vanished; the data do not identify it")
        elif v > hi + RUNAWAY_LOG:
            out.append(f"parameter {p.name} = {np.exp(v):.3g} (log {v:.3g}) ran far above its starts "
                       f"(log {lo:g} to {hi:g}): the data do not identify it")
    names = law.param_names
    for name in exponent_names(law):
        v = float(t[names.index(name)])
        if abs(v) < ZERO_EXPONENT:
            out.append(f"exponent {name} = {v:.3g} is ~0: its power is constant over the data, so its term is "
                       "confounded with the law's constants")
    return out


def objective_for(law: ScalingLaw, inputs: Mapping[str, ArrayLike], loss: ArrayLike) -> Objective:
    """The summed-Huber :class:`~laws.objective.Objective` of ``law`` on validated data."""
    xs, y, _ = check_data(law, inputs, loss)
    return Objective(law, law.prepare_inputs(xs), torch.from_numpy(y))


def fit_vector(law: ScalingLaw, fit_: LawFit) -> Tensor:
    """``fit_.params`` as the law's fit vector [P] (float64)."""
    return law.from_natural(fit_.params)
