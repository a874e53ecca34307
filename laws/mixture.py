"""Data-mixture laws (Shukor et al., NeurIPS 2025, "Scaling laws for optimal data mixtures").

h = (h_1..h_k) are the domain weights of the training mixture (on the simplex), one law per
target domain (or for a weighted sum of domain losses).

Additive law (5 + 2k parameters; the optimal h does not depend on N, D):

    L = E + 1 / (sum_i C_i h_i^gamma_i) + A/N^alpha + B/D^beta

Joint law (5 + 4k parameters; the optimal h depends on scale):

    L = E + 1 / (sum_i C_i h_i^gamma_i) + A_h/N^alpha + B_h/D^beta,
    A_h = (sum_i CA_i h_i)^gamma_A,  B_h = (sum_i CB_i h_i)^gamma_B

Their recipe: Huber delta 1e-3 on the raw loss, random-search starts (no grid was published).
Mixture weights are inputs named ``h1`` .. ``hk``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from laws import jet
from laws.base import FitRecipe, Param
from laws.jet import FormulaLaw, Value


def mixture_inputs(k: int) -> tuple[str, ...]:
    """Input names of a k-domain mixture law."""
    return ("N", "D", *(f"h{i + 1}" for i in range(k)))


#: the data-mixture law families (Shukor et al. 2025)
MIXTURE_FAMILIES = ("mixture_additive", "mixture_joint")


def is_mixture_law(family: str) -> bool:
    """Whether ``family`` is a data-mixture law (inputs N, D and the weights h1..hk)."""
    return family in MIXTURE_FAMILIES


class _MixtureLaw(FormulaLaw):
    recipe = FitRecipe(delta=1e-3, residual="raw")
    #: per-parameter ranges of the random-search starts (fit coordinates), by parameter prefix
    _ranges: dict[str, tuple[float, float]] = {}

    def __init__(self, *, k: int = 2, max_starts: int = 2048, seed: int = 0) -> None:
        if not isinstance(k, int) or k < 2:
            raise ValueError(f"mixture laws need k >= 2 domains, got k={k!r}")
        self.k = k
        self.max_starts = int(max_starts)
        self.seed = int(seed)
        self.inputs = mixture_inputs(k)

    def _log_weights(self, x: Mapping[str, Tensor]) -> list[Tensor]:
        # a zero weight (a domain left out of a run) enters as log h = log(1e-300) rather than
        # -inf: h^gamma is still 0 for gamma > 0, and the derivatives stay finite (0 * -inf is NaN)
        return [torch.log(x[f"h{i + 1}"].clamp_min(1e-300)) for i in range(self.k)]

    def _mixture_term(self, p: Mapping[str, Value], log_h: list[Tensor]) -> Value:
        # log (1 / sum_i C_i h_i^gamma_i) = -LSE_i(log C_i + gamma_i log h_i)
        return -jet.logsumexp([p[f"log_C{i + 1}"] + p[f"gamma{i + 1}"] * log_h[i] for i in range(self.k)])

    def init_grid(self) -> Tensor:
        """Seeded uniform random starts within per-parameter ranges (Shukor et al.'s random search)."""
        g = torch.Generator().manual_seed(self.seed)
        u = torch.rand(self.max_starts, self.n_params, generator=g, dtype=torch.float64)
        lo = torch.tensor([self._range(n)[0] for n in self.param_names], dtype=torch.float64)
        hi = torch.tensor([self._range(n)[1] for n in self.param_names], dtype=torch.float64)
        return lo + u * (hi - lo)

    def _range(self, name: str) -> tuple[float, float]:
        base = name.rstrip("0123456789")
        return self._ranges[base]

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "k": self.k, "max_starts": self.max_starts, "seed": self.seed}


class MixtureAdditive(_MixtureLaw):
    """L(N, D, h) = E + 1/(sum_i C_i h_i^gamma_i) + A/N^alpha + B/D^beta (Shukor et al. 2025)."""

    name = "mixture_additive"
    formula = "E + 1 / sum_i(C_i * h_i**gamma_i) + A / N**alpha + B / D**beta"
    _ranges = {"E": (-1.0, 1.0), "A": (0.0, 10.0), "B": (0.0, 10.0), "alpha": (0.0, 1.0), "beta": (0.0, 1.0),
               "C": (-2.0, 3.0), "gamma": (0.0, 2.0)}

    def __init__(self, *, k: int = 2, max_starts: int = 2048, seed: int = 0) -> None:
        super().__init__(k=k, max_starts=max_starts, seed=seed)
        self.params = (
            Param(name="E", log=True),
            Param(name="A", log=True),
            Param(name="B", log=True),
            Param(name="alpha"),
            Param(name="beta"),
            *(Param(name=f"C{i + 1}", log=True) for i in range(k)),
            *(Param(name=f"gamma{i + 1}") for i in range(k)),
        )

    def log_formula(self, p: Mapping[str, Value], x: Mapping[str, Tensor]) -> Value:
        log_h = self._log_weights(x)
        return jet.logsumexp([
            p["log_E"],
            self._mixture_term(p, log_h),
            p["log_A"] - p["alpha"] * torch.log(x["N"]),
            p["log_B"] - p["beta"] * torch.log(x["D"]),
        ])


class MixtureJoint(_MixtureLaw):
    """L(N, D, h) = E + 1/(sum_i C_i h_i^gamma_i) + A_h/N^alpha + B_h/D^beta (Shukor et al. 2025)."""

    name = "mixture_joint"
    formula = ("E + 1 / sum_i(C_i * h_i**gamma_i) + sum_i(CA_i * h_i)**gamma_A / N**alpha"
               " + sum_i(CB_i * h_i)**gamma_B / D**beta")
    _ranges = {"E": (-1.0, 1.0), "alpha": (0.0, 1.0), "beta": (0.0, 1.0), "C": (-2.0, 3.0), "gamma": (0.0, 2.0),
               "CA": (0.0, 10.0), "CB": (0.0, 10.0), "gamma_A": (0.5, 1.5), "gamma_B": (0.5, 1.5)}

    def __init__(self, *, k: int = 2, max_starts: int = 2048, seed: int = 0) -> None:
        super().__init__(k=k, max_starts=max_starts, seed=seed)
        self.params = (
            Param(name="E", log=True),
            Param(name="alpha"),
            Param(name="beta"),
            *(Param(name=f"C{i + 1}", log=True) for i in range(k)),
            *(Param(name=f"gamma{i + 1}") for i in range(k)),
            *(Param(name=f"CA{i + 1}", log=True) for i in range(k)),
            *(Param(name=f"CB{i + 1}", log=True) for i in range(k)),
            Param(name="gamma_A"),
            Param(name="gamma_B"),
        )

    def _range(self, name: str) -> tuple[float, float]:
        return self._ranges[name] if name in self._ranges else super()._range(name)

    def log_formula(self, p: Mapping[str, Value], x: Mapping[str, Tensor]) -> Value:
        log_h = self._log_weights(x)
        log_a = jet.logsumexp([p[f"log_CA{i + 1}"] + log_h[i] for i in range(self.k)])
        log_b = jet.logsumexp([p[f"log_CB{i + 1}"] + log_h[i] for i in range(self.k)])
        return jet.logsumexp([
            p["log_E"],
            self._mixture_term(p, log_h),
            p["gamma_A"] * log_a - p["alpha"] * torch.log(x["N"]),
            p["gamma_B"] * log_b - p["beta"] * torch.log(x["D"]),
        ])
