"""Chinchilla-type laws in N and D.

- ``chinchilla``: L = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, "approach 3", Eq. 2 and
  App. D.2: log-sum-exp form, Huber delta 1e-3 on log residuals, 4500-start grid).
- ``chinchilla_gamma``: L = E + (A/N^alpha + B/D^beta)^gamma (Busbridge et al. 2025, Eq. 1;
  Huber delta 1e-4, grid of their App. / Table 6 fit).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from laws import jet
from laws.base import FitRecipe, LinearLSELaw, Param, grid
from laws.jet import FormulaLaw, Value

#: Hoffmann et al. 2022, Eq. 10 (unrounded values from their fit).
HOFFMANN_PARAMS = {
    "E": 1.69337,
    "A": 406.401,
    "B": 410.723,
    "alpha": 0.33917084,
    "beta": 0.2849083,
}
#: Besiroglu et al. 2024 refit of the 240 replication points with the Hoffmann recipe.
EPOCH_REFIT_PARAMS = {"E": 1.8172, "A": 477.8, "B": 2143.0, "alpha": 0.3473, "beta": 0.3672}
#: Busbridge et al. 2025, Table 6 (supervised law with outer exponent).
BUSBRIDGE_SUPERVISED_PARAMS = {
    "E": 1.220,
    "A": 3355.0,
    "B": 18186.0,
    "alpha": 0.408,
    "beta": 0.431,
    "gamma": 0.452,
}


class Chinchilla(LinearLSELaw):
    """L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, Eq. 2)."""

    name = "chinchilla"
    inputs = ("N", "D")
    params = (
        Param(name="E", log=True),
        Param(name="A", log=True),
        Param(name="B", log=True),
        Param(name="alpha"),
        Param(name="beta"),
    )
    recipe = FitRecipe(delta=1e-3, residual="log")
    formula = "E + A / N**alpha + B / D**beta"

    def design(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        # log L = LSE(a - alpha log N, b - beta log D, e)   (Hoffmann et al. 2022, App. D.2);
        # fit vector (e, a, b, alpha, beta)
        log_n, log_d = torch.log(x["N"]), torch.log(x["D"])
        n = log_n.shape[0]
        z = torch.zeros(n, 3, 5, dtype=log_n.dtype)
        z[:, 0, 1], z[:, 0, 3] = 1.0, -log_n
        z[:, 1, 2], z[:, 1, 4] = 1.0, -log_d
        z[:, 2, 0] = 1.0
        return z, torch.zeros(n, 3, dtype=log_n.dtype)

    def init_grid(self) -> Tensor:
        # e in {-1..1}, a, b in {0..25}, alpha, beta in {0..2}: 5*6*6*5*5 = 4500 starts (App. D.2)
        exps = [0.0, 0.5, 1.0, 1.5, 2.0]
        ab = [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
        return grid([-1.0, -0.5, 0.0, 0.5, 1.0], ab, ab, exps, exps)


class ChinchillaGamma(FormulaLaw):
    """L(N, D) = E + (A/N^alpha + B/D^beta)^gamma (Busbridge et al. 2025, Eq. 1)."""

    name = "chinchilla_gamma"
    inputs = ("N", "D")
    params = (
        Param(name="E", log=True),
        Param(name="A", log=True),
        Param(name="B", log=True),
        Param(name="alpha"),
        Param(name="beta"),
        Param(name="gamma"),
    )
    recipe = FitRecipe(delta=1e-4, residual="log")
    formula = "E + (A / N**alpha + B / D**beta)**gamma"

    def log_formula(self, p: Mapping[str, Value], x: Mapping[str, Tensor]) -> Value:
        # log L = LSE(e, gamma * LSE(a - alpha log N, b - beta log D))
        inner = jet.logsumexp([p["log_A"] - p["alpha"] * torch.log(x["N"]), p["log_B"] - p["beta"] * torch.log(x["D"])])
        return jet.logsumexp([p["log_E"], p["gamma"] * inner])

    def init_grid(self) -> Tensor:
        # Busbridge et al. 2025: log A, log B in {0,5,..,20}; log E in {-1,..,1.5};
        # alpha, beta, gamma in {0, 0.5, 1, 1.5}
        ab = [0.0, 5.0, 10.0, 15.0, 20.0]
        ex = [0.0, 0.5, 1.0, 1.5]
        return grid([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5], ab, ab, ex, ex, ex)
