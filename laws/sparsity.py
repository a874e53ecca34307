"""The MoE sparsity law (Abnar et al., ICML 2025, "Parameters vs FLOPs").

    L(N, D, S) = a/N^alpha + b/D^beta + c/(1-S)^lambda + d/((1-S)^delta N^gamma) + e

N total parameters, D tokens, S = (E - K)/E the sparsity of E experts with top-K routing. Every
term is a power law, so log L is a log-sum-exp of terms linear in
(log a, log b, log c, log d, log e, alpha, beta, gamma, lambda, delta): the Hoffmann recipe
applies as is (Huber 1e-3 on log residuals, closed-form derivatives).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from laws.base import FitRecipe, LinearLSELaw, Param, grid, subsample


class Sparsity(LinearLSELaw):
    """L(N, D, S) of Abnar et al. 2025 (see the module docstring).

    ``max_starts``: their grid (log a..d in {0,10,20}, alpha, beta, gamma in {0,0.25,..,1.25},
    lambda, delta in {-1,-0.5,0,0.5,1}, log e = 1.5) has 437,400 starts; the default keeps a
    seeded subset.
    """

    name = "sparsity"
    inputs = ("N", "D", "S")
    params = (
        Param(name="a", log=True),
        Param(name="b", log=True),
        Param(name="c", log=True),
        Param(name="d", log=True),
        Param(name="e", log=True),
        Param(name="alpha"),
        Param(name="beta"),
        Param(name="gamma"),
        Param(name="lambda"),
        Param(name="delta"),
    )
    recipe = FitRecipe(delta=1e-3, residual="log")
    formula = "a / N**alpha + b / D**beta + c / (1 - S)**lambda + d / ((1 - S)**delta * N**gamma) + e"

    def __init__(self, *, max_starts: int | None = 4096) -> None:
        self.max_starts = max_starts

    def design(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        bad = ((x["S"] < 0) | (x["S"] >= 1)).nonzero().flatten()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(f"input S (sparsity) must be in [0, 1); got S[{i}] = {float(x['S'][i])!r}")
        log_n, log_d = torch.log(x["N"]), torch.log(x["D"])
        log_dense = torch.log1p(-x["S"])  # log(1 - S)
        n = log_n.shape[0]
        z = torch.zeros(n, 5, 10, dtype=log_n.dtype)
        z[:, 0, 0], z[:, 0, 5] = 1.0, -log_n  # log a - alpha log N
        z[:, 1, 1], z[:, 1, 6] = 1.0, -log_d  # log b - beta log D
        z[:, 2, 2], z[:, 2, 8] = 1.0, -log_dense  # log c - lambda log(1-S)
        z[:, 3, 3], z[:, 3, 9], z[:, 3, 7] = 1.0, -log_dense, -log_n  # log d - delta log(1-S) - gamma log N
        z[:, 4, 4] = 1.0  # log e
        return z, torch.zeros(n, 5, dtype=log_n.dtype)

    def init_grid(self) -> Tensor:
        logs = [0.0, 10.0, 20.0]
        ex = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
        sd = [-1.0, -0.5, 0.0, 0.5, 1.0]
        return subsample(grid(logs, logs, logs, logs, [1.5], ex, ex, ex, sd, sd), self.max_starts)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "max_starts": self.max_starts}
