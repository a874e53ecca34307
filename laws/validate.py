"""Checks on fitting data: raise on data no law can be fitted to, warn on data that is suspect.

Points are counted as distinct input configurations: seeds of one run repeat a configuration and
add no new equation, so a law with P parameters needs at least P distinct configurations.

An input with one value in every run, per case:

- N, D (D_S, D_ft): error; the size or data term reduces to a constant confounded with E.
- S (sparsity): error; c/(1-S)^lambda is a constant confounded with e, and (1-S)^-delta with d:
  lambda and delta cannot be identified (a study at one sparsity fits the dense law instead).
- L_T (distillation): error; L_T^-c0 is a constant factor confounded with A and B (c0 cannot be
  identified), and the teacher dependence the law exists for is not observed.
- p (forgetting): error; (1 + B p)^-alpha is a constant factor confounded with A (with p = 0
  everywhere B does not enter at all).
- h_i (mixture weights): error; with h_i fixed, C_i h_i^gamma_i is one constant (C_i and gamma_i
  confounded), so the mixture recipe cannot be read off the law.
- L_pt0 (forgetting): allowed; it is a known offset (the pretrained model's own loss), not a
  term with parameters.
- inputs of custom laws: a warning in the fit report; whether the expression stays identified
  depends on how it uses the input (a known offset is fine; a power of it is not).

Which inputs must vary is a law's ``varying_inputs`` (default: all of them).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from laws.base import ScalingLaw

#: inputs that may legitimately be zero or negative (fractions, sparsity, mixture weights)
_ALLOW_NONPOSITIVE_PREFIXES = ("S", "p", "h")


def may_be_nonpositive(name: str) -> bool:
    """Whether an input of this name may be zero (sparsity S, injection share p, mixture
    weights h_i); every other input (N, D, C, L_T, ...) must be positive."""
    return name.startswith(_ALLOW_NONPOSITIVE_PREFIXES) and name not in ("D", "D_S", "D_ft")


#: why a constant input leaves a built-in law unidentified (by input name, name without its
#: index, or first letter)
_CONSTANT_INPUT = {
    "N": "the size term is then a constant, confounded with the irreducible loss",
    "D": "the data term is then a constant, confounded with the irreducible loss",
    "S": "c/(1-S)^lambda is then a constant confounded with e, and (1-S)^-delta with d (lambda and delta)",
    "L_T": "L_T^-c0 is then a constant factor confounded with A and B (c0), and the teacher dependence is not observed",
    "p": "(1 + B p)^-alpha is then a constant factor confounded with A (B cannot be identified)",
    "h": "C_i h_i^gamma_i is then one constant (C_i and gamma_i confounded), so no mixture can be recommended",
}


def _show(values: np.ndarray, idx: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(f"[{i}]={float(values[i])!r}" for i in idx[:limit])
    more = f" (+{len(idx) - limit} more)" if len(idx) > limit else ""
    return shown + more


def check_data(
    law: ScalingLaw, inputs: Mapping[str, ArrayLike], loss: ArrayLike
) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[str, ...]]:
    """Validate ``inputs``/``loss`` for ``law``; return float arrays and warnings.

    Raises ValueError naming the problem and the offending values for: missing or unknown
    inputs, mismatched lengths, NaN/inf or non-positive losses, NaN/inf inputs, non-positive
    sizes/token counts, fewer distinct input configurations than parameters, and a single
    distinct value of an input the law needs varied (see the module docstring). Warns (returned
    strings) on duplicated points and on constant inputs a law does not need varied.
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
        if not may_be_nonpositive(k):
            bad = np.flatnonzero(a <= 0)
            if bad.size:
                raise ValueError(f"input {k} must be positive; got {_show(a, bad)}")
    n, p = y.shape[0], law.n_params
    table = np.column_stack([xs[k] for k in law.inputs])
    _, first, counts = np.unique(table, axis=0, return_index=True, return_counts=True)
    n_configs = int(counts.size)
    if n < p:
        raise ValueError(f"law {law.name!r} has {p} parameters but only {n} data points were given")
    must_vary = law.inputs if getattr(law, "varying_inputs", None) is None else law.varying_inputs
    warnings: list[str] = []
    for k in law.inputs:
        distinct = np.unique(xs[k])
        if distinct.size >= 2:
            continue
        why = _CONSTANT_INPUT.get(k) or _CONSTANT_INPUT.get(k.rstrip("0123456789")) or _CONSTANT_INPUT.get(k[0], "")
        msg = (f"all {n} points have the same {k} = {float(distinct[0])!r}: the law's dependence on {k} "
               f"cannot be identified{'; ' + why if why else ''}; vary it across runs")
        if k in must_vary:
            raise ValueError(msg)
        if k not in getattr(law, "offset_inputs", ()):
            warnings.append(msg)
    if n_configs < p:
        raise ValueError(
            f"law {law.name!r} has {p} parameters but the {n} data points hold only {n_configs} distinct input "
            f"configurations (repeated points, e.g. seeds of one run, add no information about the law's shape); "
            f"vary {', '.join(law.inputs)} over at least {p} configurations"
        )
    dup = counts > 1
    if dup.any():
        pts = ", ".join(
            "(" + ", ".join(f"{k}={table[i, j]:.6g}" for j, k in enumerate(law.inputs)) + f") x{c}"
            for i, c in zip(first[dup][:5], counts[dup][:5], strict=True)
        )
        warnings.append(f"{int((counts[dup] - 1).sum())} duplicated input points: {pts}")
    if n_configs == p:
        warnings.append(f"as many distinct configurations ({n_configs}) as parameters: the fit interpolates, "
                        "no residual left")
    return xs, y, tuple(warnings)
