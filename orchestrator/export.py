"""``isoflop export``: a study's fitted laws, their recipes and the runs behind them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import laws
from laws.bootstrap import bootstrap as bootstrap_fit
from laws.bootstrap import joint_bootstrap
from laws.mixture import is_mixture_law
from orchestrator.config import StudyConfig
from orchestrator.errors import StudyError
from orchestrator.fitting import (
    MIXTURE_RESAMPLE_OPTIONS,
    LawOutcome,
    StudyLaw,
    fit_laws,
    resample_options,
    study_laws,
)
from orchestrator.grid import expand
from orchestrator.secrets import redact_text
from orchestrator.study import open_tracker, tracking_uri
from orchestrator.tracking import FinishedRun


def cost_convention(study: StudyConfig, runs: Sequence[FinishedRun]) -> str | None:
    """A warning when a replayed study's runs cost otherwise than the C = 6ND that compute-optimal
    allocations use (their ``trainer.replay.cost``, as each run recorded it); None when they agree."""
    if study.trainer.kind != "replay":
        return None
    if all(np.isclose(r.inputs["C"], 6.0 * r.inputs["N"] * r.inputs["D"], rtol=1e-9, atol=0.0) for r in runs):
        return None
    return (
        f"compute-optimal allocations assume C = 6ND, but this study's runs cost {study.trainer.replay.cost} "
        "(trainer.replay.cost): an allocation's C is not a budget in the runs' own convention"
    )


def default_budgets(max_run_flops: float) -> list[float]:
    """Without budgets in the study: 10x, 100x and 1000x the largest run."""
    return [max_run_flops * f for f in (10.0, 100.0, 1000.0)]


def export_study(
    study: StudyConfig, *, budgets: Sequence[float] | None = None, bootstrap: int | None = None
) -> dict[str, Any]:
    """Refit the study's laws on its finished runs and describe them (see ``laws.export_document``)."""
    return export_with_runs(study, budgets=budgets, bootstrap=bootstrap)[0]


def _bootstraps(
    fitted: Sequence[tuple[StudyLaw, LawOutcome]], runs: Sequence[FinishedRun], resamples: int, *, seed: int
) -> tuple[list[laws.BootstrapResult | None], dict[str, str]]:
    """A bootstrap per law (resampling whole configurations, or the runs' groups when they have
    them), and why a law has none. Mixture laws
    fitted to the same runs (one per target domain) are resampled jointly, the same runs in every
    resample, so the optimal mixture they imply together gets intervals that see their correlated
    errors."""
    boots: dict[str, laws.BootstrapResult | None] = {}
    failed: dict[str, str] = {}
    mixtures = [(law, o) for law, o in fitted if o.fit is not None and is_mixture_law(o.fit.law)]
    tables = {law.name: law.table(runs) for law, _ in mixtures}
    same_runs = len({tuple(law.select_keys(runs)) for law, _ in mixtures}) == 1
    if len(mixtures) > 1 and same_runs:
        first = tables[mixtures[0][0].name][0]
        try:
            joint = joint_bootstrap(
                [o.fit for _, o in mixtures], first, [tables[law.name][1] for law, _ in mixtures],  # type: ignore[misc]
                n_resamples=resamples, seed=seed, options=MIXTURE_RESAMPLE_OPTIONS, groups=mixtures[0][0].groups(runs),
            )
            boots.update({law.name: b for (law, _), b in zip(mixtures, joint, strict=True)})
        except ValueError as exc:
            failed.update({law.name: str(exc) for law, _ in mixtures})
    for law, outcome in fitted:
        if law.name in boots or law.name in failed:
            continue
        try:
            inputs, y = tables.get(law.name) or law.table(runs)
            boots[law.name] = bootstrap_fit(
                outcome.fit, inputs, y, n_resamples=resamples, seed=seed, options=resample_options(outcome.fit),  # type: ignore[arg-type]
                groups=law.groups(runs),
            )
        except ValueError as exc:  # e.g. too few configurations to resample: parametric only
            failed[law.name] = str(exc)
    return [boots.get(law.name) for law, _ in fitted], failed


def grid_runs(study: StudyConfig, stored: Mapping[str, FinishedRun]) -> tuple[list[FinishedRun], int]:
    """The ``stored`` runs (by run key) of the study's grid, which its laws are fitted on, as
    ``isoflop run`` fits them; and how many stored runs are not in the grid (a grid since changed:
    not counted, not fitted)."""
    if study.trainer.kind == "replay" and not Path(study.trainer.replay.path).exists():
        # exported on another machine than the one the study ran on: its table is not here, but
        # its runs are in the store, every one of them a row of it
        return list(stored.values()), 0
    keys = {r.spec.run_key for r in expand(study)}
    return [r for k, r in stored.items() if k in keys], sum(k not in keys for k in stored)


def export_by_name(study: StudyConfig) -> str:
    """The command that exports ``study`` as it was last run: by name, from its stored config."""
    store = f" --tracking-uri {redact_text(study.tracking.uri)}" if study.tracking.uri else ""
    return f"isoflop export {study.name}{store}"


def fit_histories(study: StudyConfig, names: Sequence[str]) -> dict[str, dict[int, dict[str, float]]]:
    """Every logged fit of each named law of the study, by step (for parameter trajectories)."""
    tracker = open_tracker(study)
    tracker.attach(study.name)
    return {name: tracker.fit_history(name) for name in names}


def export_with_runs(
    study: StudyConfig, *, budgets: Sequence[float] | None = None, bootstrap: int | None = None
) -> tuple[dict[str, Any], list[FinishedRun]]:
    """The export document and the finished runs it was fitted on. ``bootstrap`` resamples
    (default ``export.bootstrap``) add percentile intervals to every law that can be resampled."""
    tracker = open_tracker(study)
    parent = tracker.attach(study.name)
    runs, outside = grid_runs(study, tracker.finished_runs())
    if not runs:
        elsewhere = (
            f" ({outside} stored runs belong to another grid, or to overrides given to isoflop run: "
            f"`{export_by_name(study)}` uses the study as it was last run)"
            if outside
            else ""
        )
        raise StudyError("", f"study {study.name!r} has no finished runs of its grid to fit yet{elsewhere}")
    budgets = list(budgets or study.export.budgets or default_budgets(max(r.inputs.get("C", 0.0) for r in runs)))
    chosen = study_laws(study)
    outcomes = fit_laws(chosen, runs, seed=study.seed)
    fitted = [(law, o) for law, o in zip(chosen, outcomes, strict=True) if o.fit is not None]
    resamples = study.export.bootstrap if bootstrap is None else bootstrap
    boots, failed = _bootstraps(fitted, runs, resamples, seed=study.seed) if resamples > 0 else (None, {})
    document = laws.export_document(
        [o.fit for _, o in fitted],  # type: ignore[misc]
        budgets=budgets,
        bootstrap=boots,
        mixture_at=study.export.mixture_at if any(is_mixture_law(o.fit.law) for _, o in fitted) else (),  # type: ignore[union-attr]
    )
    mixture_names = [law.name for law, o in fitted if is_mixture_law(o.fit.law)]  # type: ignore[union-attr]
    for row in document.get("optimal_mixture", []):
        row["laws"] = mixture_names  # the study's names for them, in the same order
    convention = cost_convention(study, runs)
    for entry, (law, outcome) in zip(document["laws"], fitted, strict=True):
        # which law of the study this is, and what it was fitted to
        entry["name"] = law.name
        entry["fitted_to"] = {"loss": law.loss, "runs": law.runs, "n_runs": outcome.n_points}
        if law.name in failed:
            entry["bootstrap_error"] = failed[law.name]
        if entry.get("compute_optimal") and convention:
            entry["report"]["warnings"] = [*entry["report"].get("warnings", []), convention]
    document["study"] = {
        "name": study.name,
        "parent_run_id": parent,
        "tracking_uri": redact_text(tracking_uri(study)),
        "finished_runs": len(runs),
        "outside_grid": outside,
        "not_fitted": {o.name: o.error for o in outcomes if o.fit is None},
    }
    document["runs"] = [
        {"run_key": r.run_key, "run_id": r.run_id, **dict(r.inputs), "loss": r.final_loss}
        for r in sorted(runs, key=lambda r: (r.inputs.get("C", 0.0), r.inputs.get("N", 0.0)))
    ]
    return document, runs
