"""Budgeted run selection: an Optuna study whose trials are the runs chosen from the grid.

The selector is the scheduler's *proposer*: when a slot frees up it asks Optuna for the next
candidate (``study.ask``), and it reports results back (``study.tell``) as runs finish or fail for
good. Optuna's storage is a journal file kept with the study's tracking store, so ``isoflop
resume`` continues the same selection: trials left ``RUNNING`` by a driver that died are proposed
again first. Each MLflow child run carries its trial number (tag ``isoflop.trial``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from scipy import stats

import laws
from orchestrator.config import SelectionConfig, StudyConfig
from orchestrator.errors import StudyError
from orchestrator.fitting import StudyLaw, study_laws
from orchestrator.grid import PlannedRun
from orchestrator.scheduler import Event
from orchestrator.selection.criteria import Target, target_gradients
from orchestrator.selection.samplers import (
    PARAM,
    CheapestSampler,
    InformationSampler,
    Pool,
    PoolSampler,
    RandomPoolSampler,
    available,
    budget_left,
)
from orchestrator.tracking import law_inputs

TRIAL_TAG = "isoflop.trial"


@dataclass(frozen=True, kw_only=True)
class SelectionView:
    """A budgeted selection as a monitor shows it: ``selection.*`` metrics (spent and budget
    FLOPs; for active selection the noise and misfit estimates and the plan's cost exponent),
    the runs the plan would propose next, and why proposing stopped, if it did."""

    metrics: Mapping[str, float]
    next_runs: Sequence[PlannedRun]
    stopped: str | None = None

    def summary(self) -> str:
        """One line: ``selection: 3.1e+20 of 1e+21 FLOPs (31%), noise 0.4%, misfit 2.1%,
        cost exponent 0.8; next N=1.2e+08 D=2.4e+09, ...``."""
        m = self.metrics
        spent, budget = m.get("selection.spent_flops", 0.0), m.get("selection.budget_flops", 0.0)
        parts = [f"{spent:.3g} of {budget:.3g} FLOPs" + (f" ({100 * spent / budget:.0f}%)" if budget > 0 else "")]
        if "selection.noise_sd" in m:
            parts.append(f"noise {100 * m['selection.noise_sd']:.2g}%, misfit {100 * m['selection.misfit_sd']:.2g}%")
        if "selection.cost_exponent" in m:
            parts.append(f"cost exponent {m['selection.cost_exponent']:g}")
        line = "selection: " + ", ".join(parts)
        if self.stopped:
            return f"{line}; stopped: {self.stopped}"
        if self.next_runs:
            line += "; next " + ", ".join(f"N={r.plan.n_params:.2g} D={r.plan.tokens:.2g}" for r in self.next_runs)
        return line


def selection_law(study: StudyConfig) -> StudyLaw:
    """The law whose target predictions drive the selection (``selection.law``, or the first)."""
    fitted = study_laws(study)
    return next((law for law in fitted if law.name == study.selection.law), fitted[0])


def selection_budget(selection: SelectionConfig, pool_cost: float) -> float:
    """The FLOPs a budgeted selection may spend."""
    if selection.budget_flops is not None:
        return float(selection.budget_flops)
    if selection.budget_fraction is not None:
        return float(selection.budget_fraction) * pool_cost
    return pool_cost


def targets_of(selection: SelectionConfig) -> list[Target]:
    t = selection.target
    out = [Target(kind="loss", inputs=dict(p)) for p in t.points]
    if t.budget is not None:
        out += [Target(kind=q, budget=float(t.budget)) for q in t.quantities]
    return out


def make_pool(runs: Sequence[PlannedRun], law: laws.ScalingLaw, selection: SelectionConfig, budget: float) -> Pool:
    rows = [law_inputs(r.plan, r.spec) for r in runs]
    missing = [k for k in law.inputs if k not in rows[0]]
    if missing:
        raise StudyError("selection.law", f"law {law.name!r} needs inputs {missing} that these runs do not have")
    inputs = {k: np.array([row[k] for row in rows], dtype=np.float64) for k in law.inputs}
    cost = np.array([r.plan.flops for r in runs], dtype=np.float64) + selection.cost_overhead_flops
    space = np.column_stack(
        [np.log(v) if np.all(v > 0) else v for v in inputs.values() if np.ptp(v) > 0] or [np.zeros(len(runs))]
    )
    return Pool(inputs=inputs, cost=cost, budget=budget, space=space)


class Selector:
    """Proposes runs from ``candidates`` under the study's selection settings."""

    def __init__(
        self,
        study: StudyConfig,
        candidates: Sequence[PlannedRun],
        *,
        fit_provider: Callable[[str], laws.LawFit | None],
        storage: optuna.storages.BaseStorage | str | None = None,
        refit_behind: Callable[[], bool] = lambda: False,
    ) -> None:
        sel = study.selection
        if sel.mode == "grid":
            raise ValueError("grid mode runs every candidate; it needs no selector")
        self.config = sel
        self.candidates = list(candidates)
        self.index = {r.spec.run_key: i for i, r in enumerate(self.candidates)}
        chosen = selection_law(study)
        law_name = chosen.name
        self.law_name = law_name  # the study's name for the law (its family is self.law.name)
        self.law = chosen.law
        grid_cost = float(sum(r.plan.flops for r in self.candidates))
        self.pool = make_pool(self.candidates, self.law, sel, selection_budget(sel, grid_cost))
        if self.pool.budget < self.pool.cost.min():
            key = "selection.budget_flops" if sel.budget_flops is not None else "selection.budget_fraction"
            raise StudyError(
                key, f"a budget of {self.pool.budget:.3g} FLOPs cannot pay for even the cheapest run ({self.pool.cost.min():.3g})"
            )
        self.targets = targets_of(sel)
        self._fit = lambda: fit_provider(law_name)
        self.sampler = self._sampler(study)
        self.study = optuna.create_study(
            study_name=study.name,
            storage=storage,
            sampler=self.sampler,
            direction="minimize",
            load_if_exists=True,
        )
        self._refit_behind = refit_behind
        self._trials: dict[str, int] = {}  # run key -> trial number, for runs of this invocation
        self.stopped: str | None = None  # why no more runs are proposed
        self._requeue = self._resume()

    def _sampler(self, study: StudyConfig) -> PoolSampler:
        sel = study.selection
        if sel.mode == "random":
            return RandomPoolSampler(self.pool, seed=study.seed)
        if sel.mode == "cheapest":
            return CheapestSampler(self.pool, seed=study.seed)
        return InformationSampler(
            self.pool,
            law=self.law,
            fit_provider=self._fit,
            targets=self.targets,
            initial_runs=sel.initial_runs or 2 * self.law.n_params,
            gamma=sel.cost_exponent,
            discrepancy=sel.discrepancy,
            misfit_prior=sel.misfit_prior,
            seed=study.seed,
        )

    # -- resume -------------------------------------------------------------------------------
    def _resume(self) -> list[PlannedRun]:
        """Trials a previous driver left RUNNING: their runs are proposed again first."""
        again = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if PARAM not in t.params:
                self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                continue
            run = self.candidates[int(t.params[PARAM])]
            self._trials[run.spec.run_key] = t.number
            again.append(run)
        return again

    # -- the proposer protocol used by the scheduler -----------------------------------------------
    def propose(self, k: int) -> list[PlannedRun]:
        """Up to ``k`` new runs (fewer, or none, when the budget or the stopping rule says so)."""
        out: list[PlannedRun] = []
        while self._requeue and len(out) < k:
            out.append(self._tagged(self._requeue.pop(0)))
        while len(out) < k and self.stopped is None:
            if self.waiting():
                break
            if not available(self.study, self.pool).any():
                self.stopped = f"budget spent ({self.spent():.3g} of {self.pool.budget:.3g} FLOPs)"
                break
            trial = self.study.ask({PARAM: self.pool.distribution()})
            i = int(trial.params[PARAM])
            run = self.candidates[i]
            # the trial says which run it is in the study's own terms, not only by pool index
            trial.set_user_attr("run_key", run.spec.run_key)
            trial.set_user_attr("inputs", {k: float(v[i]) for k, v in self.pool.inputs.items()})
            trial.set_user_attr("flops", float(run.plan.flops))
            self._trials[run.spec.run_key] = trial.number
            out.append(self._tagged(run))
        return out

    def waiting(self) -> bool:
        """True when active selection has proposed its space-filling start and waits for a fit
        of those runs (which is on its way: runs in flight, or a refit behind) before the
        criterion takes over. Without this, runs that finish in an instant (a replayed table)
        would all be proposed from the space-filling design before the first fit arrives."""
        if not isinstance(self.sampler, InformationSampler) or self.stopped is not None:
            return False
        fit_ = self._fit()
        if fit_ is not None and fit_.report.n_points >= self.sampler.initial_runs:
            return False
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        if sum(PARAM in t.params for t in trials) < self.sampler.initial_runs:
            return False
        return self._refit_behind() or any(t.state == TrialState.RUNNING for t in trials)

    def observe(self, event: Event) -> None:
        """Tell Optuna how a proposed run ended."""
        number = self._trials.get(event.run.spec.run_key)
        if number is None:
            return
        if event.kind in ("finish", "skip") and event.finished is not None:
            self.study.tell(number, event.finished.final_loss, skip_if_finished=True)
        elif event.kind == "fail":
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)

    def check_stop(self, fit_: laws.LawFit | None) -> None:
        """Stop proposing once every target's 95 % interval is within the tolerance."""
        tol = self.config.tolerance
        if tol <= 0 or fit_ is None or self.stopped is not None:
            return
        widths = target_widths(fit_, self.targets)
        if widths and max(widths.values()) <= tol:
            self.stopped = f"target intervals within +-{tol:g} ({', '.join(f'{k}: {v:.3g}' for k, v in widths.items())})"

    def next_choices(self, k: int = 3) -> list[PlannedRun]:
        """The next ``k`` runs the latest plan would propose (active selection; empty before
        the criterion takes over, and for the baselines)."""
        if not isinstance(self.sampler, InformationSampler):
            return []
        taken = {int(t.params[PARAM]) for t in self.study.get_trials(deepcopy=False) if PARAM in t.params}
        return [self.candidates[i] for i in self.sampler.upcoming if i not in taken][:k]

    def view(self) -> SelectionView:
        """What a monitor shows of the selection now."""
        return SelectionView(metrics=self.diagnostics(), next_runs=self.next_choices(), stopped=self.stopped)

    def diagnostics(self) -> dict[str, float]:
        """What the selection has spent and, for active selection, what it currently believes:
        the noise and the law's misfit the residuals show (standard deviations of a run's
        log-loss; the misfit's length-scale in standard deviations of the pool's log-inputs) and
        the cost exponent of the current plan. Logged on the parent run as ``selection.*``."""
        out = {"selection.spent_flops": self.spent(), "selection.budget_flops": self.pool.budget}
        sampler = self.sampler
        if isinstance(sampler, InformationSampler):
            if sampler.last_found is not None:
                d = sampler.last_found
                out["selection.noise_sd"] = float(np.sqrt(d.noise))
                out["selection.misfit_sd"] = float(np.sqrt(d.scale))
                out["selection.misfit_length"] = float(d.length)
            if sampler.last_exponent is not None:
                out["selection.cost_exponent"] = float(sampler.last_exponent)
        return out

    # -- helpers ----------------------------------------------------------------------------------
    def spent(self) -> float:
        return self.pool.budget - budget_left(self.study, self.pool)

    def _tagged(self, run: PlannedRun) -> PlannedRun:
        return replace(run, tags={**run.tags, TRIAL_TAG: str(self._trials[run.spec.run_key])})


def target_widths(fit_: laws.LawFit, targets: Sequence[Target], level: float = 0.95) -> dict[str, float]:
    """Relative half-width of each target's interval (delta method on the fit's covariance)."""
    cov = fit_.covariance_matrix
    if cov is None:
        return {}
    g = target_gradients(fit_.get_law(), fit_, targets)
    z = float(stats.norm.ppf(0.5 + level / 2))
    sd = np.sqrt(np.clip(np.einsum("tp,pq,tq->t", g, cov, g), 0, None))
    return {t.label: float(np.expm1(z * s)) for t, s in zip(targets, sd, strict=True)}


def journal_storage(path: Path) -> JournalStorage:
    """Optuna's journal-file storage (safe with several processes; SQLite is not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))
