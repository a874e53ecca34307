"""Fitting a study's laws to its finished runs.

A study names its laws with :class:`~orchestrator.config.LawConfig`; each becomes a
:class:`StudyLaw`: the law object (mixture laws get the study's domain count, custom laws are
compiled from their expression), the loss it explains (the mixture-weighted held-out loss, one
domain's, or finetuning's pretraining loss) and the runs it is fitted to (the grid's own, the
distillation teachers, the pretrained runs, or all). A distillation law names the study's
supervised law, whose current fit gives it the student's supervised loss Ls~; laws are fitted in
the study's order so that the supervised law is always fitted first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

import laws
from laws.mixture import is_mixture_law
from orchestrator.config import LawConfig, StudyConfig
from orchestrator.tracking import FinishedRun

#: families a distillation law can take its supervised loss from
SUPERVISED_FAMILIES = ("chinchilla_gamma", "chinchilla")

#: mixture laws leave E weakly identified (traded against the scale of the mixture term), so a
#: resample's optimum lies far along a flat valley: up to about 1000 Newton iterations away
MIXTURE_RESAMPLE_OPTIONS = laws.NewtonOptions(max_iter=1000)


def resample_options(fit_: laws.LawFit) -> laws.NewtonOptions | None:
    """The Newton options a bootstrap refit of ``fit_``'s law needs (None: the defaults)."""
    return MIXTURE_RESAMPLE_OPTIONS if is_mixture_law(fit_.law) else None


@dataclass(frozen=True, kw_only=True)
class StudyLaw:
    """A law as a study fits it: which runs, which loss."""

    name: str
    law: laws.ScalingLaw
    loss: str = "loss"
    runs: str = "main"
    supervised: str | None = None

    def select(self, runs: Iterable[FinishedRun]) -> list[FinishedRun]:
        """The runs this law is fitted to, in a stable order."""
        chosen = runs if self.runs == "all" else (r for r in runs if r.stage == self.runs)
        return sorted(chosen, key=lambda r: r.run_key)

    def select_keys(self, runs: Iterable[FinishedRun]) -> list[str]:
        """The run keys of :meth:`select`, in its order."""
        return [r.run_key for r in self.select(runs)]

    def table(self, runs: Sequence[FinishedRun]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The law's inputs and observed losses over the runs it is fitted to."""
        return law_table(self.law, self.select(runs), loss=self.loss)

    def groups(self, runs: Sequence[FinishedRun]) -> np.ndarray | None:
        """The bootstrap resampling unit of each run of :meth:`table`, when the runs have groups
        (a replayed table's group column; a run without one is a unit of its own); None: resample
        configurations."""
        chosen = self.select(runs)
        if not any(r.group for r in chosen):
            return None
        return np.array([r.group or f"run {r.run_key}" for r in chosen])

    def with_supervised(self, fit_: laws.LawFit) -> StudyLaw:
        """This distillation law, its Ls~ given by the supervised law's ``fit_``."""
        params = dict(fit_.params)
        params.setdefault("gamma", 1.0)  # plain Chinchilla is the gamma = 1 case
        return dataclasses.replace(self, law=laws.get_law(self.law.name, supervised=params))


def as_study_law(law: StudyLaw | str) -> StudyLaw:
    """A study law, or a built-in family's name for that family fitted to the main runs' loss."""
    return law if isinstance(law, StudyLaw) else StudyLaw(name=law, law=laws.get_law(law))


def build_law(config: LawConfig, n_domains: int) -> laws.ScalingLaw:
    """The law object a study's law entry names (raises ValueError when it cannot be built)."""
    if config.family == "custom":
        spec = {
            "name": config.name or "custom",
            "expression": config.expression,
            "inputs": list(config.inputs),
            "params": dict(config.params),
        }
        return laws.custom_law(spec)
    options = {"k": n_domains} if config.family.startswith("mixture_") else {}
    return laws.get_law(config.family, **options)


def study_laws(study: StudyConfig) -> list[StudyLaw]:
    """The study's laws, in its order."""
    from orchestrator.grid import domain_names

    n_domains = len(domain_names(study))
    return [
        StudyLaw(
            name=law_name(c),
            law=build_law(c, n_domains),
            loss=c.loss,
            runs=c.runs,
            supervised=c.supervised,
        )
        for c in study.laws
    ]


def law_name(config: LawConfig) -> str:
    """How a study's law is logged and exported."""
    return config.name or config.family


def run_loss(run: FinishedRun, loss: str) -> float | None:
    """The loss ``loss`` of a finished run: ``loss`` is its final held-out loss; anything else is
    a metric it recorded (``eval_loss/<domain>``, ``pretrain_loss``)."""
    if loss == "loss":
        return run.final_loss
    value = run.metrics.get(loss)
    return None if value is None else float(value)


def law_table(
    law: laws.ScalingLaw, runs: Sequence[FinishedRun], *, loss: str = "loss"
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The law's inputs and the observed losses of ``runs``."""
    inputs: dict[str, np.ndarray] = {}
    for name in law.inputs:
        missing = [r.run_key for r in runs if name not in r.inputs]
        if missing:
            raise ValueError(f"law {law.name!r} needs input {name!r}, which runs {missing[:3]} do not record")
        inputs[name] = np.array([r.inputs[name] for r in runs], dtype=np.float64)
    values = [run_loss(r, loss) for r in runs]
    missing = [r.run_key for r, v in zip(runs, values, strict=True) if v is None]
    if missing:
        raise ValueError(f"law {law.name!r} is fitted to {loss!r}, which runs {missing[:3]} do not record")
    return inputs, np.array(values, dtype=np.float64)


@dataclass(frozen=True, kw_only=True)
class LawOutcome:
    """A law's fit on a study, or why there is none yet."""

    name: str
    fit: laws.LawFit | None
    n_points: int
    error: str | None = None


def resolve(law: StudyLaw, fits: Mapping[str, laws.LawFit | None]) -> StudyLaw:
    """``law`` ready to fit: a distillation law gets the current fit of its supervised law.
    Raises ValueError when that law has no fit yet."""
    if law.supervised is None:
        return law
    fit_ = fits.get(law.supervised)
    if fit_ is None:
        raise ValueError(f"law {law.name!r} needs its supervised law {law.supervised!r} fitted first")
    return law.with_supervised(fit_)


def fit_laws(study_laws_: Iterable[StudyLaw | str], runs: Iterable[FinishedRun], *, seed: int = 0) -> list[LawOutcome]:
    """Fit every law to its runs; a law that cannot be fitted yet reports why instead of raising."""
    finished = list(runs)
    outcomes = []
    fits: dict[str, laws.LawFit | None] = {}
    for law in map(as_study_law, study_laws_):
        n = len(law.select(finished))
        try:
            ready = resolve(law, fits)
            inputs, loss = ready.table(finished)
            fit = laws.fit(ready.law, inputs, loss)
            outcomes.append(LawOutcome(name=law.name, fit=fit, n_points=n))
        except ValueError as exc:
            fit = None
            outcomes.append(LawOutcome(name=law.name, fit=None, n_points=n, error=str(exc)))
        fits[law.name] = fit
    return outcomes
