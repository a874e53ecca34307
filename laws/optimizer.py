"""Batched damped-Newton minimisation: every start of a multi-start grid in one tensor batch.

Each start b keeps its own iterate, objective, exact gradient and exact Hessian (see
:mod:`laws.objective`) and its own Levenberg-Marquardt damping lambda. Where H is positive
definite the step is the damped Newton step -(H + lambda I)^-1 g (a Cholesky solve); elsewhere
(far from the optimum, on the flat Huber tails) it is the "saddle-free" step
-V diag(1/(|w| + lambda)) V^T g from the eigendecomposition H = V diag(w) V^T, a descent direction
even where H is indefinite (Dauphin et al. 2014). Both are the same step where H is positive
definite; the Cholesky path is only much cheaper. A step is kept only if it lowers that start's
objective; otherwise lambda grows and the step is retried from the same factorisation, so a
rejected step costs one objective evaluation. Converged starts leave the batch, so late
iterations only pay for the stragglers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

#: batched objective: (fit vectors [B, P], their row indices in the start batch [B]) -> values [B]
ValueFn = Callable[[Tensor, Tensor], Tensor]
#: batched exact derivatives: (theta [B, P], rows [B]) -> (values [B], gradients [B, P],
#: Hessians [B, P, P]); ``rows`` lets per-start data (bootstrap weights) follow the start
JetFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


@dataclass(frozen=True, kw_only=True)
class NewtonOptions:
    """Stopping rules of :func:`minimise_batched`.

    A start has converged when its gradient's max-norm is below ``gtol``, or when a kept step
    lowers the objective by less than ``ftol`` times its value (relative) for ``patience``
    consecutive iterations, or when damping exceeds ``max_damping`` (no descent left at machine
    precision). ``max_iter`` bounds the Newton iterations.
    """

    max_iter: int = 200
    gtol: float = 1e-10
    ftol: float = 1e-15
    patience: int = 3
    #: initial damping, relative to each start's largest Hessian diagonal (Nielsen 1999)
    init_damping: float = 1e-3
    #: bounds of the damping update: at most this shrink after a good step, this growth after a
    #: rejected one (Nielsen 1999)
    shrink: float = 1.0 / 3.0
    grow: float = 4.0
    max_damping: float = 1e12
    eig_floor: float = 1e-12


class Cancelled(RuntimeError):
    """A minimisation stopped by its ``cancel`` callback (its caller no longer needs it)."""


@dataclass(frozen=True)
class BatchResult:
    """Per-start outcome: final iterates [S, P], objectives [S], gradient max-norms [S],
    converged flags [S] and the number of Newton iterations run."""

    theta: Tensor
    objective: Tensor
    grad_norm: Tensor
    converged: Tensor
    iterations: int


def minimise_batched(
    jet: JetFn,
    value: ValueFn,
    theta0: Tensor,
    *,
    options: NewtonOptions = NewtonOptions(),
    cancel: Callable[[], bool] | None = None,
) -> BatchResult:
    """Minimise from every row of ``theta0`` [S, P] at once; returns per-start results.
    ``cancel``: asked before every iteration; when it says True, :class:`Cancelled` is raised."""
    opts = options
    theta = theta0.clone().to(torch.float64)
    s, p = theta.shape
    with torch.no_grad():
        fval, grad, hess = jet(theta, torch.arange(s))
    hess = _symmetrise(hess)
    # initial damping relative to each start's curvature scale (Nielsen 1999: tau * max diag H)
    scale0 = hess.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1e-12)
    damping = opts.init_damping * scale0
    small_steps = torch.zeros(s, dtype=torch.long)
    bad = ~torch.isfinite(fval) | ~torch.isfinite(grad).all(-1) | ~torch.isfinite(hess).flatten(1).all(-1)
    converged = torch.zeros(s, dtype=torch.bool)
    done = bad.clone()
    eye = torch.eye(p, dtype=theta.dtype)

    # Per start: is the current Hessian positive definite (then the step is a Cholesky solve of
    # H + lambda I), else its eigendecomposition (saddle-free step). Refreshed only when it moves.
    pd = torch.zeros(s, dtype=torch.bool)
    w = torch.zeros(s, p, dtype=theta.dtype)
    v = eye.expand(s, p, p).clone()
    fresh = ~done
    iterations = 0
    for iterations in range(1, opts.max_iter + 1):  # noqa: B007 - reported
        if cancel is not None and cancel():
            raise Cancelled(f"minimisation cancelled after {iterations - 1} iterations")
        active = (~done).nonzero().squeeze(-1)
        if active.numel() == 0:
            break
        idx_fresh = active[fresh[active]]
        if idx_fresh.numel():
            info = torch.linalg.cholesky_ex(hess[idx_fresh])[1]
            pd[idx_fresh] = info == 0
            _eig_into(idx_fresh[info != 0], hess, w, v)
            fresh[idx_fresh] = False
        ga, ha, lam = grad[active], hess[active], damping[active]
        step = _damped_steps(ga, ha, lam, pd[active], w[active], v[active], eye, opts.eig_floor)
        trial = theta[active] + step
        with torch.no_grad():
            f_trial = value(trial, active)
        # the quadratic model's change along the step, with the true Hessian
        predicted = (ga * step).sum(-1) + 0.5 * torch.einsum("bp,bpq,bq->b", step, ha, step)
        f_old = fval[active]
        ok = torch.isfinite(f_trial) & (f_trial < f_old)
        ratio = (f_trial - f_old) / predicted.clamp_max(-1e-300)
        # Levenberg-Marquardt damping update (Nielsen 1999): shrink on good steps, grow otherwise
        damping[active] = torch.where(
            ok,
            lam * torch.clamp(1.0 - (2.0 * ratio - 1.0) ** 3, min=opts.shrink, max=2.0),
            lam * opts.grow,
        )
        acc = active[ok]
        if acc.numel():
            decrease = f_old[ok] - f_trial[ok]
            tiny = decrease <= opts.ftol * f_trial[ok].abs().clamp_min(1e-300)
            small_steps[acc] = torch.where(tiny, small_steps[acc] + 1, torch.zeros_like(small_steps[acc]))
            theta[acc] = trial[ok]
            with torch.no_grad():
                fv, gv, hv = jet(theta[acc], acc)
            fval[acc], grad[acc], hess[acc] = fv, gv, _symmetrise(hv)
            fresh[acc] = True
        gnorm = grad[active].abs().amax(-1)
        conv = (gnorm < opts.gtol) | (small_steps[active] >= opts.patience)
        stalled = damping[active] > opts.max_damping
        converged[active] = conv | stalled & (gnorm < 1e3 * opts.gtol)
        done[active] = conv | stalled
    return BatchResult(
        theta=theta,
        objective=torch.where(bad, torch.full_like(fval, float("inf")), fval),
        grad_norm=grad.abs().amax(-1),
        converged=converged & ~bad,
        iterations=iterations,
    )


def _damped_steps(
    g: Tensor, h: Tensor, lam: Tensor, pd: Tensor, w: Tensor, v: Tensor, eye: Tensor, eig_floor: float
) -> Tensor:
    """Damped Newton steps [B, P]: -(H + lam I)^-1 g where H is positive definite (Cholesky),
    the saddle-free -V diag(1/(|w| + lam)) V^T g elsewhere (eigenpairs ``w``, ``v``)."""
    step = torch.empty_like(g)
    if bool(pd.any()):
        chol, info = torch.linalg.cholesky_ex(h[pd] + lam[pd, None, None] * eye)
        step[pd] = -torch.cholesky_solve(g[pd, :, None], chol)[..., 0]
        if bool((info != 0).any()):  # not positive definite after all (rounding): saddle-free
            rows = pd.nonzero().squeeze(-1)[info != 0]
            pd = pd.clone()
            pd[rows] = False
            w, v = w.clone(), v.clone()
            w[rows], v[rows] = torch.linalg.eigh(h[rows])
    if not bool(pd.all()):
        wa, va = w[~pd], v[~pd]
        scale = 1.0 / (wa.abs().clamp_min(eig_floor) + lam[~pd, None])
        vg = torch.einsum("bpq,bp->bq", va, g[~pd])
        step[~pd] = -torch.einsum("bpq,bq->bp", va, scale * vg)
    return step


def _symmetrise(h: Tensor) -> Tensor:
    h = 0.5 * (h + h.transpose(-1, -2))
    return torch.where(torch.isfinite(h), h, torch.zeros_like(h))


def _eig_into(rows: Tensor, hess: Tensor, w: Tensor, v: Tensor) -> None:
    """Eigendecompose the Hessians of ``rows`` into the caches ``w``, ``v``."""
    if rows.numel():
        w[rows], v[rows] = torch.linalg.eigh(hess[rows])


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the enclosed block with ``n`` torch intra-op threads (unchanged when None), then
    restore the previous setting.

    The batched fit is a long chain of small tensor operations: threading them gains little and,
    on a machine whose cores are busy with other work, makes each operation wait for a
    descheduled thread (measured 10x slower with 2 threads than with 1 on a loaded 2-core machine).
    """
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
