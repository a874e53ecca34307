"""Checks on fitting data: raise on data no law can be fitted to, warn on data that is suspect."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from laws.base import ScalingLaw

#: inputs that may legitimately be zero or negative (fractions, sparsity, mixture weights)
_ALLOW_NONPOSITIVE_PREFIXES = ("S", "p", "h")


def _show(values: np.ndarray, idx: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(f"[{i}]={values[i]!r}" for i in idx[:limit])
    more = f" (+{len(idx) - limit} more)" if len(idx) > limit else ""
    return shown + more


def check_data(
    law: ScalingLaw, inputs: Mapping[str, ArrayLike], loss: ArrayLike
) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[str, ...]]:
    """Validate ``inputs``/``loss`` for ``law``; return float arrays and warnings.

    Raises ValueError naming the problem and the offending values for: missing or unknown
    inputs, mismatched lengths, NaN/inf or non-positive losses, NaN/inf inputs, non-positive
    sizes/token counts, fewer points than parameters, and a single distinct value of N or D.
    Warns (returned strings) on duplicated points.
    """
    missing = [k for k in law.inputs if k not in inputs]
    unknown = sorted(set(inputs) - set(law.inputs))
    if missing or unknown:
        raise ValueError(f"law {law.name!r} takes inputs {list(law.inputs)}; missing {missing}, unknown {unknown}")
    y = np.asarray(loss, dtype=np.float64).reshape(-1)
    xs = {k: np.asarray(inputs[k], dtype=np.float64).reshape(-1) for k in law.inputs}
    for k, a in xs.items():
        if a.shape[0] != y.shape[0]:
            raise ValueError(f"input {k} has {a.shape[0]} values but loss has {y.shape[0]}")
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise ValueError(f"loss has non-finite values at {_show(y, bad)}")
    bad = np.flatnonzero(y <= 0)
    if bad.size:
        raise ValueError(f"loss must be positive; got {_show(y, bad)}")
    for k, a in xs.items():
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise ValueError(f"input {k} has non-finite values at {_show(a, bad)}")
        if not k.startswith(_ALLOW_NONPOSITIVE_PREFIXES) or k in ("D", "D_S", "D_ft"):
            bad = np.flatnonzero(a <= 0)
            if bad.size:
                raise ValueError(f"input {k} must be positive; got {_show(a, bad)}")
    n, p = y.shape[0], law.n_params
    if n < p:
        raise ValueError(f"law {law.name!r} has {p} parameters but only {n} data points were given")
    for k in law.inputs:
        if k[0] in "ND":
            distinct = np.unique(xs[k])
            if distinct.size < 2:
                raise ValueError(
                    f"all {n} points have the same {k} = {distinct[0]!r}: the law's dependence on {k} "
                    "cannot be identified; vary it across runs"
                )
    warnings: list[str] = []
    table = np.column_stack([xs[k] for k in law.inputs])
    _, first, counts = np.unique(table, axis=0, return_index=True, return_counts=True)
    dup = counts > 1
    if dup.any():
        pts = ", ".join(
            "(" + ", ".join(f"{k}={table[i, j]:.6g}" for j, k in enumerate(law.inputs)) + f") x{c}"
            for i, c in zip(first[dup][:5], counts[dup][:5], strict=True)
        )
        warnings.append(f"{int((counts[dup] - 1).sum())} duplicated input points: {pts}")
    if n == p:
        warnings.append(f"as many points ({n}) as parameters: the fit interpolates, no residual left")
    return xs, y, tuple(warnings)
