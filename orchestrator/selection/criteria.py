"""Information per FLOP: which candidate runs most reduce the uncertainty of a target prediction.

Linearised model around the current fit theta_hat (fit parameterisation of the law): a run at x
observes y = log L(x) with noise sigma^2, and J(x) = d log L_hat(x) / d theta. With the precision
M = sum_i J_i J_i^T / sigma^2 + prior of the runs finished or in flight, the variance of a target
quantity T (gradient g = dT/dtheta) is g^T M^-1 g, and adding a run x lowers it by the
Sherman-Morrison amount

    Delta(x) = (g^T M^-1 j)^2 / (sigma^2 + j^T M^-1 j),   j = J(x)

(the V-optimal / target-variance criterion; see e.g. Atkinson, Donev & Tobias 2007, "Optimum
Experimental Designs", Ch. 10). Candidates are scored by sum_targets Delta(x) / cost(x)^gamma
(cost-weighted as in budget-aware sequential design for scaling laws, gamma = 0.4 by default) and
picked greedily, updating M after each pick as if the run were done: the linearised covariance
does not depend on the observed losses, so a whole batch can be chosen before any of it finishes.
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


def space_filling(
    points: np.ndarray, cost: np.ndarray, k: int, *, taken: np.ndarray, allowed: np.ndarray,
    budget_left: float, cheap_quantile: float = 0.5, rng: np.random.Generator,
) -> list[int]:
    """A maximin design at the cheap end: up to ``k`` candidates among the cheapest
    ``cheap_quantile`` of the pool, each as far as possible (in standardised coordinates,
    e.g. log N and log D) from everything taken or already picked."""
    z = (points - points.mean(0)) / np.maximum(points.std(0), 1e-12)
    mask = allowed.copy()
    if mask.any():
        mask &= cost <= np.quantile(cost[mask], cheap_quantile)
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
