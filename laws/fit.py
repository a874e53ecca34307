"""``fit``: one batched multi-start fitter for every law family.

Recipe (Hoffmann et al. 2022, App. D.2; Besiroglu et al. 2024): minimise the SUM over points of
Huber_delta(residual) from every start of the law's initialisation grid and keep the best start.
All starts are optimised together as one batch (:func:`laws.optimizer.minimise_batched`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from laws.base import DTYPE, FitRecipe, ScalingLaw
from laws.objective import Objective
from laws.optimizer import BatchResult, NewtonOptions, minimise_batched
from laws.result import FitReport, LawFit
from laws.validate import check_data


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
) -> LawFit:
    """Fit ``law`` to ``loss`` observed at ``inputs`` (one array per law input).

    ``init``: starts [S, P] in the fit parameterisation (default: ``law.init_grid()``).
    ``recipe``: overrides the family's Huber delta / residual scale. ``best_tol``: relative
    objective tolerance for counting starts that reached the best optimum. Raises ValueError on
    degenerate data (see :func:`laws.validate.check_data`); suspect data and unconverged
    optimisation are reported in ``LawFit.report.warnings``.
    """
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
    objective = Objective(law, x, torch.from_numpy(y.copy()), recipe=recipe, weights=w)
    t0 = time.perf_counter()
    res, method = run_starts(objective, starts.to(DTYPE), options=options or NewtonOptions(), screen=screen)
    seconds = time.perf_counter() - t0
    finite = torch.isfinite(res.objective)
    if not finite.any():
        raise ValueError(f"law {law.name!r}: the objective is not finite at any of the {starts.shape[0]} starts")
    best = int(torch.argmin(torch.where(finite, res.objective, torch.full_like(res.objective, np.inf))))
    f_best = float(res.objective[best])
    n_best = int((res.objective <= f_best + best_tol * max(abs(f_best), 1e-300)).sum())
    theta = res.theta[best]
    warns = list(warnings)
    converged = bool(res.converged[best])
    if not converged:
        warns.append(
            f"best start did not converge in {res.iterations} iterations (gradient max-norm {float(res.grad_norm[best]):.3g})"
        )
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
    """Two-phase multi-start: every start takes ``iterations`` Newton steps (all in one batch),
    then the ``keep`` lowest-objective starts continue to convergence; the rest stop where they
    are (their objectives still count in the report). ``keep=0`` disables screening. Applied by
    default only to grids of more than ``min_starts`` starts. The method string of the
    :class:`FitReport` says which was used.
    """

    iterations: int = 3
    keep: int = 96
    min_starts: int = 512


def run_starts(
    objective: Objective, starts: Tensor, *, options: NewtonOptions, screen: Screen | None
) -> tuple[BatchResult, str]:
    """Optimise every start (batched), screened or not; returns per-start results and the
    method description for the report."""
    s = starts.shape[0]
    scr = screen if screen is not None else (Screen() if s > Screen().min_starts else Screen(keep=0))
    if scr.keep <= 0 or scr.keep >= s:
        res = minimise_batched(objective.jet, objective.value, starts, options=options)
        return res, f"batched damped Newton (exact Hessian), all {s} starts to convergence"
    first = minimise_batched(
        objective.jet, objective.value, starts, options=replace(options, max_iter=scr.iterations)
    )
    order = torch.argsort(torch.where(torch.isfinite(first.objective), first.objective, torch.inf))
    keep = order[: scr.keep]
    second = minimise_batched(objective.jet, objective.value, first.theta[keep], options=options)
    theta, obj = first.theta.clone(), first.objective.clone()
    gnorm, conv = first.grad_norm.clone(), first.converged.clone()
    theta[keep], obj[keep], gnorm[keep], conv[keep] = (
        second.theta, second.objective, second.grad_norm, second.converged,
    )
    res = BatchResult(
        theta=theta, objective=obj, grad_norm=gnorm, converged=conv,
        iterations=scr.iterations + second.iterations,
    )
    method = (
        f"batched damped Newton (exact Hessian): all {s} starts x {scr.iterations} iterations, "
        f"then the best {scr.keep} to convergence"
    )
    return res, method


def objective_for(law: ScalingLaw, inputs: Mapping[str, ArrayLike], loss: ArrayLike) -> Objective:
    """The summed-Huber :class:`~laws.objective.Objective` of ``law`` on validated data."""
    xs, y, _ = check_data(law, inputs, loss)
    return Objective(law, law.prepare_inputs(xs), torch.from_numpy(y))


def fit_vector(law: ScalingLaw, fit_: LawFit) -> Tensor:
    """``fit_.params`` as the law's fit vector [P] (float64)."""
    return law.from_natural(fit_.params)
