"""The exported-law document: fitted laws, their uncertainty and the recipes they imply.

One JSON/YAML-able dict, versioned by ``schema_version``::

    {"schema_version": 1,
     "laws": [{"law": "chinchilla", "formula": "...", "inputs": [...], "params": {...},
               "intervals": {"E": [lo, hi], ...}, "interval_method": "...", "level": 0.95,
               "objective": ..., "report": {...}, "covariance": [[...]], "law_spec": {...},
               "compute_optimal": [{"C": ..., "N_opt": ..., "D_opt": ...,
                                    "tokens_per_param": ..., "loss": ...,
                                    "N_opt_interval": [lo, hi] or None,
                                    "D_opt_interval": [lo, hi] or None}, ...],
               "optimal_sparsity": [{"C", "N", "S", "D", "loss", "N_interval", "S_interval",
                                     "D_interval", "loss_interval"}, ...],  # laws in N, D, S only
               "bootstrap": {...}  # only when bootstrap results are given: intervals from the
                                   # converged resamples (None when too few), n_converged,
                                   # warnings (also appended to "report"."warnings")
              }, ...],
     "optimal_mixture": [{"N", "D", "laws", "weights", "loss", "weights_interval",
                          "loss_interval", ...}, ...]}   # only with mixture_at

The JSON Schema of the document is ``laws/export.schema.json`` (:func:`document_schema`).
Keys added after version 1 was first written are optional (``optimal_sparsity``,
``optimal_mixture``, the bootstrap's ``warnings``): readers of version 1 ignore them, so the
version is unchanged. :func:`load_document` turns it back into :class:`~laws.result.LawFit` objects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from laws.bootstrap import BootstrapResult
from laws.recipes import allocation_intervals, compute_optimal
from laws.result import LawFit
from laws.uncertainty import parametric_intervals

SCHEMA_VERSION = 1
#: the document's JSON Schema (draft 2020-12), shipped with the package
SCHEMA_PATH = Path(__file__).with_name("export.schema.json")


def document_schema() -> dict[str, Any]:
    """The JSON Schema every exported document satisfies (validate with any JSON Schema library,
    e.g. ``jsonschema.validate(document, laws.document_schema())``)."""
    return json.loads(SCHEMA_PATH.read_text())


def law_entry(fit_: LawFit, *, budgets: Sequence[float] = (), level: float = 0.95) -> dict[str, Any]:
    """One law of the document: the fit, its parametric intervals and compute-optimal recipes.

    Recipes are given only for laws with N and D among their inputs and no other inputs.
    """
    law = fit_.get_law()
    entry: dict[str, Any] = {
        "law": fit_.law,
        "formula": law.formula,
        "inputs": list(law.inputs),
        **fit_.to_dict(),
        "level": level,
    }
    try:
        entry["intervals"] = {k: list(v) for k, v in parametric_intervals(fit_, level=level).items()}
        entry["interval_method"] = "sandwich covariance, normal approximation (log scale for log parameters)"
    except ValueError as exc:
        entry["intervals"] = None
        entry["interval_method"] = str(exc)
    optima = compute_optimal(fit_, budgets) if budgets and set(law.inputs) == {"N", "D"} else []
    if not all(np.isfinite(a.N_opt) for a in optima):
        exponents = ", ".join(f"{k} = {fit_.params[k]:.4g}" for k in ("alpha", "beta") if k in fit_.params)
        entry["report"] = {**entry["report"], "warnings": [
            *entry["report"].get("warnings", []), f"no compute-optimal allocation: the law's loss has no minimum along an isoFLOP curve ({exponents})"]}
        optima = []
    if optima:
        entry["compute_optimal"] = [
            {"C": a.C, "N_opt": a.N_opt, "D_opt": a.D_opt, "tokens_per_param": a.tokens_per_param, "loss": a.loss}
            for a in optima
        ]
        # parametric (delta-method) intervals, closed form or through the numeric optimum, given a covariance
        intervals = allocation_intervals(fit_, budgets, level=level, optima=optima)
        for item, iv in zip(entry["compute_optimal"], intervals or [None] * len(budgets), strict=True):
            item["N_opt_interval"] = None if iv is None else list(iv["N_opt"])
            item["D_opt_interval"] = None if iv is None else list(iv["D_opt"])
    else:
        entry["compute_optimal"] = []
    if budgets and set(law.inputs) == {"N", "D", "S"}:
        from laws.optimal_intervals import optimal_sparsity_intervals

        entry["optimal_sparsity"] = [_sparsity_row(optimal_sparsity_intervals(fit_, c, level=level)) for c in budgets]
    return entry


def _sparsity_row(iv: Any) -> dict[str, Any]:
    o = iv.optimum
    return {"C": o.C, "N": o.N, "S": o.S, "D": o.D, "loss": o.loss, "N_interval": _pair(iv.N),
            "S_interval": _pair(iv.S), "D_interval": _pair(iv.D), "loss_interval": _pair(iv.loss)}


def bootstrap_entry(
    boot: BootstrapResult,
    *,
    law_inputs: Sequence[str],
    budgets: Sequence[float] = (),
    level: float = 0.95,
    fit_: LawFit | None = None,
) -> dict[str, Any]:
    """Bootstrap percentile intervals of a law: every parameter and, for laws in N and D only,
    N_opt and D_opt at each budget; for sparsity laws (given ``fit_``), the optimal N, S, D and
    loss at each budget."""
    entry: dict[str, Any] = {
        "n_resamples": boot.n_resamples,
        "seed": boot.seed,
        "n_groups": boot.n_groups,
        "n_converged": boot.n_converged,
        "level": level,
        "method": "percentile bootstrap over configurations (converged resamples only)",
        "intervals": {k: _pair(v) for k, v in boot.intervals(level).items()},
        "compute_optimal": [],
        "warnings": list(boot.warnings),
    }
    if budgets and set(law_inputs) == {"N", "D"}:
        for c in budgets:
            opt = boot.optimum_interval(c, level)
            entry["compute_optimal"].append({"C": c, "N_opt": _pair(opt["N_opt"]), "D_opt": _pair(opt["D_opt"])})
    if budgets and set(law_inputs) == {"N", "D", "S"} and fit_ is not None:
        from laws.optimal_intervals import bootstrap_optimal_sparsity

        entry["optimal_sparsity"] = [
            {"C": c, **{k: _pair(getattr(iv, k)) for k in ("N", "S", "D", "loss")}}
            for c in budgets
            for iv in [bootstrap_optimal_sparsity(boot, fit_, c, level=level)]
        ]
    return entry


def _pair(v: tuple[float, float] | None) -> list[float] | None:
    return None if v is None else [float(v[0]), float(v[1])]


def export_document(
    fits: Sequence[LawFit],
    *,
    budgets: Sequence[float] = (),
    level: float = 0.95,
    bootstrap: Sequence[BootstrapResult | None] | None = None,
    mixture_at: Sequence[Mapping[str, float]] = (),
) -> dict[str, Any]:
    """The exported document of ``fits`` with compute-optimal recipes at ``budgets`` (FLOPs).

    ``bootstrap`` (optional, one :class:`~laws.bootstrap.BootstrapResult` or None per fit) adds a
    ``bootstrap`` key with percentile intervals to the corresponding law entries.
    ``mixture_at`` (optional, e.g. ``[{"N": 1e9, "D": 2e10}]``) adds a document-level
    ``optimal_mixture`` list: the mixture minimising the uniformly weighted loss of every mixture
    law in ``fits`` (one per target domain) at each (N, D), with delta-method intervals and, when
    ``bootstrap`` holds one joint bootstrap of those laws, bootstrap intervals.
    """
    budgets = [float(b) for b in budgets]
    bad = [b for b in budgets if not b > 0 or b == float("inf")]
    if bad:
        raise ValueError(f"budgets must be positive and finite, got {bad}")
    if bootstrap is not None and len(bootstrap) != len(fits):
        raise ValueError(f"bootstrap must give one result (or None) per fit: {len(bootstrap)} for {len(fits)} fits")
    entries = [law_entry(f, budgets=budgets, level=level) for f in fits]
    for entry, boot, fit_ in zip(entries, bootstrap or [None] * len(fits), fits, strict=True):
        if boot is not None:
            entry["bootstrap"] = bootstrap_entry(boot, law_inputs=entry["inputs"], budgets=budgets, level=level,
                                                 fit_=fit_)
            # the fit's report carries the bootstrap's warnings too: it is what readers check
            entry["report"]["warnings"] = [*entry["report"]["warnings"], *(f"bootstrap: {w}" for w in boot.warnings)]
    document: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "budgets": budgets, "laws": entries}
    if mixture_at:
        document["optimal_mixture"] = _mixture_rows(fits, bootstrap, mixture_at, level)
    return document


def _mixture_rows(
    fits: Sequence[LawFit], bootstrap: Sequence[BootstrapResult | None] | None,
    points: Sequence[Mapping[str, float]], level: float,
) -> list[dict[str, Any]]:
    from laws.mixture import is_mixture_law
    from laws.optimal_intervals import bootstrap_optimal_mixture, optimal_mixture_intervals

    idx = [i for i, f in enumerate(fits) if is_mixture_law(f.law)]
    if not idx:
        raise ValueError("mixture_at: the document has no mixture law (mixture_additive or mixture_joint)")
    mix = [fits[i] for i in idx]
    boots = [bootstrap[i] for i in idx] if bootstrap is not None else []
    joint = bool(boots) and all(b is not None for b in boots) and len({b.resample_digest for b in boots}) == 1
    rows = []
    for at in points:
        missing = [k for k in ("N", "D") if k not in at]
        if missing:
            raise ValueError(f"mixture_at: each point needs N and D; {dict(at)} lacks {missing}")
        n, d = float(at["N"]), float(at["D"])
        iv = optimal_mixture_intervals(mix, N=n, D=d, level=level)
        row: dict[str, Any] = {
            "N": n, "D": d, "laws": [f.law for f in mix],
            "weights": list(iv.optimum.weights), "loss": iv.optimum.loss,
            "weights_interval": None if iv.weights is None else [list(w) for w in iv.weights],
            "loss_interval": _pair(iv.loss), "interval_method": iv.method, "warnings": list(iv.warnings),
        }
        if joint:
            bi = bootstrap_optimal_mixture(boots, mix, N=n, D=d, level=level)  # type: ignore[arg-type]
            row["bootstrap_weights_interval"] = None if bi.weights is None else [list(w) for w in bi.weights]
            row["bootstrap_loss_interval"] = _pair(bi.loss)
            row["warnings"] += [f"bootstrap: {w}" for w in bi.warnings]
        rows.append(row)
    return rows


def load_document(document: Mapping[str, Any]) -> list[LawFit]:
    """The fits of an exported document (inverse of :func:`export_document`)."""
    version = document.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"schema_version: expected {SCHEMA_VERSION}, got {version!r}")
    return [LawFit.from_dict(entry) for entry in document.get("laws", [])]
