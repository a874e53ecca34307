"""The scaling-law contract: named inputs, named parameters, a batched log-loss prediction.

Every family in ``laws/`` subclasses :class:`ScalingLaw`. The fitter only ever calls
:meth:`ScalingLaw.log_predict` on a batch of parameter vectors in the *fit parameterisation*
(e.g. ``a = log A``), so one optimiser serves every family, and derivatives with respect to the
parameters (Jacobians for covariance and run selection) come from ``torch.func`` on that method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

DTYPE = torch.float64
#: the largest log-parameter with a natural value: exp overflows float64 above it
MAX_LOG = float(np.log(np.finfo(np.float64).max))


@dataclass(frozen=True, kw_only=True)
class Param:
    """One law parameter: its natural name and whether the fitter works on its logarithm.

    ``log=True`` means the optimiser sees ``log(value)`` (positive parameters such as A, B, E in
    the log-sum-exp form of Hoffmann et al. 2022, App. D.2).
    """

    name: str
    log: bool = False


@dataclass(frozen=True, kw_only=True)
class FitRecipe:
    """How a family is fitted: the Huber threshold and the scale of the residual.

    ``residual="log"`` uses r = log L_hat - log L (Hoffmann et al. 2022); ``"raw"`` uses
    r = L_hat - L (Shukor et al. 2025 for mixture laws). The objective is the SUM of Huber terms.
    """

    delta: float = 1e-3
    residual: Literal["log", "raw"] = "log"


class ScalingLaw(ABC):
    """A parametric loss law L(inputs; params), fitted in a fixed parameterisation.

    Subclasses set ``name``, ``inputs``, ``params`` and ``recipe`` and implement
    :meth:`log_predict` (called by the fitter on every iteration, batched over starts) and
    :meth:`init_grid` (called once per fit to build the multi-start grid).
    """

    name: str
    inputs: tuple[str, ...]
    params: tuple[Param, ...]
    recipe: FitRecipe = FitRecipe()
    #: the law as a human-readable formula over its input and parameter names
    formula: str = ""
    #: inputs that must take at least two values across the data (None: every input); a constant
    #: one raises in :func:`laws.validate.check_data`, any other constant input is reported
    varying_inputs: tuple[str, ...] | None = None
    #: inputs that enter as known offsets (a constant value is no warning)
    offset_inputs: tuple[str, ...] = ()

    @property
    def param_names(self) -> tuple[str, ...]:
        """Natural parameter names, in the order of the fit vector."""
        return tuple(p.name for p in self.params)

    @property
    def fit_param_names(self) -> tuple[str, ...]:
        """Names of the fit coordinates: ``log_X`` for log-parameterised ``X``."""
        return tuple(f"log_{p.name}" if p.log else p.name for p in self.params)

    @property
    def n_params(self) -> int:
        return len(self.params)

    @abstractmethod
    def log_predict(self, theta_bp: Tensor, x: Mapping[str, Tensor]) -> Tensor:
        """Predicted log-loss, shape [B, n], for B fit vectors ``theta_bp`` [B, P].

        ``x`` maps every name in ``inputs`` to a float64 tensor of shape [n]. Must be
        differentiable in ``theta_bp`` and work under ``torch.func`` transforms.
        """

    @abstractmethod
    def init_grid(self) -> Tensor:
        """Multi-start grid in the fit parameterisation, shape [S, P]."""

    # -- parameterisation ---------------------------------------------------------------------
    def to_natural(self, theta_p: Tensor | np.ndarray) -> dict[str, float]:
        """Fit vector [P] -> natural named parameters."""
        t = np.asarray(theta_p, dtype=np.float64).reshape(-1)
        return {
            p.name: float(np.exp(v)) if p.log else float(v)
            for p, v in zip(self.params, t, strict=True)
        }

    def from_natural(self, params: Mapping[str, float]) -> Tensor:
        """Natural named parameters -> fit vector [P] (float64)."""
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise ValueError(f"law {self.name!r}: missing parameters {missing}; expected {list(self.param_names)}")
        out = []
        for p in self.params:
            v = float(params[p.name])
            if p.log:
                if v < 0 or not np.isfinite(v):
                    raise ValueError(f"law {self.name!r}: parameter {p.name} must be >= 0, got {v}")
                out.append(np.log(v) if v > 0 else -np.inf)
            else:
                out.append(v)
        return torch.tensor(out, dtype=DTYPE)

    def representable(self, theta_p: Tensor) -> Tensor:
        """Whether each fit vector [..., P] has finite natural parameters [...]: a log-parameter
        above :data:`MAX_LOG` has none (exp overflows float64), though the objective, computed in
        log space, may still be finite there."""
        t = torch.as_tensor(theta_p, dtype=DTYPE)
        logs = torch.tensor([p.log for p in self.params])
        return torch.isfinite(t).all(-1) & ~(logs & (t > MAX_LOG)).any(-1)

    def natural_jacobian(self, theta_p: Tensor) -> Tensor:
        """d natural / d fit coordinate, diagonal [P] (exp(t) for log params, 1 otherwise)."""
        t = torch.as_tensor(theta_p, dtype=DTYPE)
        logs = torch.tensor([p.log for p in self.params])
        return torch.where(logs, torch.exp(t), torch.ones_like(t))

    # -- inputs ---------------------------------------------------------------------------------
    def prepare_inputs(self, inputs: Mapping[str, ArrayLike]) -> dict[str, Tensor]:
        """Check names and shapes and convert to float64 tensors; returns {name: Tensor}."""
        unknown = sorted(set(inputs) - set(self.inputs))
        missing = [n for n in self.inputs if n not in inputs]
        if missing or unknown:
            raise ValueError(
                f"law {self.name!r} takes inputs {list(self.inputs)}; missing {missing}, unknown {unknown}"
            )
        x: dict[str, Tensor] = {}
        n: int | None = None
        for name in self.inputs:
            a = np.asarray(inputs[name], dtype=np.float64).reshape(-1)
            n = a.shape[0] if n is None else n
            if a.shape[0] != n:
                raise ValueError(
                    f"law {self.name!r}: inputs have different lengths ({name} has {a.shape[0]}, expected {n})"
                )
            x[name] = torch.from_numpy(a.copy())
        return x

    # -- convenience ----------------------------------------------------------------------------
    def predict(self, params: Mapping[str, float], **inputs: ArrayLike) -> np.ndarray:
        """Loss predicted with natural ``params`` at ``inputs`` (broadcast to a common shape)."""
        missing = [k for k in self.inputs if k not in inputs]
        unknown = sorted(set(inputs) - set(self.inputs))
        if missing or unknown:
            raise ValueError(
                f"law {self.name!r} takes inputs {list(self.inputs)}; missing {missing}, unknown {unknown}"
            )
        arrays = np.broadcast_arrays(*(np.asarray(inputs[k], dtype=np.float64) for k in self.inputs))
        shape = arrays[0].shape
        x = self.prepare_inputs({k: a.reshape(-1) for k, a in zip(self.inputs, arrays, strict=True)})
        theta = self.from_natural(params)[None]
        with torch.no_grad():
            out = torch.exp(self.log_predict(theta, x))[0].numpy()
        return out.reshape(shape)

    def spec(self) -> dict[str, Any]:
        """JSON-able description from which :func:`laws.law_from_spec` rebuilds this law."""
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, inputs={self.inputs}, params={self.param_names})"


def grid(*axes: list[float] | tuple[float, ...]) -> Tensor:
    """Cartesian product of per-parameter value lists, [prod(len), P], float64."""
    mesh = torch.meshgrid(*[torch.tensor(list(a), dtype=DTYPE) for a in axes], indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1)


def subsample(starts: Tensor, max_starts: int | None, seed: int = 0) -> Tensor:
    """A seeded random subset of ``max_starts`` rows of a start grid (all rows when it is smaller
    or ``max_starts`` is None), in grid order."""
    if max_starts is None or starts.shape[0] <= max_starts:
        return starts
    if max_starts < 1:
        raise ValueError(f"max_starts must be >= 1, got {max_starts}")
    idx = torch.randperm(starts.shape[0], generator=torch.Generator().manual_seed(seed))[:max_starts]
    return starts[torch.sort(idx).values]


class LinearLSELaw(ScalingLaw):
    """A law whose log-loss is a log-sum-exp of terms linear in the fit vector:

        log L_hat_i = LSE_t (c_it + Z_it . theta)

    (the Hoffmann et al. 2022 App. D.2 form). Such laws get closed-form exact derivatives in the
    fitter; :meth:`log_predict` is derived from :meth:`design`.
    """

    @abstractmethod
    def design(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Term coefficients Z [n, T, P] and offsets c [n, T] for the points ``x``."""

    def log_predict(self, theta_bp: Tensor, x: Mapping[str, Tensor]) -> Tensor:
        z, c = self.design(x)
        u = torch.einsum("ntp,bp->bnt", z, theta_bp) + c
        return torch.logsumexp(u, dim=-1)
