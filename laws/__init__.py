"""Scaling laws: families, one batched multi-start fitter, uncertainty, recipes and export.

Typical use::

    import laws
    law = laws.get_law("chinchilla")
    fit = laws.fit(law, {"N": n, "D": d}, loss)
    fit.params, fit.report, fit.predict(N=7e10, D=1.4e12)
    laws.compute_optimal(fit, [1e21, 1e23])

Families (``LAW_NAMES``): chinchilla, chinchilla_gamma, distillation, sparsity,
mixture_additive, mixture_joint, forgetting, forgetting_ft, and custom laws from a YAML
expression (:func:`custom_law`). Uncertainty: :func:`parametric_intervals`,
:func:`prediction_interval`, :func:`laws.bootstrap.bootstrap`. Recipes beyond compute-optimal
allocation: :mod:`laws.optimal` (mixture weights, sparsity, pretraining-data injection) and
:func:`plan_distillation` (distil or train supervised, :mod:`laws.distill_plan`), with intervals on the optimal sparsity and
the optimal mixture in :mod:`laws.optimal_intervals` (delta method and bootstrap, joint across
per-domain laws: :func:`laws.bootstrap.joint_bootstrap`). ``isoflop fit`` and ``isoflop distill-plan``: :mod:`laws.cli`.
"""

from __future__ import annotations

from laws.base import FitRecipe, LinearLSELaw, Param, ScalingLaw
from laws.bootstrap import BootstrapResult
from laws.custom import CustomLaw, CustomLawError, custom_law
from laws.distill_plan import SCENARIOS as DISTILLATION_SCENARIOS
from laws.distill_plan import DistillationPlan, plan_distillation
from laws.export import SCHEMA_VERSION, document_schema, export_document, load_document
from laws.fit import Screen, fit
from laws.io import load_table
from laws.optimizer import Cancelled, NewtonOptions
from laws.recipes import Allocation, IsoflopMinimum, compute_optimal, isoflop_minima
from laws.registry import LAW_NAMES, get_law, law_from_spec
from laws.result import FitReport, LawFit
from laws.uncertainty import parametric_intervals, prediction_interval, prediction_jacobian

__all__ = [
    "DISTILLATION_SCENARIOS",
    "LAW_NAMES",
    "SCHEMA_VERSION",
    "Allocation",
    "BootstrapResult",
    "Cancelled",
    "CustomLaw",
    "CustomLawError",
    "DistillationPlan",
    "FitRecipe",
    "FitReport",
    "IsoflopMinimum",
    "LawFit",
    "LinearLSELaw",
    "NewtonOptions",
    "Param",
    "ScalingLaw",
    "Screen",
    "compute_optimal",
    "custom_law",
    "document_schema",
    "export_document",
    "fit",
    "get_law",
    "isoflop_minima",
    "law_from_spec",
    "load_document",
    "load_table",
    "parametric_intervals",
    "plan_distillation",
    "prediction_interval",
    "prediction_jacobian",
]
