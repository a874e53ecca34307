"""Fitting a study's laws to its finished runs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

import laws
from orchestrator.tracking import FinishedRun


@dataclass(frozen=True, kw_only=True)
class LawOutcome:
    """A law's fit on a study, or why there is none yet."""

    name: str
    fit: laws.LawFit | None
    n_points: int
    error: str | None = None


def law_table(law: laws.ScalingLaw, runs: Sequence[FinishedRun]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The law's inputs and the observed losses of ``runs``."""
    inputs: dict[str, np.ndarray] = {}
    for name in law.inputs:
        missing = [r.run_key for r in runs if name not in r.inputs]
        if missing:
            raise ValueError(f"law {law.name!r} needs input {name!r}, which runs {missing[:3]} do not record")
        inputs[name] = np.array([r.inputs[name] for r in runs], dtype=np.float64)
    loss = np.array([r.final_loss for r in runs], dtype=np.float64)
    return inputs, loss


def fit_laws(names: Iterable[str], runs: Iterable[FinishedRun], *, seed: int = 0) -> list[LawOutcome]:
    """Fit every named law; a law that cannot be fitted yet reports why instead of raising."""
    finished = sorted(runs, key=lambda r: r.run_key)
    outcomes = []
    for name in names:
        law = laws.get_law(name)
        try:
            inputs, loss = law_table(law, finished)
            fit = laws.fit(law, inputs, loss)
            outcomes.append(LawOutcome(name=name, fit=fit, n_points=len(finished)))
        except ValueError as exc:
            outcomes.append(LawOutcome(name=name, fit=None, n_points=len(finished), error=str(exc)))
    return outcomes
