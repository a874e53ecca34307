"""The fitting objective: SUM over points of Huber(residual), with exact derivatives, batched.

Hoffmann et al. 2022 (App. D.2) and Besiroglu et al. 2024: residual r_i = log L_hat_i - log L_i,
objective sum_i Huber_delta(r_i). The sum (not the mean) matters: with delta = 1e-3 a mean makes
quasi-Newton methods stop early (Besiroglu et al. 2024, Sec. 3). Mixture laws use raw residuals
r_i = L_hat_i - L_i (Shukor et al. 2025).

Derivatives, for x_i = log L_hat_i and r_i = phi(x_i):
    g = sum_i q_i J_i,   H = sum_i kappa_i J_i J_i^T + sum_i q_i Hess(x_i)
with q = rho'(r) phi'(x) and kappa = rho''(r) phi'(x)^2 + rho'(r) phi''(x). Laws of the form
x_i = LSE_t(c_it + Z_it . theta) (:class:`laws.base.LinearLSELaw`) get J and the weighted
Hessian in closed form:  J_i = sum_t s_it Z_it,  Hess(x_i) = sum_t s_it Z_it Z_it^T - J_i J_i^T,
s the softmax of the terms. Other laws use ``torch.func`` (forward-over-reverse).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from laws.base import DTYPE, FitRecipe, LinearLSELaw, ScalingLaw


def huber(r: Tensor, delta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Huber value, first and second derivative: r^2/2 for |r| <= delta, else
    delta (|r| - delta/2)."""
    a = r.abs()
    inside = a <= delta
    value = torch.where(inside, 0.5 * r * r, delta * (a - 0.5 * delta))
    return value, r.clamp(-delta, delta), inside.to(r.dtype)


class Objective:
    """The summed-Huber objective of one law on one data set, for a batch of fit vectors."""

    def __init__(
        self,
        law: ScalingLaw,
        x: Mapping[str, Tensor],
        loss: Tensor,
        *,
        recipe: FitRecipe | None = None,
        weights: Tensor | None = None,
    ) -> None:
        self.law = law
        self.x = dict(x)
        self.loss = loss.to(DTYPE)
        self.log_loss = torch.log(self.loss)
        self.recipe = recipe or law.recipe
        self.delta = float(self.recipe.delta)
        self.raw = self.recipe.residual == "raw"
        # per-point multiplicity (bootstrap resamples as counts), [n] or [B, n]
        self.weights = weights
        self._design: tuple[Tensor, Tensor, Tensor] | None = None
        if isinstance(law, LinearLSELaw):
            z, c = law.design(self.x)
            n, t, p = z.shape
            zz = (z[..., :, None] * z[..., None, :]).reshape(n * t, p * p)
            self._design = (z, c, zz)

    # -- residuals --------------------------------------------------------------------------
    def _phi(self, lp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Residual and its first/second derivative with respect to the log-prediction."""
        if self.raw:
            pred = torch.exp(lp)
            return pred - self.loss, pred, pred
        return lp - self.log_loss, torch.ones_like(lp), torch.zeros_like(lp)

    def _weighted(self, t: Tensor, rows: Tensor | None) -> Tensor:
        w = self.weights
        if w is None:
            return t
        if w.ndim == 2 and rows is not None:
            w = w[rows]
        return t * w

    def value(self, theta_bp: Tensor, rows: Tensor | None = None) -> Tensor:
        """Objective for each of B fit vectors, [B]; ``rows`` select per-start weights."""
        with torch.no_grad():
            if self._design is not None:
                lp = self._lse(theta_bp)[1]
            else:
                lp = self.law.log_predict(theta_bp, self.x)
            r, _, _ = self._phi(lp)
            rho, _, _ = huber(r, self.delta)
            out = self._weighted(rho, rows).sum(-1)
        return torch.where(torch.isfinite(out), out, torch.full_like(out, float("inf")))

    def residuals(self, theta_bp: Tensor) -> Tensor:
        """Residuals r [B, n] on the recipe's scale."""
        with torch.no_grad():
            return self._phi(self.law.log_predict(theta_bp, self.x))[0]

    def scalar(self, theta_p: Tensor) -> Tensor:
        """Objective of one fit vector [P] (torch.func-transformable)."""
        lp = self.law.log_predict(theta_p[None], self.x)[0]
        r = torch.exp(lp) - self.loss if self.raw else lp - self.log_loss
        rho, _, _ = huber(r, self.delta)
        w = self.weights
        if w is not None and w.ndim == 1:
            rho = rho * w
        return rho.sum()

    # -- derivatives ----------------------------------------------------------------------------
    def jet(self, theta_bp: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(value [B], exact gradient [B, P], exact Hessian [B, P, P]); ``rows`` select
        per-start weights."""
        with torch.no_grad():
            if self._design is not None:
                return self._jet_lse(theta_bp, rows)
            return self._jet_generic(theta_bp, rows)

    def _lse(self, theta_bp: Tensor) -> tuple[Tensor, Tensor]:
        """Terms' softmax weights s [B, n, T] and log-prediction [B, n] of an LSE-linear law."""
        z, c, _ = self._design  # type: ignore[misc]
        n, t, p = z.shape
        u = torch.addmm(c.reshape(1, n * t), theta_bp, z.reshape(n * t, p).T).view(-1, n, t)
        m = u.amax(-1, keepdim=True)
        e = torch.exp(u.sub_(m))
        total = e.sum(-1)
        lp = torch.log(total).add_(m[..., 0])
        return e.div_(total[..., None]), lp

    def _jet_lse(self, theta_bp: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        z, c, zz = self._design  # type: ignore[misc]
        n, t, p = z.shape
        b = theta_bp.shape[0]
        s, lp = self._lse(theta_bp)
        r, d1, d2 = self._phi(lp)
        rho, psi, curv = huber(r, self.delta)
        q = self._weighted(psi * d1, rows)
        kappa = self._weighted(curv * d1 * d1 + psi * d2, rows)
        qs = (q[..., None] * s).view(b, n * t)
        grad = qs @ z.reshape(n * t, p)
        # J_i = sum_t s_it Z_it as one batched matmul over points: [n, B, T] @ [n, T, P]
        jac = torch.bmm(s.transpose(0, 1), z).transpose(0, 1)
        hess = torch.bmm((jac * (kappa - q)[..., None]).transpose(1, 2), jac)
        hess = hess.add_((qs @ zz).view(b, p, p))
        value = self._weighted(rho, rows).sum(-1)
        return value, grad, hess

    def _jet_generic(self, theta_bp: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        # x_i's Jacobian by forward mode (one pass per parameter, vmapped), then the q-weighted
        # Hessian of sum_i q_i x_i by forward-over-reverse on the batch sum (block diagonal).
        b, p = theta_bp.shape
        law, x = self.law, self.x
        eye = torch.eye(p, dtype=theta_bp.dtype)

        def lp_fn(t: Tensor) -> Tensor:
            return law.log_predict(t, x)

        def jvp_dir(v: Tensor) -> tuple[Tensor, Tensor]:
            return torch.func.jvp(lp_fn, (theta_bp,), (v.expand(b, p),))

        lps, jac_pbn = torch.func.vmap(jvp_dir)(eye)
        lp = lps[0]
        jac = jac_pbn.permute(1, 2, 0)
        r, d1, d2 = self._phi(lp)
        rho, psi, curv = huber(r, self.delta)
        q = self._weighted(psi * d1, rows)
        kappa = self._weighted(curv * d1 * d1 + psi * d2, rows)
        grad = torch.einsum("bn,bnp->bp", q, jac)

        def weighted_sum(t: Tensor) -> Tensor:
            return (law.log_predict(t, x) * q).sum()

        grad_fn = torch.func.grad(weighted_sum)

        def hvp_dir(v: Tensor) -> Tensor:
            return torch.func.jvp(grad_fn, (theta_bp,), (v.expand(b, p),))[1]

        second = torch.func.vmap(hvp_dir)(eye).permute(1, 0, 2)
        hess = torch.einsum("bnp,bnq->bpq", jac * kappa[..., None], jac) + second
        value = self._weighted(rho, rows).sum(-1)
        bad = ~torch.isfinite(value)
        value = torch.where(bad, torch.full_like(value, float("inf")), value)
        return value, grad, hess
