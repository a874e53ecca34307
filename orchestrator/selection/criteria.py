"""Information per FLOP: which candidate runs most reduce the uncertainty of a target prediction.

Linearised model around the current fit theta_hat (fit parameterisation of the law): a run at x
observes y = log L(x) with noise sigma^2, and J(x) = d log L_hat(x) / d theta. With the precision
M = sum_i J_i J_i^T / sigma^2 + prior of the runs finished or in flight, the variance of a target
quantity T (gradient g = dT/dtheta) is g^T M^-1 g, and adding a run x lowers it by the
Sherman-Morrison amount

    Delta(x) = (g^T M^-1 j)^2 / (sigma^2 + j^T M^-1 j),   j = J(x)

(the V-optimal / target-variance criterion; see e.g. Atkinson, Donev & Tobias 2007, "Optimum
Experimental Designs", Ch. 10). Each target's gain is taken relative to its current variance, so
a loss (log L) and an N_opt target count alike whatever their scales. Candidates are scored by
sum_targets Delta(x) / cost(x)^gamma and picked greedily, updating M after each pick as if the run
were done: the linearised covariance does not depend on the observed losses, so a whole batch can
be chosen before any of it finishes.

No single gamma suits every budget: a small budget is best spent on many cheap runs, a large one
on a few large runs (gamma near 0). :func:`planned_information` therefore plans the whole
remaining budget greedily for several exponents and keeps the plan whose final target variance
is lowest; its first pick is the one proposed, and the plan is made again after every run.
:func:`design_bound` is the convex relaxation of the budgeted design problem (each candidate
taken with a weight in [0, 1]): a lower bound on the target variance any subset of the pool can
reach, which says how much better any selection could do.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

import laws
from laws.base import DTYPE, ScalingLaw


@dataclass(frozen=True, kw_only=True)
class Target:
    """A quantity whose prediction must be accurate.

    ``kind="loss"``: log L at ``inputs`` (or at the compute optimum of ``budget`` when ``inputs``
    is empty); ``kind="N_opt"``: log N_opt at ``budget`` (Chinchilla-type laws only).
    """

    kind: str
    budget: float | None = None
    inputs: Mapping[str, float] | None = None

    @property
    def label(self) -> str:
        where = ",".join(f"{k}={v:.3g}" for k, v in (self.inputs or {}).items()) or f"C={self.budget:.3g}"
        return f"{self.kind}@{where}"


def log_n_opt(law: ScalingLaw, theta: torch.Tensor, *, budget: float) -> torch.Tensor:
    """log N_opt at ``budget`` under C = 6ND for a law whose N-D trade-off is A/N^alpha + B/D^beta:
    N_opt = (alpha A / (beta B))^(1/(alpha+beta)) (C/6)^(beta/(alpha+beta)) (Hoffmann et al. 2022,
    Eq. 4). Differentiable in the fit vector ``theta``."""
    names = law.param_names
    if not {"A", "B", "alpha", "beta"} <= set(names):
        raise ValueError(f"law {law.name!r} has no closed-form N_opt (needs A, B, alpha, beta)")

    def log_of(name: str) -> torch.Tensor:
        i = names.index(name)
        return theta[i] if law.params[i].log else torch.log(theta[i])

    def value(name: str) -> torch.Tensor:
        i = names.index(name)
        return torch.exp(theta[i]) if law.params[i].log else theta[i]

    log_a, log_b = log_of("A"), log_of("B")
    alpha, beta = value("alpha"), value("beta")
    s = alpha + beta
    return (torch.log(alpha) + log_a - torch.log(beta) - log_b) / s + beta / s * float(np.log(budget / 6.0))


def target_point(fit_: laws.LawFit, target: Target) -> dict[str, float]:
    """The law inputs at which a loss target is evaluated."""
    if target.inputs:
        return dict(target.inputs)
    if target.budget is None:
        raise ValueError(f"target {target.kind!r} needs a budget or inputs")
    a = laws.compute_optimal(fit_, [target.budget])[0]
    return {"N": a.N_opt, "D": a.D_opt}


def target_gradients(law: ScalingLaw, fit_: laws.LawFit, targets: Sequence[Target]) -> np.ndarray:
    """dT/dtheta for every target, [T, P]. For the loss at the compute optimum the optimum's own
    dependence on theta drops out (envelope theorem: dL/dN = 0 along the isoFLOP curve there)."""
    theta = law.from_natural(fit_.params).to(DTYPE)
    rows = []
    for t in targets:
        if t.kind == "loss":
            x = {k: np.array([v]) for k, v in target_point(fit_, t).items()}
            rows.append(laws.prediction_jacobian(law, theta, x)[0])
        elif t.kind == "N_opt":
            if t.budget is None:
                raise ValueError("an N_opt target needs a budget")
            grad = torch.func.jacfwd(functools.partial(log_n_opt, law, budget=float(t.budget)))
            rows.append(grad(theta).numpy())
        else:
            raise ValueError(f"unknown target kind {t.kind!r}; use 'loss' or 'N_opt'")
    return np.asarray(rows, dtype=np.float64)


def noise_variance(fit_: laws.LawFit, residuals: np.ndarray, *, prior: float = 1e-4, prior_weight: float = 4.0) -> float:
    """sigma^2 of a run's log-loss: the residual variance shrunk towards ``prior`` (a scaled
    inverse-chi^2 posterior mean with ``prior_weight`` pseudo-observations), so that a fit on few
    runs does not become overconfident."""
    n = residuals.size
    dof = max(n - len(fit_.params), 0)
    return float((np.sum(residuals**2) + prior_weight * prior) / (dof + prior_weight))


def target_variances(j_rows: np.ndarray, g: np.ndarray, *, sigma2: float, prior_precision: float = 1e-6) -> np.ndarray:
    """Linearised variances [T] of the targets after observing runs with Jacobian rows ``j_rows``."""
    p = g.shape[1]
    cov = np.linalg.pinv(j_rows.T @ j_rows / sigma2 + prior_precision * np.eye(p), hermitian=True)
    return np.clip(np.einsum("tp,pq,tq->t", g, cov, g), 0.0, None)


def normalised(g: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Target gradients scaled so that each target's current variance is 1."""
    scale = np.sqrt(np.where(variances > 0, variances, 1.0))
    return g / scale[:, None]


@dataclass(frozen=True, kw_only=True)
class Scores:
    """Greedy picks (indices into the candidate pool) and the per-pick criterion values."""

    picks: list[int]
    gains: list[float]
    target_sd: np.ndarray  # target standard deviations [T] before the picks


def greedy_information(
    j_pool: np.ndarray,
    cost: np.ndarray,
    j_done: np.ndarray,
    g: np.ndarray,
    *,
    sigma2: float,
    k: int,
    gamma: float = 0.4,
    allowed: np.ndarray | None = None,
    budget_left: float = float("inf"),
    prior_precision: float = 1e-6,
) -> Scores:
    """Pick up to ``k`` candidates greedily by target-variance reduction per cost^gamma.

    ``j_pool`` [n, P] candidate Jacobians, ``cost`` [n] their FLOPs (with any fixed overhead),
    ``j_done`` [m, P] Jacobians of runs finished or in flight, ``g`` [T, P] target gradients.
    ``allowed`` masks candidates that may be picked; picks stop when nothing affordable is left.
    """
    p = j_pool.shape[1]
    m = j_done.T @ j_done / sigma2 + prior_precision * np.eye(p)
    cov = np.linalg.pinv(m, hermitian=True)
    mask = np.ones(len(cost), dtype=bool) if allowed is None else allowed.copy()
    left = float(budget_left)
    sd0 = np.sqrt(np.clip(np.einsum("tp,pq,tq->t", g, cov, g), 0, None))
    picks: list[int] = []
    gains: list[float] = []
    weight = np.power(cost, gamma)
    for _ in range(k):
        mask &= cost <= left
        if not mask.any():
            break
        cj = j_pool @ cov  # [n, P]: (M^-1 j)^T
        gcj = g @ cj.T  # [T, n]
        denom = sigma2 + np.einsum("np,np->n", cj, j_pool)
        delta = (gcj**2).sum(0) / denom
        score = np.where(mask, delta / weight, -np.inf)
        i = int(np.argmax(score))
        picks.append(i)
        gains.append(float(delta[i]))
        mask[i] = False
        left -= float(cost[i])
        # Sherman-Morrison: (M + j j^T / s2)^-1 = C - C j j^T C / (s2 + j^T C j)
        cji = cj[i]
        cov = cov - np.outer(cji, cji) / denom[i]
    return Scores(picks=picks, gains=gains, target_sd=sd0)


#: cost exponents a planned selection tries: 0 spends the budget on the most informative runs
#: whatever they cost, 1 on the most information per FLOP
PLAN_EXPONENTS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The best budget-filling plan: its picks in greedy order, the cost exponent that made it and
    the final target variances relative to the current ones [T]."""

    picks: list[int]
    gains: list[float]
    exponent: float
    relative_variance: np.ndarray


def planned_information(
    j_pool: np.ndarray,
    cost: np.ndarray,
    j_done: np.ndarray,
    g: np.ndarray,
    *,
    sigma2: float,
    allowed: np.ndarray | None = None,
    budget_left: float,
    exponents: Sequence[float] = PLAN_EXPONENTS,
    prior_precision: float = 1e-6,
) -> Plan | None:
    """Plan the whole remaining budget: for each cost exponent, fill ``budget_left`` greedily
    (:func:`greedy_information`); return the plan whose summed relative target variance at the end
    is lowest (None when nothing is affordable). Arguments as for :func:`greedy_information`."""
    v0 = target_variances(j_done, g, sigma2=sigma2, prior_precision=prior_precision)
    gn = normalised(g, v0)
    best: Plan | None = None
    for gamma in exponents:
        s = greedy_information(
            j_pool, cost, j_done, gn, sigma2=sigma2, k=len(cost), gamma=gamma, allowed=allowed,
            budget_left=budget_left, prior_precision=prior_precision,
        )
        if not s.picks:
            continue
        rows = np.vstack([j_done, j_pool[s.picks]])
        rel = target_variances(rows, gn, sigma2=sigma2, prior_precision=prior_precision)
        if best is None or rel.sum() < best.relative_variance.sum():
            best = Plan(picks=s.picks, gains=s.gains, exponent=float(gamma), relative_variance=rel)
    return best


@dataclass(frozen=True, kw_only=True)
class Bound:
    """The relaxed optimal design: weights [n] in [0, 1], the target variances [T] they reach, and
    a certified lower bound on the (scaled, summed) objective that no design can beat."""

    weights: np.ndarray
    variances: np.ndarray
    objective: float  # sum_t variance_t / scale_t^2 at ``weights``
    lower: float  # Frank-Wolfe duality bound: the relaxed optimum, hence every subset, is >= this


def design_bound(
    j_pool: np.ndarray,
    cost: np.ndarray,
    g: np.ndarray,
    *,
    sigma2: float,
    budget: float,
    j_done: np.ndarray | None = None,
    target_scale: np.ndarray | None = None,
    steps: int = 500,
    prior_precision: float = 1e-8,
) -> Bound:
    """Lower bound on the summed target variance of any subset of the pool within ``budget``.

    Minimises f(w) = sum_t g_t^T M(w)^-1 g_t / scale_t^2 with M(w) = (J_done^T J_done +
    sum_i w_i j_i j_i^T) / sigma^2 over 0 <= w_i <= 1, sum_i w_i cost_i <= budget: the convex
    relaxation of the budgeted c-/A-optimal design problem (Boyd & Vandenberghe 2004, Sec. 7.5);
    every 0/1 subset is feasible for it. Solved by Frank-Wolfe, whose linear step over this
    polytope is a fractional knapsack; its duality gap f(w) - min_s <grad f(w), s - w> certifies
    ``lower`` <= the relaxed optimum (Jaggi 2013) however many ``steps`` were taken.
    """
    n, p = j_pool.shape
    scale = np.ones(g.shape[0]) if target_scale is None else np.asarray(target_scale, dtype=np.float64)
    gs = g / scale[:, None]
    base = prior_precision * np.eye(p)
    if j_done is not None and len(j_done):
        base = base + j_done.T @ j_done / sigma2
    outer = np.einsum("np,nq->npq", j_pool, j_pool) / sigma2  # [n, P, P]

    def scaled_cov(w: np.ndarray) -> np.ndarray:
        return gs @ np.linalg.inv(base + np.einsum("n,npq->pq", w, outer))  # [T, P]

    def value(w: np.ndarray) -> float:
        return float(np.einsum("tp,tp->", scaled_cov(w), gs))

    def value_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        a = scaled_cov(w)
        return float(np.einsum("tp,tp->", a, gs)), -((a @ j_pool.T) ** 2).sum(0) / sigma2

    def knapsack(grad: np.ndarray) -> np.ndarray:
        """The polytope's vertex minimising <grad, s>: best -grad per cost first, while it pays."""
        s_ = np.zeros(n)
        left = float(budget)
        for i in np.argsort(grad / cost):
            if grad[i] >= 0 or left <= 0:
                break
            s_[i] = min(1.0, left / cost[i])
            left -= s_[i] * cost[i]
        return s_

    w = knapsack(value_and_grad(np.full(n, 1e-3))[1])
    f, grad = value_and_grad(w)
    lower = -np.inf
    for _ in range(steps):
        s_ = knapsack(grad)
        gap = float(grad @ (w - s_))
        lower = max(lower, f - gap)
        if gap <= 1e-9 * f:
            break
        # exact line search on the convex segment w + eta (s - w)
        lo, hi = 0.0, 1.0
        for _ in range(40):
            m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
            lo, hi = (lo, m2) if value(w + m1 * (s_ - w)) < value(w + m2 * (s_ - w)) else (m1, hi)
        w = w + 0.5 * (lo + hi) * (s_ - w)
        f, grad = value_and_grad(w)
    rows = [j_pool * np.sqrt(w)[:, None]] + ([j_done] if j_done is not None and len(j_done) else [])
    variances = target_variances(np.vstack(rows), g, sigma2=sigma2, prior_precision=prior_precision)
    return Bound(weights=w, variances=variances, objective=f, lower=float(max(lower, 0.0)))


def space_filling(
    points: np.ndarray, cost: np.ndarray, k: int, *, taken: np.ndarray, allowed: np.ndarray,
    budget_left: float, cheap_quantile: float = 0.5, max_cost: float = np.inf, rng: np.random.Generator,
) -> list[int]:
    """A maximin design at the cheap end: up to ``k`` candidates among the cheapest
    ``cheap_quantile`` of the pool that cost at most ``max_cost`` (or the cheapest ``k`` allowed
    when none does), each as far as possible (in standardised coordinates, e.g. log N and log D)
    from everything taken or already picked."""
    z = (points - points.mean(0)) / np.maximum(points.std(0), 1e-12)
    mask = allowed.copy()
    if mask.any():
        cap = min(float(np.quantile(cost[mask], cheap_quantile)), max_cost)
        if not (mask & (cost <= cap)).any():
            cap = float(np.sort(cost[mask])[min(k, mask.sum()) - 1])
        mask &= cost <= cap
    chosen: list[int] = []
    ref = z[taken] if taken.size else np.empty((0, z.shape[1]))
    left = float(budget_left)
    for _ in range(k):
        mask &= cost <= left
        if not mask.any():
            break
        cand = np.flatnonzero(mask)
        if ref.shape[0] == 0:
            i = int(rng.choice(cand))
        else:
            d = np.min(np.linalg.norm(z[cand, None, :] - ref[None, :, :], axis=-1), axis=1)
            i = int(cand[np.argmax(d)])
        chosen.append(i)
        mask[i] = False
        left -= float(cost[i])
        ref = np.vstack([ref, z[i]])
    return chosen
