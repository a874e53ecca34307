"""Uncertainty of the recipes' optima: optimal sparsity (Abnar et al. 2025) and optimal mixture
weights (Shukor et al. 2025), parametric and bootstrap.

Parametric (delta method): the optimum z*(theta) of the recipe is a function of the fit vector,
differentiated by the implicit function theorem at the optimum: grad_z F(z*, theta) = 0 gives

    dz*/dtheta = -[d2F/dz2]^-1 d2F/dz dtheta

over the free coordinates (an input at a bound of its range keeps zero derivative), and the
optimal loss by the envelope theorem, dF*/dtheta = dF/dtheta at z*. Then Var = J Cov J^T with the
fit's sandwich covariance (:mod:`laws.uncertainty`). For several mixture laws the covariance is
block diagonal by default (each law's own): the laws are fitted to the same runs, so their errors
are correlated, which only the joint bootstrap sees.

Bootstrap: the recipe recomputed under every converged resample (:mod:`laws.bootstrap`); for
mixtures over the per-domain laws of one :func:`laws.bootstrap.joint_bootstrap`, resample r of
every law drawing the same configurations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from laws.bootstrap import BootstrapResult, convergence_warnings, enough_converged
from laws.optimal import MixtureOptimum, SparsityOptimum, optimal_mixture, optimal_sparsity
from laws.result import LawFit

Interval = tuple[float, float]
#: a coordinate closer than this to a bound of its range is treated as fixed at the bound
BOUND_TOL = 1e-6


@dataclass(frozen=True, kw_only=True)
class SparsityOptimumIntervals:
    """The optimal (N, S, D) at budget C and its loss, with intervals at ``level`` (None where
    unavailable); ``method`` says how they were obtained."""

    optimum: SparsityOptimum
    N: Interval | None
    S: Interval | None
    D: Interval | None
    loss: Interval | None
    level: float
    method: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class MixtureOptimumIntervals:
    """The optimal mixture weights h* at (N, D) and the weighted loss there, with per-domain
    intervals on h* at ``level`` (None where unavailable)."""

    optimum: MixtureOptimum
    weights: tuple[Interval, ...] | None
    loss: Interval | None
    level: float
    method: str
    warnings: tuple[str, ...] = ()


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(stats.norm.ppf(0.5 + level / 2))


def _implicit_jacobian(hess: torch.Tensor, n_z: int, free: Sequence[bool]) -> torch.Tensor:
    """dz*/dtheta [n_z, P] from the joint Hessian of F over (z, theta) at the optimum."""
    h_zz, h_zt = hess[:n_z, :n_z], hess[:n_z, n_z:]
    idx = [i for i in range(n_z) if free[i]]
    out = torch.zeros(n_z, hess.shape[0] - n_z, dtype=hess.dtype)
    if idx:
        sel = torch.tensor(idx)
        out[sel] = -torch.linalg.solve(h_zz[sel][:, sel], h_zt[sel])
    return out


# -- optimal sparsity -------------------------------------------------------------------------------
def sparsity_optimum_jacobian(fit_: LawFit, optimum: SparsityOptimum, *, max_sparsity: float = 0.98) -> np.ndarray:
    """d(log N*, S*, log D*, log L*)/d theta at ``optimum`` of :func:`laws.optimal.optimal_sparsity`,
    [4, P] (fit parameterisation). D* = C / (6 N* (1 - S*))."""
    law = fit_.get_law()
    theta = law.from_natural(fit_.params)
    log_c6 = float(np.log(optimum.C / 6.0))

    def log_loss(v: torch.Tensor) -> torch.Tensor:
        log_n, s, t = v[0:1], v[1:2], v[2:]
        x = {"N": torch.exp(log_n), "D": torch.exp(log_c6 - log_n - torch.log1p(-s)), "S": s}
        return law.log_predict(t[None], x)[0, 0]

    v0 = torch.cat([torch.tensor([np.log(optimum.N), optimum.S], dtype=torch.float64), theta])
    hess = torch.autograd.functional.hessian(log_loss, v0)
    grad = torch.autograd.functional.jacobian(log_loss, v0)
    free = [True, BOUND_TOL < optimum.S < max_sparsity - BOUND_TOL]
    dz = _implicit_jacobian(hess, 2, free)
    d_log_n, d_s = dz[0], dz[1]
    d_log_d = -d_log_n + d_s / (1.0 - optimum.S)
    d_log_loss = grad[2:]  # envelope theorem
    return torch.stack([d_log_n, d_s, d_log_d, d_log_loss]).numpy()


def optimal_sparsity_intervals(
    fit_: LawFit, budget: float, *, level: float = 0.95, max_sparsity: float = 0.98
) -> SparsityOptimumIntervals:
    """Delta-method intervals of the optimal (N, S, D) and loss at ``budget`` (normal in log N,
    log D and log loss; normal in S, clipped to [0, max_sparsity]). Intervals are None when the
    fit has no covariance."""
    z = _z(level)
    opt = optimal_sparsity(fit_, budget, max_sparsity=max_sparsity)
    cov = fit_.covariance_matrix
    method = "delta method through the optimum (implicit function theorem), sandwich covariance"
    if cov is None:
        return SparsityOptimumIntervals(optimum=opt, N=None, S=None, D=None, loss=None, level=level, method=method,
                                        warnings=("the fit has no parametric covariance: no intervals",))
    jac = sparsity_optimum_jacobian(fit_, opt, max_sparsity=max_sparsity)
    sd = np.sqrt(np.clip(np.einsum("ip,pq,iq->i", jac, cov, jac), 0.0, None))
    lo_s, hi_s = max(opt.S - z * sd[1], 0.0), min(opt.S + z * sd[1], max_sparsity)
    return SparsityOptimumIntervals(
        optimum=opt,
        N=(opt.N * float(np.exp(-z * sd[0])), opt.N * float(np.exp(z * sd[0]))),
        S=(float(lo_s), float(hi_s)),
        D=(opt.D * float(np.exp(-z * sd[2])), opt.D * float(np.exp(z * sd[2]))),
        loss=(opt.loss * float(np.exp(-z * sd[3])), opt.loss * float(np.exp(z * sd[3]))),
        level=level,
        method=method,
    )


def bootstrap_optimal_sparsity(
    boot: BootstrapResult, fit_: LawFit, budget: float, *, level: float = 0.95, max_sparsity: float = 0.98
) -> SparsityOptimumIntervals:
    """Percentile intervals of the optimal (N, S, D) and loss at ``budget`` over the converged
    resamples of ``boot`` (a bootstrap of ``fit_``); None when too few converged."""
    _z(level)
    opt = optimal_sparsity(fit_, budget, max_sparsity=max_sparsity)
    method = "percentile bootstrap over configurations (converged resamples only)"
    if not boot.has_intervals:
        return SparsityOptimumIntervals(optimum=opt, N=None, S=None, D=None, loss=None, level=level, method=method,
                                        warnings=boot.warnings)
    rows = [optimal_sparsity(f, budget, max_sparsity=max_sparsity) for f in boot.fits()]
    q = [(1 - level) / 2, (1 + level) / 2]

    def iv(values: list[float]) -> Interval:
        lo, hi = np.nanquantile(np.asarray(values, dtype=np.float64), q)
        return float(lo), float(hi)

    return SparsityOptimumIntervals(
        optimum=opt,
        N=iv([r.N for r in rows]),
        S=iv([r.S for r in rows]),
        D=iv([r.D for r in rows]),
        loss=iv([r.loss for r in rows]),
        level=level,
        method=method,
        warnings=boot.warnings,
    )


# -- optimal mixture --------------------------------------------------------------------------------
def mixture_optimum_jacobian(
    fits: Sequence[LawFit], optimum: MixtureOptimum, *, N: float, D: float, target_weights: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """d h*/d theta [k, P_total] and d log L*/d theta [P_total] at ``optimum`` of
    :func:`laws.optimal.optimal_mixture`, theta the fits' fit vectors concatenated in order.

    The simplex is parameterised by the free weights, the largest weight being 1 minus the others;
    weights within ``BOUND_TOL`` of 0 stay fixed at 0.
    """
    law_list = [f.get_law() for f in fits]
    w = np.full(len(fits), 1.0 / len(fits)) if target_weights is None else np.asarray(target_weights, float)
    thetas = [law.from_natural(f.params) for law, f in zip(law_list, fits, strict=True)]
    sizes = [t.shape[0] for t in thetas]
    h0 = np.asarray(optimum.weights, dtype=np.float64)
    k = h0.size
    dep = int(np.argmax(h0))
    others = [i for i in range(k) if i != dep]
    const = {"N": torch.tensor([float(N)], dtype=torch.float64), "D": torch.tensor([float(D)], dtype=torch.float64)}

    def loss(v: torch.Tensor) -> torch.Tensor:
        u, t_all = v[: k - 1], v[k - 1 :]
        h = [None] * k
        for j, i in enumerate(others):
            h[i] = u[j : j + 1]
        h[dep] = 1.0 - u.sum().reshape(1)
        x = {**const, **{f"h{i + 1}": h[i] for i in range(k)}}
        total = torch.zeros((), dtype=torch.float64)
        for wj, law, t in zip(w, law_list, torch.split(t_all, sizes), strict=True):
            total = total + float(wj) * torch.exp(law.log_predict(t[None], x))[0, 0]
        return torch.log(total)

    v0 = torch.cat([torch.tensor(h0[others], dtype=torch.float64), *thetas])
    hess = torch.autograd.functional.hessian(loss, v0)
    grad = torch.autograd.functional.jacobian(loss, v0)
    free = [bool(h0[i] > BOUND_TOL) for i in others]
    du = _implicit_jacobian(hess, k - 1, free)
    dh = torch.zeros(k, du.shape[1], dtype=torch.float64)
    for j, i in enumerate(others):
        dh[i] = du[j]
    dh[dep] = -du.sum(0)
    return dh.numpy(), grad[k - 1 :].numpy()


def optimal_mixture_intervals(
    fits: Sequence[LawFit],
    *,
    N: float,
    D: float,
    target_weights: Sequence[float] | None = None,
    level: float = 0.95,
    covariance: np.ndarray | None = None,
) -> MixtureOptimumIntervals:
    """Delta-method intervals of the optimal mixture weights at (N, D) (normal in h, clipped to
    [0, 1]) and of the weighted loss there (normal in its log).

    ``covariance``: the joint covariance of the concatenated fit vectors; default block diagonal
    from each fit's own (cross-law correlation ignored, see the module docstring). Intervals are
    None when a fit has no covariance.
    """
    z = _z(level)
    opt = optimal_mixture(fits, N=N, D=D, target_weights=target_weights)
    method = "delta method through the optimum (implicit function theorem), sandwich covariance"
    if covariance is None:
        blocks = [f.covariance_matrix for f in fits]
        if any(b is None for b in blocks):
            missing = [f.law for f, b in zip(fits, blocks, strict=True) if b is None]
            return MixtureOptimumIntervals(optimum=opt, weights=None, loss=None, level=level, method=method,
                                           warnings=(f"fits {missing} have no parametric covariance: no intervals",))
        from scipy.linalg import block_diag

        covariance = block_diag(*blocks)
        method += " per law (block diagonal: the laws' correlation is not included)"
    dh, dl = mixture_optimum_jacobian(fits, opt, N=N, D=D, target_weights=target_weights)
    cov = np.asarray(covariance, dtype=np.float64)
    if cov.shape != (dh.shape[1], dh.shape[1]):
        raise ValueError(f"covariance must be [{dh.shape[1]}, {dh.shape[1]}] (all fit vectors), got {cov.shape}")
    sd_h = np.sqrt(np.clip(np.einsum("ip,pq,iq->i", dh, cov, dh), 0.0, None))
    sd_l = float(np.sqrt(max(dl @ cov @ dl, 0.0)))
    weights = tuple(
        (float(max(h - z * s, 0.0)), float(min(h + z * s, 1.0))) for h, s in zip(opt.weights, sd_h, strict=True)
    )
    return MixtureOptimumIntervals(
        optimum=opt,
        weights=weights,
        loss=(opt.loss * float(np.exp(-z * sd_l)), opt.loss * float(np.exp(z * sd_l))),
        level=level,
        method=method,
    )


def bootstrap_optimal_mixture(
    boots: Sequence[BootstrapResult],
    fits: Sequence[LawFit],
    *,
    N: float,
    D: float,
    target_weights: Sequence[float] | None = None,
    level: float = 0.95,
) -> MixtureOptimumIntervals:
    """Percentile intervals of the optimal mixture weights at (N, D) over a joint bootstrap of
    the per-domain laws (:func:`laws.bootstrap.joint_bootstrap`, one result per fit, in order).

    Resample r counts only when every law's refit of it converged; None when too few did.
    Raises ValueError when the results are not one joint bootstrap (different resamples).
    """
    _z(level)
    if len(boots) != len(fits):
        raise ValueError(f"bootstrap_optimal_mixture: {len(boots)} bootstrap results for {len(fits)} fits")
    digests = {b.resample_digest for b in boots}
    if len(digests) != 1 or "" in digests:
        raise ValueError("bootstrap_optimal_mixture needs one joint bootstrap of all the laws (the same resampled "
                         "runs for every law): use laws.bootstrap.joint_bootstrap")
    opt = optimal_mixture(fits, N=N, D=D, target_weights=target_weights)
    method = "percentile bootstrap over configurations, joint across the laws (resamples converged for every law)"
    ok = np.logical_and.reduce([np.asarray(b.converged, dtype=bool) for b in boots])
    r = boots[0].n_resamples
    warns = convergence_warnings(int(ok.sum()), r, boots[0].min_converged, what="joint resamples (all laws)")
    if not enough_converged(int(ok.sum()), r, boots[0].min_converged):
        return MixtureOptimumIntervals(optimum=opt, weights=None, loss=None, level=level, method=method, warnings=warns)
    law_list = [f.get_law() for f in fits]
    samples_h, samples_l = [], []
    for i in np.flatnonzero(ok):
        fits_i = [
            LawFit(law=law.name, params=law.to_natural(b.theta[i]), objective=float(b.objective[i]), report=f.report,
                   law_spec=f.law_spec)
            for law, b, f in zip(law_list, boots, fits, strict=True)
        ]
        o = optimal_mixture(fits_i, N=N, D=D, target_weights=target_weights, init=opt.weights)
        samples_h.append(o.weights)
        samples_l.append(o.loss)
    q = [(1 - level) / 2, (1 + level) / 2]
    h_lo, h_hi = np.nanquantile(np.asarray(samples_h), q, axis=0)
    l_lo, l_hi = np.nanquantile(np.asarray(samples_l), q)
    return MixtureOptimumIntervals(
        optimum=opt,
        weights=tuple((float(a), float(b)) for a, b in zip(h_lo, h_hi, strict=True)),
        loss=(float(l_lo), float(l_hi)),
        level=level,
        method=method,
        warnings=warns,
    )
