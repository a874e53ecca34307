"""Parametric (curvature-based) uncertainty and prediction Jacobians.

The sandwich (Huber M-estimator) covariance of the fit vector (Huber 1967; see e.g.
Hampel et al. 1986, Sec. 4.2):  Cov = H^-1 (sum_i g_i g_i^T) H^-1 · n/(n-p),  with H the exact
Hessian of the summed-Huber objective and g_i the per-point gradients. Cheap (one Jacobian) and
meant for online estimates; :func:`laws.bootstrap.bootstrap` is the robust alternative when the
fit is poorly identified. Prediction Jacobians d log L_hat / d theta serve the delta method and
run selection (V-/D-optimal criteria).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import stats
from torch import Tensor

from laws.base import DTYPE, ScalingLaw
from laws.objective import Objective, huber, log_prediction_jacobian
from laws.result import LawFit


def prediction_jacobian(law: ScalingLaw, theta_p: Tensor | np.ndarray, inputs: Mapping[str, ArrayLike]) -> np.ndarray:
    """d log L_hat(x_i) / d theta, [n, P], at fit vector ``theta_p`` (fit parameterisation)."""
    x = law.prepare_inputs(inputs)
    t = torch.as_tensor(np.asarray(theta_p, dtype=np.float64))
    return log_prediction_jacobian(law, t, x).numpy()


def fit_covariance(objective: Objective, theta_p: Tensor) -> np.ndarray | None:
    """Sandwich covariance of the fit vector at the optimum ``theta_p``, [P, P] (or None)."""
    law, x = objective.law, objective.x
    t = theta_p.detach().to(DTYPE)
    _, _, hess = objective.jet(t[None])
    h = hess[0].numpy()

    jac = log_prediction_jacobian(law, t, x)
    with torch.no_grad():
        pred = law.log_predict(t[None], x)[0]
    if objective.raw:
        r = torch.exp(pred) - objective.loss
        jac = jac * torch.exp(pred)[:, None]
    else:
        r = pred - objective.log_loss
    _, psi, _ = huber(r, objective.delta)
    g_i = (psi[:, None] * jac).numpy()
    n, p = g_i.shape
    if n <= p or not np.all(np.isfinite(h)):
        return None
    try:
        h_inv = np.linalg.inv(h)
    except np.linalg.LinAlgError:
        return None
    if np.linalg.cond(h) > 1e14:
        return None
    w = objective.weights
    meat = g_i.T @ (g_i * (1.0 if w is None or w.ndim != 1 else w.numpy()[:, None]))
    cov = h_inv @ meat @ h_inv * (n / (n - p))
    return 0.5 * (cov + cov.T)


def parametric_intervals(fit_: LawFit, *, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Normal-approximation intervals on every natural parameter from ``fit_.covariance``.

    Log-parameterised parameters get intervals symmetric in the log (always positive).
    Raises ValueError when the fit carries no covariance.
    """
    cov = fit_.covariance_matrix
    if cov is None:
        raise ValueError(f"fit of {fit_.law!r} has no parametric covariance (singular Hessian)")
    law = fit_.get_law()
    theta = law.from_natural(fit_.params).numpy()
    z = float(stats.norm.ppf(0.5 + level / 2))
    out = {}
    for i, p in enumerate(law.params):
        half = z * float(np.sqrt(max(cov[i, i], 0.0)))
        lo, hi = theta[i] - half, theta[i] + half
        with np.errstate(over="ignore"):  # an unidentified log parameter: its interval reaches inf
            out[p.name] = (float(np.exp(lo)), float(np.exp(hi))) if p.log else (float(lo), float(hi))
    return out


def prediction_interval(fit_: LawFit, *, level: float = 0.95, **inputs: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Delta-method interval on the predicted loss at ``inputs`` (parametric uncertainty only)."""
    cov = fit_.covariance_matrix
    if cov is None:
        raise ValueError(f"fit of {fit_.law!r} has no parametric covariance (singular Hessian)")
    law = fit_.get_law()
    theta = law.from_natural(fit_.params).numpy()
    xs = {k: np.atleast_1d(np.asarray(v, dtype=np.float64)) for k, v in inputs.items()}
    xs = dict(zip(xs, np.broadcast_arrays(*xs.values()), strict=True))
    jac = prediction_jacobian(law, theta, xs)
    sd = np.sqrt(np.einsum("np,pq,nq->n", jac, cov, jac).clip(min=0))
    z = float(stats.norm.ppf(0.5 + level / 2))
    pred = law.predict(fit_.params, **xs)
    return pred * np.exp(-z * sd), pred * np.exp(z * sd)
