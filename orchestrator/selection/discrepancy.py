"""Selection that does not trust the law: a discrepancy term, and the error it adds.

Real runs depart from any law's form in a smooth, correlated way (a scaling law is an
approximation), not only by independent seed noise. Model a run's log-loss as

    y(x) = f(x; theta) + delta(x) + eps,   delta ~ GP(0, tau^2 k_l),   eps ~ N(0, sigma^2)

(the discrepancy of Kennedy & O'Hagan 2001), with k_l a squared-exponential kernel over the
pool's standardised coordinates (log N, log D, ...). Under a correct law tau^2 = 0.

*What the selection aims at.* The parameters the full grid's fit would find, theta_P: the
projection of the true mean onto the law over the whole pool. A subset S's (linearised,
least-squares) fit misses it by

    g^T (theta_S - theta_P) = a_S . (delta_S + eps_S) - b . delta_P,
    a_S = J_S M_S^-1 g,  b = J_P M_P^-1 g,  M = J^T J (+ a small ridge),

whose mean squared error over the discrepancy and the noise is

    MSE(S) = tau^2 (a_S^T K_SS a_S - 2 a_S^T K_SP b + b^T K_PP b) + sigma^2 g^T M_S^-1 g.

The noise term is the posterior variance with the ridge as a prior (a_S^T a_S sigma^2 plus the
ridge's own share, so a design that leaves the target unidentified counts as uncertain, not as
exact). With tau^2 = 0 the MSE is the target variance of
:mod:`orchestrator.selection.criteria`; with a discrepancy it also counts the bias of fitting
the law where the runs depart from it, which is why bias-aware designs sit less at the extremes
than variance-optimal ones (Box & Draper 1959, "A basis for the selection of a response surface
design"). Adding one candidate changes a_S by a rank-one update, and every term above is then a
p-dimensional quadratic form, so all candidates are scored in O(n p^2) per pick, as for the
variance criterion.

sigma^2, tau^2 and the length-scale l come from the residuals of the current fit by restricted
maximum likelihood (REML, which accounts for the law's own fitted parameters) over a small grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from orchestrator.selection.criteria import PLAN_EXPONENTS

#: length-scales (in standard deviations of the pool's coordinates) and discrepancy shares
#: tau^2 / (tau^2 + sigma^2) the REML estimate chooses among
LENGTHS = (0.25, 0.5, 1.0, 2.0, 4.0)
SHARES = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True, kw_only=True)
class Discrepancy:
    """sigma^2 (independent noise), tau^2 (discrepancy variance) and the length-scale of the
    discrepancy, all for a run's log-loss."""

    noise: float
    scale: float = 0.0
    length: float = 1.0

    def rows(self, za: np.ndarray, zb: np.ndarray) -> np.ndarray:
        """tau^2 k(za_i, zb_j) [len(za), len(zb)] (the discrepancy's covariance, no noise)."""
        if self.scale <= 0:
            return np.zeros((len(za), len(zb)))
        d2 = np.clip((za**2).sum(1)[:, None] + (zb**2).sum(1)[None, :] - 2.0 * za @ zb.T, 0.0, None)
        return self.scale * np.exp(-0.5 * d2 / self.length**2)


def standardised(space: np.ndarray) -> np.ndarray:
    return (space - space.mean(0)) / np.maximum(space.std(0), 1e-12)


def estimate_discrepancy(
    z: np.ndarray,
    residuals: np.ndarray,
    jac: np.ndarray,
    *,
    prior: float = 1e-4,
    prior_weight: float = 4.0,
    lengths: Sequence[float] = LENGTHS,
    shares: Sequence[float] = SHARES,
    max_points: int = 400,
) -> Discrepancy:
    """REML estimate of noise and discrepancy from a fit's residuals.

    ``z`` [n, d] coordinates and ``residuals`` [n] of the finished runs, ``jac`` [n, p] the law's
    Jacobian there. For each (length-scale, share) the total variance s^2 is profiled out
    (s^2 = r^T Pi r / (n - p), shrunk towards ``prior`` with ``prior_weight`` pseudo-observations
    as in :func:`~orchestrator.selection.criteria.noise_variance`); the pair with the highest
    restricted likelihood wins. With too few residuals to tell the two apart, all of the
    variance is noise. Beyond ``max_points`` residuals a seeded subsample of them is used.
    """
    if len(residuals) > max_points:  # O(n^3) per grid point: a seeded subsample is plenty
        keep = np.sort(np.random.default_rng(0).choice(len(residuals), max_points, replace=False))
        z, residuals, jac = z[keep], residuals[keep], jac[keep]
    n, p = jac.shape
    dof = n - p
    if dof < 3:
        ss = float(np.sum(residuals**2))
        return Discrepancy(noise=(ss + prior_weight * prior) / (max(dof, 0) + prior_weight))
    d2 = np.sum((z[:, None, :] - z[None, :, :]) ** 2, axis=-1)
    best: tuple[float, Discrepancy] | None = None
    for length in lengths:
        k = np.exp(-0.5 * d2 / length**2)
        for share in shares:
            if share == 0 and length != lengths[0]:
                continue  # pure noise: the length-scale plays no part
            cov = share * k + (1 - share) * np.eye(n) + 1e-9 * np.eye(n)
            try:
                chol = np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                continue
            wr = _solve_lower(chol, residuals)
            wj = _solve_lower(chol, jac)
            # J^T S^-1 J through its eigenvalues: a law the runs do not identify yet (a
            # rank-deficient Jacobian) restricts the likelihood to the directions they do
            values, vectors = np.linalg.eigh(wj.T @ wj)
            kept = values > 1e-10 * max(float(values[-1]), 1e-300)
            rank = int(kept.sum())
            if n - rank < 3:
                continue
            # r^T Pi r = r^T S^-1 r - (J^T S^-1 r)^T (J^T S^-1 J)^+ (J^T S^-1 r)
            jr = vectors[:, kept].T @ (wj.T @ wr)
            quad = float(wr @ wr - np.sum(jr**2 / values[kept]))
            free = n - rank
            s2 = (max(quad, 0.0) + prior_weight * prior) / (free + prior_weight)
            logdet = 2.0 * float(np.sum(np.log(np.diag(chol))))
            logdet_info = float(np.sum(np.log(values[kept])))
            loglik = -0.5 * (free * np.log(s2) + logdet + logdet_info + max(quad, 0.0) / s2)
            candidate = Discrepancy(noise=s2 * (1 - share), scale=s2 * share, length=float(length))
            if best is None or loglik > best[0]:
                best = (loglik, candidate)
    if best is None:
        return Discrepancy(noise=(float(np.sum(residuals**2)) + prior_weight * prior) / (dof + prior_weight))
    return best[1]


def _solve_lower(chol: np.ndarray, b: np.ndarray) -> np.ndarray:
    return scipy.linalg.solve_triangular(chol, b, lower=True)


#: the length-scale of an assumed misfit (``floor``): smooth over the whole pool
PRIOR_LENGTH = 2.0


def floor(found: Discrepancy, sd: float) -> Discrepancy:
    """``found``, or a misfit of standard deviation ``sd`` (length-scale :data:`PRIOR_LENGTH`)
    where the residuals showed less: early runs, all at the cheap end, rarely reveal how far the
    law departs from the larger runs, so the design hedges against a typical misfit from the
    start."""
    if found.scale >= sd**2:
        return found
    return Discrepancy(noise=found.noise, scale=sd**2, length=PRIOR_LENGTH)


@dataclass(frozen=True, kw_only=True)
class BiasAwarePlan:
    """Greedy picks, the per-pick reduction of the summed relative MSE, the cost exponent used and
    the final MSE of each target relative to its current MSE [T]."""

    picks: list[int]
    gains: list[float]
    exponent: float
    relative_mse: np.ndarray


class _Design:
    """Incremental state of the MSE of a growing design S (see the module docstring)."""

    def __init__(
        self, j_pool: np.ndarray, done: np.ndarray, g: np.ndarray, z: np.ndarray, discrepancy: Discrepancy,
        r: np.ndarray, const: np.ndarray, *, ridge: float,
    ) -> None:
        self.j, self.g, self.z, self.disc, self.r, self.const = j_pool, g, z, discrepancy, r, const
        js = j_pool[done]
        k_done = discrepancy.rows(z[done], z)  # tau^2 K_S. [|S|, n]: rows only, never n x n
        self.cov = np.linalg.pinv(js.T @ js + ridge * np.eye(j_pool.shape[1]), hermitian=True)  # M_S^-1
        self.phi = js.T @ k_done[:, done] @ js  # J_S^T tau^2 K_SS J_S [p, p]
        self.v = js.T @ k_done  # J_S^T tau^2 K_S. [p, n]
        self.psi = js.T @ r[done]  # J_S^T R_S [p, T]

    def mse(self) -> np.ndarray:
        u = self.cov @ self.g.T  # [p, T]
        return (
            np.einsum("pt,pq,qt->t", u, self.phi, u)
            - 2 * np.einsum("pt,pt->t", u, self.psi)
            + self.const
            + self.disc.noise * np.einsum("tp,pt->t", self.g, u)
        )

    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """MSE [n, T] after adding each candidate, and the rank-one pieces (h [n, p], beta [n, T])."""
        j = self.j
        u = self.cov @ self.g.T  # [p, T]
        h = j @ self.cov  # rows: M^-1 j_c
        d = 1.0 + np.einsum("np,np->n", h, j)
        beta = (j @ u) / d[:, None]
        phi_u = self.phi @ u
        u_phi_u = np.einsum("pt,pt->t", u, phi_u)
        h_phi_h = np.einsum("np,pq,nq->n", h, self.phi, h)
        new_phi = u_phi_u[None, :] - 2 * beta * (h @ phi_u) + beta**2 * h_phi_h[:, None]
        u_v = self.v.T @ u - beta * np.einsum("np,pn->n", h, self.v)[:, None]
        new_phi = new_phi + 2 * beta * u_v + self.disc.scale * beta**2  # k(x, x) = 1
        u_psi = np.einsum("pt,pt->t", u, self.psi)[None, :] - beta * (h @ self.psi) + beta * self.r
        g_u = np.einsum("tp,pt->t", self.g, u)[None, :] - beta * (h @ self.g.T)
        return new_phi - 2 * u_psi + self.const[None, :] + self.disc.noise * g_u, h, beta

    def add(self, c: int, h_c: np.ndarray) -> None:
        j_c = self.j[c]
        v_c = self.v[:, c].copy()
        self.cov = self.cov - np.outer(h_c, h_c) / (1.0 + h_c @ j_c)
        self.phi = self.phi + np.outer(j_c, v_c) + np.outer(v_c, j_c) + self.disc.scale * np.outer(j_c, j_c)
        self.v = self.v + np.outer(j_c, self.disc.rows(self.z[c : c + 1], self.z)[0])
        self.psi = self.psi + np.outer(j_c, self.r[c])


def reference_terms(
    j_pool: np.ndarray, g: np.ndarray, z: np.ndarray, discrepancy: Discrepancy, *, ridge: float, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """R = tau^2 K b [n, T] and tau^2 b^T K b [T] of the whole pool's fit (b = J_P M_P^-1 g),
    ``chunk`` kernel rows at a time (memory O(chunk n), not O(n^2))."""
    p = j_pool.shape[1]
    b = j_pool @ np.linalg.pinv(j_pool.T @ j_pool + ridge * np.eye(p), hermitian=True) @ g.T  # [n, T]
    r = np.vstack([discrepancy.rows(z[i : i + chunk], z) @ b for i in range(0, len(z), chunk)])
    return r, np.einsum("nt,nt->t", b, r)


def bias_aware_plan(
    j_pool: np.ndarray,
    cost: np.ndarray,
    done: np.ndarray,
    g: np.ndarray,
    z: np.ndarray,
    discrepancy: Discrepancy,
    *,
    budget_left: float,
    allowed: np.ndarray | None = None,
    exponents: Sequence[float] = PLAN_EXPONENTS,
    k: int | None = None,
    ridge: float = 1e-6,
) -> BiasAwarePlan | None:
    """Plan picks that minimise the summed relative MSE of the targets (see the module docstring).

    ``j_pool`` [n, P] Jacobians of every candidate, ``cost`` [n], ``done`` indices of runs
    finished or in flight, ``g`` [T, P] target gradients, ``z`` [n, d] the pool's standardised
    coordinates. For each cost exponent the remaining budget is filled greedily by MSE reduction
    per cost^exponent (``k`` picks at most); the plan that ends with the lowest summed MSE, each
    target relative to its current MSE, is returned (None when nothing is affordable). A pick
    that would raise the MSE (adding a run where the law misfits can pull the fit away from the
    grid's) is scored as its increase times cost^exponent, so the least harmful comes first.
    """
    n = len(cost)
    r, const = reference_terms(j_pool, g, z, discrepancy, ridge=ridge)
    done = np.asarray(done, dtype=int)
    state = (j_pool, done, g, z, discrepancy, r, const)
    mse0 = np.maximum(_Design(*state, ridge=ridge).mse(), 1e-300)
    best: BiasAwarePlan | None = None
    for gamma in exponents:
        design = _Design(*state, ridge=ridge)
        mask = np.ones(n, dtype=bool) if allowed is None else allowed.copy()
        mask[done] = False
        left = float(budget_left)
        weight = np.power(cost, gamma)
        current = float((design.mse() / mse0).sum())
        picks: list[int] = []
        gains: list[float] = []
        for _ in range(n if k is None else k):
            mask &= cost <= left
            if not mask.any():
                break
            after, h, _ = design.candidates()
            gain = current - (after / mse0[None, :]).sum(1)
            score = np.where(gain > 0, gain / weight, gain * weight)
            i = int(np.argmax(np.where(mask, score, -np.inf)))
            picks.append(i)
            gains.append(float(gain[i]))
            design.add(i, h[i])
            current -= float(gain[i])
            mask[i] = False
            left -= float(cost[i])
        if not picks:
            continue
        rel = design.mse() / mse0
        if best is None or rel.sum() < best.relative_mse.sum():
            best = BiasAwarePlan(picks=picks, gains=gains, exponent=float(gamma), relative_mse=rel)
    return best


def design_mse(
    j_pool: np.ndarray, design: np.ndarray, g: np.ndarray, z: np.ndarray, discrepancy: Discrepancy, *, ridge: float = 1e-6
) -> np.ndarray:
    """MSE [T] of the targets for the fit on the runs ``design`` (indices), computed directly
    from the formula in the module docstring (the reference for the incremental updates)."""
    p = j_pool.shape[1]
    kern = discrepancy.rows(z, z)
    r, const = reference_terms(j_pool, g, z, discrepancy, ridge=ridge)
    js = j_pool[design]
    u = np.linalg.pinv(js.T @ js + ridge * np.eye(p), hermitian=True) @ g.T  # [P, T]
    a = js @ u  # [|S|, T]
    return (
        np.einsum("st,su,ut->t", a, kern[np.ix_(design, design)], a)
        - 2 * np.einsum("st,st->t", a, r[design])
        + const
        + discrepancy.noise * np.einsum("tp,pt->t", g, u)
    )
