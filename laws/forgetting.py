"""Forgetting under pretraining-data injection (Béthune et al., ICML 2025).

Finetuning a model of size N on D_ft tokens of a target domain with a fraction p of pretraining
data mixed in. Pretraining loss after finetuning (L_pt0: the pretraining loss before finetuning;
(1 + B p) N acts as an effective size):

    L_pt(N, D_ft, p) = L_pt0 + A D_ft^beta / ((1 + B p) N)^alpha

and the finetuning-domain loss

    L_ft(N, D_ft) = E + A / (N^alpha D_ft^beta).

Both are fitted with the Hoffmann recipe (Huber 1e-3 on log residuals).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from laws import jet
from laws.base import FitRecipe, LinearLSELaw, Param, grid
from laws.jet import FormulaLaw, Value


class Forgetting(FormulaLaw):
    """Pretraining loss after finetuning, L_pt(N, D_ft, p, L_pt0) (see the module docstring)."""

    name = "forgetting"
    inputs = ("N", "D_ft", "p", "L_pt0")
    params = (Param(name="A", log=True), Param(name="B", log=True), Param(name="alpha"), Param(name="beta"))
    recipe = FitRecipe(delta=1e-3, residual="log")
    formula = "L_pt0 + A * D_ft**beta / ((1 + B * p) * N)**alpha"
    # L_pt0 is a known offset (the pretrained model's own loss): it may be the same in every run
    varying_inputs = ("N", "D_ft", "p")
    offset_inputs = ("L_pt0",)

    def log_formula(self, p: Mapping[str, Value], x: Mapping[str, Tensor]) -> Value:
        # log(1 + B p) = softplus(log B + log p); p = 0 gives 0 (log p = -inf)
        effective = torch.log(x["N"]) + jet.softplus(p["log_B"] + torch.log(x["p"]))
        forgetting = p["log_A"] + p["beta"] * torch.log(x["D_ft"]) - p["alpha"] * effective
        return jet.logsumexp([torch.log(x["L_pt0"]), forgetting])

    def init_grid(self) -> Tensor:
        return grid([0.0, 5.0, 10.0, 15.0], [0.0, 2.5, 5.0, 7.5, 10.0], [0.0, 0.5, 1.0, 1.5], [0.0, 0.5, 1.0])


class ForgettingFinetune(LinearLSELaw):
    """Finetuning-domain loss L_ft(N, D_ft) = E + A / (N^alpha D_ft^beta) (Béthune et al. 2025)."""

    name = "forgetting_ft"
    inputs = ("N", "D_ft")
    params = (Param(name="E", log=True), Param(name="A", log=True), Param(name="alpha"), Param(name="beta"))
    recipe = FitRecipe(delta=1e-3, residual="log")
    formula = "E + A / (N**alpha * D_ft**beta)"

    def design(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        log_n, log_d = torch.log(x["N"]), torch.log(x["D_ft"])
        n = log_n.shape[0]
        z = torch.zeros(n, 2, 4, dtype=log_n.dtype)
        z[:, 0, 0] = 1.0  # log E
        z[:, 1, 1], z[:, 1, 2], z[:, 1, 3] = 1.0, -log_n, -log_d  # log A - alpha log N - beta log D_ft
        return z, torch.zeros(n, 2, dtype=log_n.dtype)

    def init_grid(self) -> Tensor:
        return grid([-1.0, -0.5, 0.0, 0.5, 1.0], [0.0, 5.0, 10.0, 15.0, 20.0], [0.0, 0.5, 1.0, 1.5],
                    [0.0, 0.5, 1.0, 1.5])
