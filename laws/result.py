"""Fit results: :class:`FitReport` (how the optimisation went) and :class:`LawFit` (the law)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from laws.base import ScalingLaw


@dataclass(frozen=True, kw_only=True)
class FitReport:
    """Diagnostics of a multi-start fit.

    ``n_best`` counts the starts whose final objective is within ``best_tol`` (relative) of the
    best; a single start reaching the optimum is a warning sign (reported in ``warnings``).
    ``grad_norm`` is the max-norm of the objective's gradient (fit coordinates) at the returned
    optimum. ``warnings`` names data or optimisation problems that did not stop the fit, and
    parameters the data left unidentified (:func:`laws.fit.parameter_warnings`).
    """

    n_points: int
    n_starts: int
    n_best: int
    best_tol: float
    grad_norm: float
    converged: bool
    n_converged: int = 0
    iterations: int = 0
    seconds: float = 0.0
    method: str = "batched damped Newton (exact Hessian), all starts"
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["warnings"] = list(self.warnings)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FitReport:
        d = dict(d)
        d["warnings"] = tuple(d.get("warnings", ()))
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class LawFit:
    """A fitted law: natural named parameters plus how the fit went.

    ``covariance`` is the parametric covariance of the fit vector (the law's fit
    parameterisation, e.g. log A), from the sandwich estimate at the optimum (see
    :mod:`laws.uncertainty`); ``None`` when it could not be formed. ``law_spec`` rebuilds the law
    (:func:`laws.law_from_spec`), so a fit loads back without the code that produced it.
    """

    law: str
    params: dict[str, float]
    objective: float
    report: FitReport
    covariance: tuple[tuple[float, ...], ...] | None = None
    law_spec: dict[str, Any] = field(default_factory=dict)

    def get_law(self) -> ScalingLaw:
        """The :class:`ScalingLaw` this fit belongs to."""
        from laws.registry import law_from_spec

        return law_from_spec(self.law_spec or {"name": self.law})

    @property
    def theta(self) -> np.ndarray:
        """The fit vector (law's fit parameterisation), [P]."""
        return self.get_law().from_natural(self.params).numpy()

    @property
    def covariance_matrix(self) -> np.ndarray | None:
        """``covariance`` as a [P, P] array (fit parameterisation), or None."""
        return None if self.covariance is None else np.asarray(self.covariance, dtype=np.float64)

    def predict(self, **inputs: ArrayLike) -> np.ndarray:
        """Predicted loss at ``inputs`` (named as the law's inputs)."""
        return self.get_law().predict(self.params, **inputs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; :meth:`from_dict` inverts it exactly."""
        return {
            "law": self.law,
            "params": {k: float(v) for k, v in self.params.items()},
            "objective": float(self.objective),
            "report": self.report.to_dict(),
            "covariance": None if self.covariance is None else [list(r) for r in self.covariance],
            "law_spec": dict(self.law_spec),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LawFit:
        cov = d.get("covariance")
        return cls(
            law=str(d["law"]),
            params={k: float(v) for k, v in d["params"].items()},
            objective=float(d["objective"]),
            report=FitReport.from_dict(d["report"]),
            covariance=None if cov is None else tuple(tuple(float(v) for v in r) for r in cov),
            law_spec=dict(d.get("law_spec") or {"name": d["law"]}),
        )
