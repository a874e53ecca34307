"""Batched damped-Newton minimisation: every start of a multi-start grid in one tensor batch.

Each start b keeps its own iterate, objective, exact gradient and exact Hessian (``torch.func``:
forward-over-reverse, vmapped over starts; P is small), and its own Levenberg-Marquardt damping.
A step is the damped "saddle-free" Newton step  -V diag(1/(|w| + lambda)) V^T g  from the
eigendecomposition H = V diag(w) V^T, which is a descent direction even where H is indefinite
(far from the optimum, on the flat Huber tails). A step is kept only if it lowers that start's
objective; otherwise lambda grows and the step is retried from the same eigendecomposition, so a
rejected step costs one objective evaluation. Converged starts leave the batch, so late
iterations only pay for the stragglers.
"""

from __future__ import annotations

from collections.abc import Callable
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
    init_damping: float = 1e-3
    max_damping: float = 1e12
    eig_floor: float = 1e-12


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
) -> BatchResult:
    """Minimise from every row of ``theta0`` [S, P] at once; returns per-start results."""
    opts = options
    derivs = jet

    theta = theta0.clone().to(torch.float64)
    s, p = theta.shape
    with torch.no_grad():
        fval, grad, hess = derivs(theta, torch.arange(s))
    damping = torch.full((s,), opts.init_damping, dtype=theta.dtype)
    small_steps = torch.zeros(s, dtype=torch.long)
    bad = ~torch.isfinite(fval) | ~torch.isfinite(grad).all(-1) | ~torch.isfinite(hess).flatten(1).all(-1)
    converged = torch.zeros(s, dtype=torch.bool)
    done = bad.clone()
    eye = torch.eye(p, dtype=theta.dtype)

    # eigendecomposition of the current Hessian, refreshed only when a start moves
    w = torch.zeros(s, p, dtype=theta.dtype)
    v = eye.expand(s, p, p).clone()
    fresh = ~done
    iterations = 0
    for iterations in range(1, opts.max_iter + 1):  # noqa: B007 - reported
        active = (~done).nonzero().squeeze(-1)
        if active.numel() == 0:
            break
        idx_fresh = active[fresh[active]]
        if idx_fresh.numel():
            hs = hess[idx_fresh]
            hs = 0.5 * (hs + hs.transpose(-1, -2))
            hs = torch.where(torch.isfinite(hs), hs, torch.zeros_like(hs))
            w[idx_fresh], v[idx_fresh] = torch.linalg.eigh(hs)
            fresh[idx_fresh] = False
        wa, va, ga, lam = w[active], v[active], grad[active], damping[active]
        scale = 1.0 / (wa.abs().clamp_min(opts.eig_floor) + lam[:, None])
        vg = torch.einsum("bpq,bp->bq", va, ga)
        step = -torch.einsum("bpq,bq->bp", va, scale * vg)
        predicted = -(vg * vg * scale).sum(-1) + 0.5 * (wa * (scale * vg) ** 2).sum(-1)
        trial = theta[active] + step
        with torch.no_grad():
            f_trial = value(trial, active)
        f_old = fval[active]
        ok = torch.isfinite(f_trial) & (f_trial < f_old)
        ratio = (f_trial - f_old) / predicted.clamp_max(-1e-300)
        # Levenberg-Marquardt damping update (Nielsen 1999): shrink on good steps, grow otherwise
        lam_new = torch.where(
            ok,
            lam * torch.clamp(1.0 - (2.0 * ratio - 1.0) ** 3, min=1.0 / 3.0, max=2.0),
            lam * 4.0,
        )
        damping[active] = lam_new
        acc = active[ok]
        if acc.numel():
            decrease = f_old[ok] - f_trial[ok]
            tiny = decrease <= opts.ftol * f_trial[ok].abs().clamp_min(1e-300)
            small_steps[acc] = torch.where(tiny, small_steps[acc] + 1, torch.zeros_like(small_steps[acc]))
            theta[acc] = trial[ok]
            with torch.no_grad():
                fv, gv, hv = derivs(theta[acc], acc)
            fval[acc], grad[acc], hess[acc] = fv, gv, hv
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
