"""Recipes read off a fitted law: compute-optimal allocation and the isoFLOP parabola check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import optimize

from laws.base import ScalingLaw
from laws.result import LawFit

#: laws whose N-D trade-off is A/N^alpha + B/D^beta inside a monotone map (closed form applies)
_CLOSED_FORM = ("chinchilla", "chinchilla_gamma")


@dataclass(frozen=True, kw_only=True)
class Allocation:
    """Compute-optimal model size and tokens at a budget C (FLOPs, C = 6 N D) and the loss there."""

    C: float
    N_opt: float
    D_opt: float
    loss: float

    @property
    def tokens_per_param(self) -> float:
        return self.D_opt / self.N_opt


def chinchilla_optimum(params: Mapping[str, float], budgets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form N_opt, D_opt under C = 6ND (Hoffmann et al. 2022, Eq. 4 / App. D.3):

    N_opt = G (C/6)^a,  D_opt = (C/6)^b / G,  a = beta/(alpha+beta), b = alpha/(alpha+beta),
    G = (alpha A / (beta B))^(1/(alpha+beta)).

    NaN where the law has no such optimum: with alpha or beta not positive (a fit on few runs can
    have them), the loss along an isoFLOP curve falls all the way to one end.
    """
    c = np.asarray(budgets, dtype=np.float64)
    alpha, beta, a_, b_ = params["alpha"], params["beta"], params["A"], params["B"]
    if not (alpha > 0 and beta > 0 and a_ > 0 and b_ > 0):
        nan = np.full(c.shape, np.nan)
        return nan, nan.copy()
    s = alpha + beta
    # in logs: with extreme coefficients (an early fit's A = 1e300) the power overflowed, and
    # raised; N_opt is then inf or 0, as the law implies
    log_g = (np.log(alpha) + np.log(a_) - np.log(beta) - np.log(b_)) / s
    log_c = np.log(c / 6.0)
    with np.errstate(over="ignore"):
        return np.exp(log_g + beta / s * log_c), np.exp(alpha / s * log_c - log_g)


def numeric_optimum(law: ScalingLaw, params: Mapping[str, float], budget: float, **fixed: float) -> tuple[float, float]:
    """argmin over N of L(N, D = C/(6N), **fixed) for any law with inputs N and D.

    A dense scan of log N over [C/6 * 1e-12, C/6 * 1e0] (then Brent's method on the best
    bracket) so that non-convex laws do not trap a local search.
    """
    if "N" not in law.inputs or "D" not in law.inputs:
        raise ValueError(f"law {law.name!r} has inputs {list(law.inputs)}; compute_optimal needs N and D")
    missing = [k for k in law.inputs if k not in ("N", "D") and k not in fixed]
    if missing:
        raise ValueError(f"law {law.name!r}: give values for inputs {missing} to compute_optimal")
    log_c6 = np.log(budget / 6.0)

    def loss_at(log_n: np.ndarray) -> np.ndarray:
        log_n = np.atleast_1d(log_n)
        n = np.exp(log_n)
        d = np.exp(log_c6 - log_n)
        others = {k: np.full_like(n, v) for k, v in fixed.items()}
        return law.predict(params, N=n, D=d, **others)

    grid = np.linspace(log_c6 / 2 - 14.0, log_c6 / 2 + 14.0, 561)
    vals = loss_at(grid)
    i = int(np.nanargmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = optimize.minimize_scalar(lambda t: float(loss_at(t)[0]), bounds=(lo, hi), method="bounded",
                                   options={"xatol": 1e-10})
    n_opt = float(np.exp(res.x))
    return n_opt, budget / (6.0 * n_opt)


def compute_optimal(fit_: LawFit, budgets: Sequence[float], **fixed: float) -> list[Allocation]:
    """Compute-optimal (N, D) at each budget C under C = 6ND, with the predicted loss.

    Closed form for Chinchilla-type laws (E and gamma drop out of the argmin); a numeric
    1-D search for any other law with N and D inputs (``fixed`` gives its other inputs).
    """
    law = fit_.get_law()
    c = np.asarray(list(budgets), dtype=np.float64)
    if np.any(~np.isfinite(c)) or np.any(c <= 0):
        raise ValueError(f"budgets must be positive and finite, got {c.tolist()}")
    if fit_.law in _CLOSED_FORM and not fixed:
        n_opt, d_opt = chinchilla_optimum(fit_.params, c)
    else:
        nd = [numeric_optimum(law, fit_.params, float(ci), **fixed) for ci in c]
        n_opt = np.array([v[0] for v in nd])
        d_opt = np.array([v[1] for v in nd])
    others = {k: np.full(c.shape, v) for k, v in fixed.items()}
    loss = law.predict(fit_.params, N=n_opt, D=d_opt, **others)
    return [
        Allocation(C=float(ci), N_opt=float(ni), D_opt=float(di), loss=float(li))
        for ci, ni, di, li in zip(c, n_opt, d_opt, np.atleast_1d(loss), strict=True)
    ]


def allocation_intervals(
    fit_: LawFit,
    budgets: Sequence[float],
    *,
    level: float = 0.95,
    optima: Sequence[Allocation] | None = None,
    **fixed: float,
) -> list[dict[str, tuple[float, float]] | None] | None:
    """Delta-method intervals of N_opt and D_opt at each budget from the fit's parametric
    covariance (normal in log N_opt; D_opt = C / (6 N_opt) shares its log-scale error).

    Chinchilla-type laws (with no ``fixed`` inputs) differentiate the closed form (Hoffmann et al.
    2022, Eq. 4). Any other law with inputs N and D (its other inputs held at ``fixed``, e.g. S
    for a sparsity law) goes through the numeric optimum (:func:`numeric_optimum`) by the implicit
    function theorem: with z = log N and F(z, theta) = log L(N = e^z, D = C / (6 e^z); theta),
    dF/dz = 0 at the optimum gives d z*/d theta = -(d2F/dz dtheta) / (d2F/dz2), the derivatives by
    autograd on the law's ``log_predict``. A budget whose optimum is not an interior minimum gets
    None. None overall when the fit has no covariance. ``optima``: :func:`compute_optimal`'s
    allocations at the same budgets, when the caller has them (the numeric search is not repeated).
    :meth:`laws.bootstrap.BootstrapResult.optimum_interval` is the robust alternative.
    """
    from scipy import stats

    cov = fit_.covariance_matrix
    if cov is None:
        return None
    law = fit_.get_law()
    if "N" not in law.inputs or "D" not in law.inputs:
        raise ValueError(f"law {law.name!r} has inputs {list(law.inputs)}; allocation intervals need N and D")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    theta0 = law.from_natural(fit_.params)
    z = float(stats.norm.ppf(0.5 + level / 2))
    closed = fit_.law in _CLOSED_FORM and not fixed
    out: list[dict[str, tuple[float, float]] | None] = []
    if optima is not None and [a.C for a in optima] != [float(c) for c in budgets]:
        raise ValueError(f"optima are at budgets {[a.C for a in optima]}, not {list(budgets)}")
    for i, c in enumerate(budgets):
        c = float(c)
        if closed:
            log_n, g = _closed_form_log_n_opt_gradient(law, theta0, c)
        else:
            n_opt = optima[i].N_opt if optima is not None else numeric_optimum(law, fit_.params, c, **fixed)[0]
            g = log_n_opt_gradient(law, theta0, c, n_opt, **fixed)
            log_n = float(np.log(n_opt))
        if g is None:
            out.append(None)
            continue
        sd = float(np.sqrt(max(g @ cov @ g, 0.0)))
        n_lo, n_hi = np.exp(log_n - z * sd), np.exp(log_n + z * sd)
        out.append({"N_opt": (float(n_lo), float(n_hi)), "D_opt": (float(c / (6 * n_hi)), float(c / (6 * n_lo)))})
    return out


def _closed_form_log_n_opt_gradient(law: ScalingLaw, theta0: torch.Tensor, c: float) -> tuple[float, np.ndarray]:
    """log N_opt and its gradient in the fit vector, from the closed form."""

    def log_n_opt(t: torch.Tensor) -> torch.Tensor:
        nat = {p.name: (torch.exp(t[i]) if p.log else t[i]) for i, p in enumerate(law.params)}
        a, b = nat["alpha"], nat["beta"]
        # Hoffmann et al. 2022, Eq. 4: N_opt = G (C/6)^(beta/(alpha+beta))
        return (torch.log(a * nat["A"] / (b * nat["B"])) + b * np.log(c / 6.0)) / (a + b)

    g = torch.autograd.functional.jacobian(log_n_opt, theta0).numpy()
    return float(log_n_opt(theta0)), g


def log_n_opt_gradient(
    law: ScalingLaw, theta: torch.Tensor, budget: float, n_opt: float, **fixed: float
) -> np.ndarray | None:
    """d log N_opt / d theta [P] at the numeric optimum ``n_opt`` of budget C (C = 6 N D), by the
    implicit function theorem on dF/dz = 0, F(z, theta) = log L(e^z, C / (6 e^z), fixed; theta).

    None when the optimum is not an interior minimum (d2F/dz2 not positive, e.g. N_opt at the
    edge of :func:`numeric_optimum`'s scan) or the derivatives are not finite.
    """
    log_c6 = float(np.log(budget / 6.0))
    others = {k: torch.tensor([float(v)], dtype=torch.float64) for k, v in fixed.items()}

    def log_loss(v: torch.Tensor) -> torch.Tensor:
        log_n, t = v[0:1], v[1:]
        x = {"N": torch.exp(log_n), "D": torch.exp(log_c6 - log_n), **others}
        return law.log_predict(t[None], x)[0, 0]

    v0 = torch.cat([torch.tensor([np.log(n_opt)], dtype=torch.float64), theta.to(torch.float64)])
    g_z = float(torch.autograd.functional.jacobian(log_loss, v0)[0])
    hess = torch.autograd.functional.hessian(log_loss, v0)
    h_zz, h_zt = float(hess[0, 0]), hess[0, 1:].numpy()
    if not (np.isfinite(h_zz) and np.isfinite(g_z) and np.all(np.isfinite(h_zt))) or h_zz <= 0:
        return None
    if abs(g_z / h_zz) > 1e-6:  # not a stationary point: N_opt at the edge of the scan
        return None
    return -h_zt / h_zz


@dataclass(frozen=True, kw_only=True)
class IsoflopMinimum:
    """Hoffmann et al. 2022 "approach 2": a parabola in log N fitted to one isoFLOP profile."""

    C: float
    N_opt: float
    D_opt: float
    loss: float
    n_points: int
    curvature: float


def budget_groups(C: ArrayLike, *, rtol: float = 0.05) -> list[np.ndarray]:
    """Indices of runs grouped by compute budget: C values within ``rtol`` (relative) of a
    group's smallest budget share it; groups in increasing budget order."""
    c = np.asarray(C, dtype=np.float64)
    groups: list[list[int]] = []
    for i in np.argsort(c):
        if groups and abs(c[i] / c[groups[-1][0]] - 1.0) <= rtol:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return [np.array(g) for g in groups]


def isoflop_minima(
    N: ArrayLike, C: ArrayLike, loss: ArrayLike, *, rtol: float = 0.05, min_points: int = 3
) -> list[IsoflopMinimum]:
    """Per budget: fit loss = a (log N)^2 + b log N + c and take its vertex (approach 2).

    Runs are grouped by budget (C values within ``rtol`` of each other share a group); groups
    with fewer than ``min_points`` distinct N, or a non-convex parabola, are skipped.
    """
    n = np.asarray(N, dtype=np.float64)
    c = np.asarray(C, dtype=np.float64)
    y = np.asarray(loss, dtype=np.float64)
    out = []
    for idx in budget_groups(c, rtol=rtol):
        if np.unique(n[idx]).size < min_points:
            continue
        ln = np.log(n[idx])
        a, b, c0 = np.polyfit(ln, y[idx], 2)
        if a <= 0:
            continue
        log_n = -b / (2 * a)
        budget = float(np.exp(np.mean(np.log(c[idx]))))
        n_opt = float(np.exp(log_n))
        out.append(
            IsoflopMinimum(
                C=budget,
                N_opt=n_opt,
                D_opt=budget / (6.0 * n_opt),
                loss=float(c0 - b * b / (4 * a)),
                n_points=int(idx.size),
                curvature=float(2 * a),
            )
        )
    return out
