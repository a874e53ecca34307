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
s the softmax of the terms. Laws written as formulas (:class:`laws.jet.FormulaLaw`) get them from
second-order forward jets; any other law uses ``torch.func`` (forward-over-reverse).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from laws.base import DTYPE, FitRecipe, LinearLSELaw, ScalingLaw
from laws.jet import FormulaLaw
from laws.tape import weighted_hessian

#: elements of the widest per-batch temporary processed at once (about 2 MB of float64)
CHUNK_ELEMENTS = 1 << 18


def huber_value(r: Tensor, delta: float) -> Tensor:
    """Huber value only (see :func:`huber`)."""
    a = r.abs()
    return torch.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def huber(r: Tensor, delta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Huber value, first and second derivative: r^2/2 for |r| <= delta, else
    delta (|r| - delta/2)."""
    a = r.abs()
    inside = a <= delta
    value = torch.where(inside, 0.5 * r * r, delta * (a - 0.5 * delta))
    return value, r.clamp(-delta, delta), inside.to(r.dtype)


def log_prediction_jacobian(law: ScalingLaw, theta_p: Tensor, x: Mapping[str, Tensor]) -> Tensor:
    """d log L_hat(x_i) / d theta at one fit vector [P]: [n, P].

    Closed form J_i = sum_t s_it Z_it for LSE-linear laws, jets for formula laws, forward-mode
    ``torch.func`` otherwise.
    """
    t = theta_p.detach().to(DTYPE)
    if isinstance(law, LinearLSELaw):
        z, c = law.design(x)
        u = torch.einsum("ntp,p->nt", z, t) + c
        return torch.einsum("nt,ntp->np", torch.softmax(u, dim=-1), z)
    if isinstance(law, FormulaLaw):
        return law.log_tape(t[None], x)[1][0]

    def lp(tt: Tensor) -> Tensor:
        return law.log_predict(tt[None], x)[0]

    return torch.func.jacfwd(lp)(t)


class _LSEDesign:
    """Precomputed design of an LSE-linear law, term-major: log L_hat_i = LSE_t(c_ti + Z_ti . theta).

    ``z_kp`` [T*n, P] and ``c_k`` [T*n] stack the terms; ``pairs`` [(T + T(T-1)/2) * n, P*P] holds
    Z_ti Z_ti^T for every term, then Z_ti Z_tj^T + Z_tj Z_ti^T for every pair t < j.
    """

    def __init__(self, z_ntp: Tensor, c_nt: Tensor) -> None:
        self.n, self.t, self.p = z_ntp.shape
        z_tnp = z_ntp.transpose(0, 1).contiguous()
        self.z_kp = z_tnp.reshape(self.t * self.n, self.p)
        self.c_k = c_nt.transpose(0, 1).reshape(1, -1).contiguous()
        ti, tj = torch.triu_indices(self.t, self.t, offset=1)
        self.pair_index = list(zip(ti.tolist(), tj.tolist(), strict=True))
        self.n_pairs = self.t + len(self.pair_index)
        outer = z_tnp[:, :, :, None] * z_tnp[:, :, None, :]
        cross = z_tnp[ti, :, :, None] * z_tnp[tj, :, None, :]
        cross = cross + cross.transpose(-1, -2)
        self.pairs = torch.cat([outer, cross]).reshape(-1, self.p * self.p).contiguous()


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
        self._design: _LSEDesign | None = None
        if isinstance(law, LinearLSELaw):
            self._design = _LSEDesign(*law.design(self.x))
        n = self.loss.shape[0]
        # per-row width of the largest temporaries (terms x points, or parameters x points)
        if self._design is not None:
            self._width = n * self._design.n_pairs
        else:
            self._width = n * law.n_params * law.n_params

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
            out = torch.cat([self._value(t, r) for t, r in self._chunks(theta_bp, rows)])
        return torch.where(torch.isfinite(out), out, torch.full_like(out, float("inf")))

    def _value(self, theta_bp: Tensor, rows: Tensor | None) -> Tensor:
        if self._design is not None:
            lp = self._lse(theta_bp, softmax=False)[1]
        else:
            lp = self.law.log_predict(theta_bp, self.x)
        r = torch.exp(lp).sub_(self.loss) if self.raw else lp.sub_(self.log_loss)
        return self._weighted(huber_value(r, self.delta), rows).sum(-1)

    def _chunks(self, theta_bp: Tensor, rows: Tensor | None) -> list[tuple[Tensor, Tensor | None]]:
        """Row blocks of the batch small enough for the per-point temporaries to stay in cache
        (elementwise work on [B, T, n] is memory-bound; blocks of ~2 MB run about 1.5x faster)."""
        size = max(8, CHUNK_ELEMENTS // self._width)
        b = theta_bp.shape[0]
        if b <= size:
            return [(theta_bp, rows)]
        return [
            (theta_bp[i : i + size], None if rows is None else rows[i : i + size]) for i in range(0, b, size)
        ]

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
                fn = self._jet_lse
            elif isinstance(self.law, FormulaLaw):
                fn = self._jet_formula
            else:
                fn = self._jet_generic
            parts = [fn(t, r) for t, r in self._chunks(theta_bp, rows)]
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(x) for x in zip(*parts, strict=True))  # type: ignore[return-value]

    def _lse(self, theta_bp: Tensor, *, softmax: bool = True) -> tuple[Tensor, Tensor]:
        """Terms' softmax weights s [B, T, n] (when ``softmax``) and log-prediction [B, n] of an
        LSE-linear law."""
        d = self._design
        assert d is not None
        u = torch.addmm(d.c_k, theta_bp, d.z_kp.T).view(-1, d.t, d.n)
        m = u.amax(1)
        e = torch.exp(u.sub_(m[:, None]))
        total = e.sum(1)
        lp = torch.log(total).add_(m)
        return (e.div_(total[:, None]) if softmax else e), lp

    def _jet_lse(self, theta_bp: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        d = self._design
        assert d is not None
        b, t, n, p = theta_bp.shape[0], d.t, d.n, d.p
        s, lp = self._lse(theta_bp)
        r, d1, d2 = self._phi(lp)
        rho, psi, curv = huber(r, self.delta)
        if self.raw:
            q, kappa = psi * d1, curv * d1 * d1 + psi * d2
        else:  # log residuals: phi' = 1, phi'' = 0
            q, kappa = psi, curv
        q, kappa = self._weighted(q, rows), self._weighted(kappa, rows)
        grad = torch.mul(s, q[:, None]).view(b, t * n) @ d.z_kp
        # H = sum_i (kappa_i - q_i) J_i J_i^T + sum_it q_i s_it Z_it Z_it^T with J_i = sum_t s_it Z_it.
        # Expanded over term pairs t <= t', every part of H is (a weight [B, n]) x Z_it Z_it'^T, so
        # the whole batch of Hessians is one GEMM against the precomputed pair products.
        w = kappa.sub_(q)
        weights = torch.empty(b, d.n_pairs, n, dtype=s.dtype)
        torch.mul(torch.addcmul(q[:, None], w[:, None], s), s, out=weights[:, :t])
        if t > 1:
            sw = s * w[:, None]
            for k, (i, j) in enumerate(d.pair_index):
                torch.mul(s[:, i], sw[:, j], out=weights[:, t + k])
        hess = (weights.view(b, -1) @ d.pairs).view(b, p, p)
        value = self._weighted(rho, rows).sum(-1)
        return value, grad, hess

    def _jet_formula(self, theta_bp: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        # per-point log-prediction and Jacobian from the law's formula, and sum_i q_i Hess(x_i)
        # by a reverse sweep over the recorded formula (laws.tape): no per-point Hessians
        lp, jac, recorded = self.law.log_tape(theta_bp, self.x)  # type: ignore[attr-defined]
        r, d1, d2 = self._phi(lp)
        rho, psi, curv = huber(r, self.delta)
        q = self._weighted(psi * d1, rows)
        kappa = self._weighted(curv * d1 * d1 + psi * d2, rows)
        grad = torch.einsum("bn,bnp->bp", q, jac)
        hess = torch.bmm((jac * kappa[..., None]).transpose(1, 2), jac)
        if recorded is not None:
            hess = hess + weighted_hessian(recorded, q, *lp.shape)
        value = self._weighted(rho, rows).sum(-1)
        bad = ~torch.isfinite(value)
        return torch.where(bad, torch.full_like(value, float("inf")), value), grad, hess

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
