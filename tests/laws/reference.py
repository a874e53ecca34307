"""An independent NumPy/SciPy implementation of the Hoffmann et al. (2022, App. D.2) recipe.

Summed Huber (delta 1e-3) of log residuals of L = E + A/N^alpha + B/D^beta in the log-sum-exp
parameterisation theta = (e, a, b, alpha, beta), minimised by SciPy L-BFGS-B: the reference the
batched fitter must agree with.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize
from scipy.special import logsumexp


def objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
              delta: float = 1e-3) -> tuple[float, np.ndarray]:
    e, a, b, alpha, beta = theta
    u = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    lp = logsumexp(u, axis=0)
    s = np.exp(u - lp)
    r = lp - log_l
    value = np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
    psi = np.clip(r, -delta, delta)
    grad = np.array([
        (psi * s[2]).sum(),
        (psi * s[0]).sum(),
        (psi * s[1]).sum(),
        -(psi * s[0] * log_n).sum(),
        -(psi * s[1] * log_d).sum(),
    ])
    return float(value), grad


#: L-BFGS-B run to the optimum's precision (SciPy's defaults stop ~1e-10 above it)
TIGHT = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 15000, "maxcor": 20}


def lbfgs(theta0: np.ndarray, n: np.ndarray, d: np.ndarray, loss: np.ndarray,
          options: dict | None = None) -> tuple[np.ndarray, float]:
    """SciPy L-BFGS-B from ``theta0`` (``options``: SciPy's, e.g. :data:`TIGHT`); returns
    (theta, objective)."""
    res = optimize.minimize(objective, theta0, args=(np.log(n), np.log(d), np.log(loss)), jac=True,
                            method="L-BFGS-B", options=options)
    return res.x, float(res.fun)
