"""The exported-law document: fitted laws, their uncertainty and the recipes they imply.

One JSON/YAML-able dict, versioned by ``schema_version``::

    {"schema_version": 1,
     "laws": [{"law": "chinchilla", "formula": "...", "inputs": [...], "params": {...},
               "intervals": {"E": [lo, hi], ...}, "interval_method": "...", "level": 0.95,
               "objective": ..., "report": {...}, "covariance": [[...]], "law_spec": {...},
               "compute_optimal": [{"C": ..., "N_opt": ..., "D_opt": ...,
                                    "tokens_per_param": ..., "loss": ...}, ...]}, ...]}

:func:`load_document` turns it back into :class:`~laws.result.LawFit` objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from laws.recipes import compute_optimal
from laws.result import LawFit
from laws.uncertainty import parametric_intervals

SCHEMA_VERSION = 1


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
    if budgets and set(law.inputs) == {"N", "D"}:
        entry["compute_optimal"] = [
            {"C": a.C, "N_opt": a.N_opt, "D_opt": a.D_opt, "tokens_per_param": a.tokens_per_param, "loss": a.loss}
            for a in compute_optimal(fit_, budgets)
        ]
    else:
        entry["compute_optimal"] = []
    return entry


def export_document(
    fits: Sequence[LawFit], *, budgets: Sequence[float] = (), level: float = 0.95
) -> dict[str, Any]:
    """The exported document of ``fits`` with compute-optimal recipes at ``budgets`` (FLOPs)."""
    budgets = [float(b) for b in budgets]
    bad = [b for b in budgets if not b > 0 or b == float("inf")]
    if bad:
        raise ValueError(f"budgets must be positive and finite, got {bad}")
    return {
        "schema_version": SCHEMA_VERSION,
        "budgets": budgets,
        "laws": [law_entry(f, budgets=budgets, level=level) for f in fits],
    }


def load_document(document: Mapping[str, Any]) -> list[LawFit]:
    """The fits of an exported document (inverse of :func:`export_document`)."""
    version = document.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"schema_version: expected {SCHEMA_VERSION}, got {version!r}")
    return [LawFit.from_dict(entry) for entry in document.get("laws", [])]
