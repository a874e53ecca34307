"""Scaling laws: families, one batched multi-start fitter, uncertainty, recipes and export.

Typical use::

    import laws
    law = laws.get_law("chinchilla")
    fit = laws.fit(law, {"N": n, "D": d}, loss)
    fit.params, fit.report, fit.predict(N=7e10, D=1.4e12)
    laws.compute_optimal(fit, [1e21, 1e23])
"""

from __future__ import annotations

from laws.base import FitRecipe, LinearLSELaw, Param, ScalingLaw
from laws.export import SCHEMA_VERSION, export_document, load_document
from laws.fit import fit
from laws.io import load_table
from laws.optimizer import NewtonOptions
from laws.recipes import Allocation, IsoflopMinimum, compute_optimal, isoflop_minima
from laws.registry import LAW_NAMES, get_law, law_from_spec
from laws.result import FitReport, LawFit
from laws.uncertainty import parametric_intervals, prediction_interval, prediction_jacobian

__all__ = [
    "LAW_NAMES",
    "SCHEMA_VERSION",
    "Allocation",
    "FitRecipe",
    "FitReport",
    "IsoflopMinimum",
    "LawFit",
    "LinearLSELaw",
    "NewtonOptions",
    "Param",
    "ScalingLaw",
    "compute_optimal",
    "export_document",
    "fit",
    "get_law",
    "isoflop_minima",
    "law_from_spec",
    "load_document",
    "load_table",
    "parametric_intervals",
    "prediction_interval",
    "prediction_jacobian",
]
