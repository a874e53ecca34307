"""The distillation scaling law (Busbridge et al., ICML 2025, "Distillation Scaling Laws").

Student cross-entropy L_S as a function of student size N (non-embedding), distillation tokens D
and the teacher's loss L_T:

    L_S = L_T + L_T^(-c0) (1 + (L_T / (Ls~ d1))^(1/f1))^(-c1 f1) (A/N^alpha + B/D^beta)^gamma

Ls~ = L(N, D) is the student's supervised loss from the fitted supervised law
(:class:`laws.chinchilla.ChinchillaGamma`, Busbridge et al. Eq. 1), given as ``supervised``.
Fitted in log space, Huber delta 1e-4 on log residuals (their recipe).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from laws import jet
from laws.base import FitRecipe, Param, grid, subsample
from laws.chinchilla import BUSBRIDGE_SUPERVISED_PARAMS, ChinchillaGamma
from laws.jet import FormulaLaw, Value

#: Busbridge et al. 2025, Table 6 (distillation law)
BUSBRIDGE_DISTILLATION_PARAMS = {
    "A": 2243.0,
    "B": 24181.0,
    "alpha": 0.321,
    "beta": 0.637,
    "gamma": 0.764,
    "c0": 2.549,
    "c1": 522.6,
    "f1": 0.090,
    "d1": 1.315,
}


class Distillation(FormulaLaw):
    """Student loss L_S(N, D, L_T) (Busbridge et al. 2025); see the module docstring.

    ``supervised``: parameters of the supervised law (E, A, B, alpha, beta, gamma) giving Ls~;
    default their Table 6.

    Starts. The published grid (Busbridge et al. 2025) has
    5^2 x 3^3 x 4^3 x 5 = 216,000 starts. Its 54,000 starts with f1 = 0 are left out: the law
    divides by f1 (the exponent 1/f1 of the capacity-gap term, here softplus(.../f1)), so at
    f1 = 0 the term is inf x 0 and the objective is NaN at every such start; the fitter would
    discard them before the first step (non-finite starts never move). The limit f1 -> 0+ is the
    hinge max(1, L_T / (Ls~ d1))^(-c1), with no curvature to start Newton from. That leaves
    5^2 x 3^3 x 4^2 x 3 x 5 = 162,000 starts (f1 in {0.5, 1, 1.5}).

    ``max_starts`` (default 4096) keeps a seeded random subset of them: screening the whole grid
    with the fitter's default (3 Newton steps for every start) costs about 40x the subset's fit.
    ``max_starts=None`` gives the full 162,000; fit it with
    ``screen=laws.Screen(iterations=0, keep=256)`` (rank every start by its objective, continue
    the best 256: about 3x the subset's cost). BENCHMARKS.md (the distillation law's starts)
    gives the times and what each reaches.
    """

    name = "distillation"
    inputs = ("N", "D", "L_T")
    params = (
        Param(name="A", log=True),
        Param(name="B", log=True),
        Param(name="alpha"),
        Param(name="beta"),
        Param(name="gamma"),
        Param(name="c0"),
        Param(name="c1"),
        Param(name="f1"),
        Param(name="d1", log=True),
    )
    recipe = FitRecipe(delta=1e-4, residual="log")
    formula = "L_T + L_T**(-c0) * (1 + (L_T / (Ls * d1))**(1 / f1))**(-c1 * f1) * (A / N**alpha + B / D**beta)**gamma"

    def __init__(self, *, supervised: Mapping[str, float] | None = None, max_starts: int | None = 4096) -> None:
        self.supervised = dict(supervised or BUSBRIDGE_SUPERVISED_PARAMS)
        self.max_starts = max_starts
        self._supervised_law = ChinchillaGamma()
        self._supervised_law.from_natural(self.supervised)  # validates the names

    def log_formula(self, p: Mapping[str, Value], x: Mapping[str, Tensor]) -> Value:
        log_lt = torch.log(x["L_T"])
        log_ls = self._supervised_law.log_predict(self._supervised_law.from_natural(self.supervised)[None],
                                                  {"N": x["N"], "D": x["D"]})[0]
        capacity = jet.softplus((log_lt - log_ls - p["log_d1"]) / p["f1"])
        size = jet.logsumexp([p["log_A"] - p["alpha"] * torch.log(x["N"]), p["log_B"] - p["beta"] * torch.log(x["D"])])
        excess = -p["c0"] * log_lt - p["c1"] * p["f1"] * capacity + p["gamma"] * size
        return jet.logsumexp([log_lt, excess])

    def init_grid(self) -> Tensor:
        # Busbridge et al. 2025: log A', log B' in {0,5,..,20}; alpha', beta', gamma' in {0,0.5,1};
        # c0, c1 in {0,0.5,1,1.5}; f1 in {0.5,1,1.5} (their f1 = 0 is NaN: see the class docstring);
        # log d1 in {-1,..,1}
        ab = [0.0, 5.0, 10.0, 15.0, 20.0]
        ex = [0.0, 0.5, 1.0]
        c = [0.0, 0.5, 1.0, 1.5]
        full = grid(ab, ab, ex, ex, ex, c, c, [0.5, 1.0, 1.5], [-1.0, -0.5, 0.0, 0.5, 1.0])
        return subsample(full, self.max_starts)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "supervised": dict(self.supervised), "max_starts": self.max_starts}
