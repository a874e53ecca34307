"""Recipes from the mixture, sparsity and forgetting laws: optimal mixture weights, optimal
sparsity at a compute budget, and the smallest pretraining-data fraction that limits forgetting."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize

from laws.optimizer import torch_threads
from laws.result import LawFit


@dataclass(frozen=True, kw_only=True)
class MixtureOptimum:
    """Domain weights h* minimising the weighted target loss at (N, D), and that loss."""

    weights: tuple[float, ...]
    loss: float
    iterations: int


def optimal_mixture(
    fits: Sequence[LawFit],
    *,
    N: float,
    D: float,
    target_weights: Sequence[float] | None = None,
    steps: int = 2000,
    lr: float = 0.5,
    tol: float = 1e-12,
    init: Sequence[float] | None = None,
) -> MixtureOptimum:
    """Minimise sum_j w_j L_j(N, D, h) over the simplex by mirror descent (exponentiated gradient:
    h <- h exp(-lr grad) / Z, as Shukor et al. 2025 do), one fitted mixture law per target domain.

    ``target_weights`` w (default uniform) weight the target domains' losses. ``init``: the
    starting weights (default uniform), e.g. a nearby optimum when re-solving under bootstrap
    resamples; zeros are lifted to 1e-9 (mirror descent cannot leave a zero weight). Runs on one
    torch thread (small tensors: see :func:`laws.optimizer.torch_threads`).
    """
    with torch_threads(1):
        return _optimal_mixture(fits, N, D, target_weights, steps, lr, tol, init)


def _optimal_mixture(
    fits: Sequence[LawFit],
    N: float,
    D: float,
    target_weights: Sequence[float] | None,
    steps: int,
    lr: float,
    tol: float,
    init: Sequence[float] | None,
) -> MixtureOptimum:
    if not fits:
        raise ValueError("optimal_mixture needs at least one fitted mixture law")
    law_list = [f.get_law() for f in fits]
    ks = {getattr(law, "k", None) for law in law_list}
    if None in ks or len(ks) != 1:
        raise ValueError(f"optimal_mixture needs mixture laws with the same k; got {[law.name for law in law_list]}")
    k = ks.pop()
    w = np.full(len(fits), 1.0 / len(fits)) if target_weights is None else np.asarray(target_weights, float)
    if w.shape != (len(fits),) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(f"target_weights must be {len(fits)} non-negative numbers, got {list(w)}")
    thetas = [law.from_natural(f.params)[None] for law, f in zip(law_list, fits, strict=True)]
    const = {"N": torch.tensor([float(N)], dtype=torch.float64), "D": torch.tensor([float(D)], dtype=torch.float64)}

    def loss_and_grad(h: torch.Tensor) -> tuple[float, np.ndarray]:
        h = h.clone().requires_grad_(True)
        x = {**const, **{f"h{i + 1}": h[i : i + 1] for i in range(k)}}
        total = sum(float(wj) * torch.exp(law.log_predict(th, x))[0, 0]
                    for wj, law, th in zip(w, law_list, thetas, strict=True))
        (g,) = torch.autograd.grad(total, h)
        return float(total.detach()), g.numpy()

    if init is None:
        h = np.full(k, 1.0 / k)
    else:
        h = np.asarray(init, dtype=np.float64).reshape(-1)
        if h.shape != (k,) or np.any(~np.isfinite(h)) or np.any(h < 0) or not h.sum() > 0:
            raise ValueError(f"init must be {k} non-negative weights, got {list(h)}")
        h = np.maximum(h, 1e-9)
        h = h / h.sum()
    value, grad = loss_and_grad(torch.from_numpy(h))
    it = 0
    for it in range(1, steps + 1):  # noqa: B007 - reported
        step = lr / max(np.abs(grad).max(), 1e-12)  # scale-free step size
        new = h * np.exp(-step * (grad - grad.min()))
        new /= new.sum()
        new_value, new_grad = loss_and_grad(torch.from_numpy(new))
        if new_value > value:
            lr *= 0.5
            continue
        done = value - new_value <= tol * abs(value)
        h, value, grad = new, new_value, new_grad
        if done:
            break
    return MixtureOptimum(weights=tuple(float(v) for v in h), loss=value, iterations=it)


@dataclass(frozen=True, kw_only=True)
class SparsityOptimum:
    """Total size N, sparsity S and tokens D minimising the loss at compute C = 6 N (1-S) D."""

    C: float
    N: float
    S: float
    D: float
    loss: float


def optimal_sparsity(fit_: LawFit, budget: float, *, max_sparsity: float = 0.98) -> SparsityOptimum:
    """argmin over (N, S) of L(N, D, S) with D = C / (6 N (1 - S)) (Abnar et al. 2025).

    Active parameters are taken as N (1 - S) (every parameter routed), so compute is
    C = 6 N (1 - S) D. A coarse grid over (log N, S) then bounded L-BFGS-B from its best cell.
    Runs on one torch thread (small tensors: see :func:`laws.optimizer.torch_threads`).
    """
    with torch_threads(1):
        return _optimal_sparsity(fit_, budget, max_sparsity)


def _optimal_sparsity(fit_: LawFit, budget: float, max_sparsity: float) -> SparsityOptimum:
    law = fit_.get_law()
    if set(law.inputs) != {"N", "D", "S"}:
        raise ValueError(f"optimal_sparsity needs a law in N, D and S; {law.name!r} takes {list(law.inputs)}")
    if not budget > 0:
        raise ValueError(f"budget must be positive, got {budget}")
    log_c6 = np.log(budget / 6.0)

    def loss(z: np.ndarray) -> np.ndarray:
        log_n, s = np.atleast_1d(z[0]), np.atleast_1d(z[1])
        d = np.exp(log_c6 - log_n - np.log1p(-s))
        return law.predict(fit_.params, N=np.exp(log_n), D=d, S=s)

    ln = np.linspace(log_c6 / 2 - 12, log_c6 / 2 + 12, 97)
    ss = np.linspace(0.0, max_sparsity, 50)
    g_n, g_s = np.meshgrid(ln, ss, indexing="ij")
    vals = loss(np.stack([g_n.ravel(), g_s.ravel()]))
    i = int(np.nanargmin(vals))
    res = optimize.minimize(lambda z: float(loss(z)[0]), [g_n.ravel()[i], g_s.ravel()[i]], method="L-BFGS-B",
                            bounds=[(ln[0], ln[-1]), (0.0, max_sparsity)])
    log_n, s = res.x
    n = float(np.exp(log_n))
    return SparsityOptimum(C=float(budget), N=n, S=float(s), D=float(budget / (6 * n * (1 - s))),
                           loss=float(loss(res.x)[0]))


def minimal_injection(fit_: LawFit, *, N: float, D_ft: float, tolerance: float) -> float:
    """Smallest fraction p of pretraining data keeping L_pt - L_pt0 <= ``tolerance`` (nats).

    From the forgetting law (Béthune et al. 2025) A D_ft^beta / ((1 + B p) N)^alpha <= tol:
    p = ((A D_ft^beta / tol)^(1/alpha) / N - 1) / B, and 0 when no injection is needed.
    """
    if fit_.law != "forgetting":
        raise ValueError(f"minimal_injection needs a fitted 'forgetting' law, got {fit_.law!r}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    p: Mapping[str, float] = fit_.params
    if p["alpha"] <= 0:
        raise ValueError(f"the fitted alpha = {p['alpha']:.3g} <= 0: injecting data cannot reduce forgetting")
    need = (p["A"] * D_ft ** p["beta"] / tolerance) ** (1.0 / p["alpha"]) / N
    return max(0.0, (need - 1.0) / p["B"])
