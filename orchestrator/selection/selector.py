"""Budgeted run selection: an Optuna study whose trials are the runs chosen from the grid.

The selector is the scheduler's *proposer*: when a slot frees up it asks Optuna for the next
candidate (``study.ask``), and it reports results back (``study.tell``) as runs finish or fail for
good. Optuna's storage is a journal file kept with the study's tracking store, so ``isoflop
resume`` continues the same selection: trials left ``RUNNING`` by a driver that died are proposed
again first. Each MLflow child run carries its trial number (tag ``isoflop.trial``).

Runs that start from other runs (distillation students from their teachers, WSD cooldown
branches from their trunks): only the grid's own runs (stage ``main``) are candidates. A
proposed student comes right after its teacher the first time this invocation needs that
teacher (the scheduler trains it, or skips it when the store or an adopted study has it, and
parks the student until it has finished); the teacher is paid for once
(:mod:`orchestrator.selection.samplers`), and so is a trunk, its branches paying only for their
cooldowns (:func:`~orchestrator.grid.trained_flops`). A student's L_T, unknown until its teacher has
trained, is its teacher's finished loss when known, else the teacher's supervised loss as the
selection law's own supervised law predicts it (the fitted one a distillation fit carries, or the
published one before the first fit); the pool's inputs are refreshed before every proposal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

import laws
from laws.bootstrap import BootstrapResult, unbounded_percentile
from laws.bootstrap import bootstrap as bootstrap_fit
from orchestrator.config import SelectionConfig, StudyConfig
from orchestrator.errors import StudyError
from orchestrator.fitting import StudyLaw, resample_options, study_laws
from orchestrator.grid import PlannedRun, trained_flops
from orchestrator.scheduler import DEPENDENCY_INPUTS, Event
from orchestrator.selection.criteria import Target
from orchestrator.selection.samplers import (
    DROPPED,
    PARAM,
    PRIOR,
    UPSTREAM_FLOPS,
    CheapestSampler,
    InformationSampler,
    Pool,
    PoolSampler,
    RandomPoolSampler,
    available,
    committed,
    proposed,
)
from orchestrator.selection.samplers import spent as spent_flops
from orchestrator.tracking import FinishedRun, law_inputs

TRIAL_TAG = "isoflop.trial"
#: bootstrap resamples behind the tolerance stop's intervals (:func:`target_widths`)
STOP_RESAMPLES = 200
#: ... weighing configurations by the Bayesian bootstrap (:func:`laws.bootstrap.resample_weights`)
STOP_SCHEME = "bayesian"
#: ... and no interval for the stopping rule from fewer configurations than this per law parameter
MIN_CONFIGURATIONS_PER_PARAM = 2
#: study user attribute (in the journal): the tolerance stop, once it fired (reason, widest interval, runs)
STOP_ATTR = "tolerance_stop"
#: a stopping bootstrap slower than this (seconds) is redone only once the runs have grown by
#: this factor (:meth:`Selector.stop_widths`)
STOP_SLOW_S = 1.0
STOP_GROWTH = 1.25


#: the ``selection.*`` metrics only active selection logs (its estimates and plan)
ACTIVE_METRICS = ("selection.noise_sd", "selection.misfit_sd", "selection.misfit_length", "selection.cost_exponent")
#: ... and those a selection with a tolerance logs (its stopping rule's)
TOLERANCE_METRICS = ("selection.tolerance", "selection.widest_interval", "selection.widest_interval_runs")


@dataclass(frozen=True, kw_only=True)
class SelectionView:
    """A budgeted selection as a monitor shows it: ``selection.*`` metrics (spent and budget
    FLOPs; for active selection the noise and misfit estimates and the plan's cost exponent),
    the runs the plan would propose next, and why proposing stopped, if it did."""

    metrics: Mapping[str, float]
    next_runs: Sequence[PlannedRun]
    stopped: str | None = None

    def summary(self) -> str:
        """One line: ``selection: 3.1e+20 of 1e+21 FLOPs committed (31%), noise 0.4%, misfit
        2.1%, cost exponent 0.8; next N=1.2e+08 D=2.4e+09, ...``. Committed: the cost of every
        run proposed, finished or not (a run an interrupted study left unfinished is trained
        again on resume, and paid for once)."""
        m = self.metrics
        spent, budget = m.get("selection.spent_flops", 0.0), m.get("selection.budget_flops", 0.0)
        parts = [f"{spent:.3g} of {budget:.3g} FLOPs committed" + (f" ({100 * spent / budget:.0f}%)" if budget > 0 else "")]
        if "selection.noise_sd" in m:
            parts.append(f"noise {100 * m['selection.noise_sd']:.2g}%, misfit {100 * m['selection.misfit_sd']:.2g}%")
        if "selection.cost_exponent" in m:
            parts.append(f"cost exponent {m['selection.cost_exponent']:g}")
        if "selection.tolerance" in m:
            widest, runs = m.get("selection.widest_interval"), m.get("selection.widest_interval_runs")
            # the interval is the latest bootstrap's, which may be some runs old (a slow law's)
            on = f" on {runs:.0f} runs" if runs is not None else ""
            parts.append(
                f"widest target interval +-{widest:.3g}{on} (stop at +-{m['selection.tolerance']:g})" if widest is not None
                else f"no bootstrap interval of the targets yet (stop at +-{m['selection.tolerance']:g})"
            )
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


def supervised_losses(law: laws.ScalingLaw, runs: Sequence[PlannedRun]) -> np.ndarray:
    """The supervised loss ``law``'s own supervised law expects of each run (a teacher) at its
    (N, D): a distillation law's Ls~ law (Busbridge et al. 2025, Eq. 1), evaluated at the
    teacher's size and tokens instead of the student's. [len(runs)]"""
    supervised = getattr(law, "supervised", None)
    if not isinstance(supervised, Mapping):
        raise StudyError(
            "selection.law",
            f"law {law.name!r} takes the teacher's loss L_T but has no supervised law to predict it before the teacher trains; "
            "use a distillation law",
        )
    n = np.array([float(r.plan.n_params) for r in runs])
    d = np.array([float(r.plan.tokens) for r in runs])
    return np.asarray(laws.get_law("chinchilla_gamma").predict({"gamma": 1.0, **supervised}, N=n, D=d), dtype=np.float64)


def make_pool(
    runs: Sequence[PlannedRun],
    law: laws.ScalingLaw,
    selection: SelectionConfig,
    budget: float,
    upstream: Sequence[PlannedRun] = (),
) -> Pool:
    """The candidate pool of ``runs`` (the grid's own runs) for ``law``. ``upstream``: the runs
    they start from (teachers), never candidates themselves; a candidate's law input that one of
    them gives (L_T) starts as ``law``'s prediction (:func:`supervised_losses`) and is refreshed
    by the selector. Costs are the FLOPs each run trains (:func:`~orchestrator.grid.trained_flops`)
    plus the fixed overhead."""
    runs = list(runs)
    index = {r.key: i for i, r in enumerate(upstream)}
    dependent = [next(iter(r.depends_on.values()), None) for r in runs]
    if any(len(r.depends_on) > 1 for r in runs):
        raise StudyError("grid", "a candidate run may start from one other run at most")
    if missing := sorted({k for k in dependent if k is not None and k not in index}):
        raise StudyError("grid", f"candidate runs depend on {missing[:1]}, which is not among the study's runs")
    given = {DEPENDENCY_INPUTS[use] for r in runs for use in r.depends_on if use in DEPENDENCY_INPUTS}
    rows = [law_inputs(r.plan, r.spec, r.inputs) for r in runs]
    missing_inputs = [k for k in law.inputs if k not in rows[0] and k not in given]
    if missing_inputs:
        raise StudyError("selection.law", f"law {law.name!r} needs inputs {missing_inputs} that these runs do not have")
    up = np.array([index[k] if k is not None else -1 for k in dependent], dtype=int)
    inputs = {k: np.array([row[k] for row in rows], dtype=np.float64) for k in law.inputs if k not in given}
    if "L_T" in law.inputs and "L_T" in given:
        inputs["L_T"] = supervised_losses(law, upstream)[up]
    inputs = {k: inputs[k] for k in law.inputs}  # the law's order
    overhead = selection.cost_overhead_flops
    cost = np.array([trained_flops(r) for r in runs], dtype=np.float64) + overhead
    # the space-filling design spreads over the inputs that are known up front, and over the
    # size and tokens of the run a candidate starts from (its L_T is not known up front)
    columns = [v for k, v in inputs.items() if k not in given]
    if given:  # (a cooldown branch's trunk is fixed by the branch's own N: nothing to add)
        columns += [np.array([float(u.plan.n_params) for u in upstream])[up], np.array([float(u.plan.tokens) for u in upstream])[up]]
    space = np.column_stack(
        [np.log(v) if np.all(v > 0) else v for v in columns if np.ptp(v) > 0] or [np.zeros(len(runs))]
    )
    if not upstream:
        return Pool(inputs=inputs, cost=cost, budget=budget, space=space)
    return Pool(
        inputs=inputs, cost=cost, budget=budget, space=space, upstream=up,
        upstream_cost=np.array([trained_flops(u) for u in upstream], dtype=np.float64) + overhead,
        upstream_free=np.zeros(len(upstream), dtype=bool), upstream_failed=np.zeros(len(upstream), dtype=bool),
    )


class Selector:
    """Proposes runs from ``candidates`` under the study's selection settings.

    ``candidates``: the expanded grid; its runs of stage ``main`` are the pool, the others (the
    teachers they start from) are proposed with them when needed, never on their own."""

    def __init__(
        self,
        study: StudyConfig,
        candidates: Sequence[PlannedRun],
        *,
        fit_provider: Callable[[str], laws.LawFit | None],
        storage: optuna.storages.BaseStorage | str | Callable[[], optuna.storages.BaseStorage] | None = None,
        refit_behind: Callable[[], bool] = lambda: False,
        answered: Callable[[str, int], bool] = lambda law, n: True,
        submitted: Callable[[], int] = lambda: 0,
    ) -> None:
        """``storage``: Optuna's storage, or a function that opens it (called only once the
        selection's settings have been checked, so a refused study leaves no journal behind)."""
        sel = study.selection
        if sel.mode == "grid":
            raise ValueError("grid mode runs every candidate; it needs no selector")
        self.config = sel
        runs = list(candidates)
        self.candidates = [r for r in runs if r.stage == "main"]
        self.upstream = {r.key: r for r in runs if r.stage != "main"}  # teachers: proposed with their students
        self._upstream_index = {k: u for u, k in enumerate(self.upstream)}
        self.index = {r.spec.run_key: i for i, r in enumerate(self.candidates)}
        chosen = selection_law(study)
        law_name = chosen.name
        self.law_name = law_name  # the study's name for the law (its family is self.law.name)
        self.law = chosen.law
        self.pool = selection_pool(study, runs, self.law)
        check_affordable(study, self.pool)
        self._upstream_loss: dict[str, float] = {}  # final losses of upstream runs known so far
        self._sent: set[str] = set()  # upstream runs proposed by this invocation
        self.targets = targets_of(sel)
        self._seed = study.seed
        self._last_widths: tuple[int, float] | None = None  # (runs, seconds) of the latest bootstrap
        self._closed = threading.Event()  # set by :meth:`close`, read by the widths thread
        self._answered, self._submitted = answered, submitted
        self._proposed_at = -1  # finished runs when this invocation last proposed (with a tolerance)
        self.widest: float | None = None  # the widest target interval the stopping rule last saw (inf: none)
        self.widest_runs: int | None = None  # ... in a fit of this many finished runs
        self.prior_flops = 0.0  # FLOPs of the candidates finished before the selection (:meth:`_add_prior`)
        self._fit = lambda: fit_provider(law_name)
        self.sampler = self._sampler(study)
        self.study = optuna.create_study(
            study_name=study.name,
            storage=storage() if callable(storage) else storage,
            sampler=self.sampler,
            direction="minimize",
            load_if_exists=True,
        )
        self._check_journal(study)
        self._refit_behind = refit_behind
        self._trials: dict[str, int] = {}  # run key -> trial number, for runs of this invocation
        self.stopped: str | None = None  # why no more runs are proposed
        self._restore_stop()
        self._requeue = self._resume()

    def _check_journal(self, study: StudyConfig) -> None:
        """The journal's trials name candidates by their index in the pool: refuse a pool that no
        longer matches them (a grid or space changed since the selection began), which would
        otherwise charge a trial's cost to another run and skip runs never trained."""
        name = study.name
        for t in self.study.get_trials(deepcopy=False):
            if PARAM not in t.params:
                continue
            i, key = int(t.params[PARAM]), t.user_attrs.get("run_key")
            if i >= len(self.candidates) or (key is not None and self.candidates[i].spec.run_key != key):
                if study.trainer.kind == "replay":  # its candidates are the table's rows, in order
                    raise StudyError(
                        "trainer.replay.path",
                        f"the table's rows changed since study {name!r} began its selection (trial {t.number} chose "
                        f"run {key or i}, which is not row point {i} of the {len(self.candidates)} now): rows inserted "
                        "or removed before rows it chose move them; add new rows at the end, or run the new table "
                        "under a new study name",
                    )
                raise StudyError(
                    "grid",
                    f"the candidate runs changed since study {name!r} began its selection (trial {t.number} chose run "
                    f"{key or i}, which is not candidate {i} of the {len(self.candidates)} now); keep the grid it was "
                    "started with, or run the new grid under a new study name",
                )

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
    def start(self, finished: Mapping[str, FinishedRun]) -> list[PlannedRun]:
        """The runs finished before this invocation (the store's and adopted ones): a teacher
        among them costs nothing here, and its loss is its students' L_T. Returns the candidates
        among them (runs an earlier invocation of this selection trained): the scheduler counts
        them as done, so the fits see them. A trial a dead driver left running whose run had
        finished is told its result instead of being proposed again."""
        for key, run in finished.items():
            u = self._upstream_index.get(key)
            if u is not None:
                self.pool.upstream_free[u] = True
                self._upstream_loss[key] = run.final_loss
        again = []
        for run in self._requeue:
            done = finished.get(run.spec.run_key)
            if done is None:
                again.append(run)
            else:
                self.study.tell(self._trials[run.spec.run_key], done.final_loss, skip_if_finished=True)
        # a budget lowered since: the runs an interrupted driver left are given up, the latest
        # proposed first, until what is committed fits it (they were trained again, over it)
        while again and self.spent() > self.pool.budget * (1 + 1e-12):
            number = self._trials.pop(again.pop().spec.run_key)
            self.study.set_user_attr(DROPPED, [*self.study.user_attrs.get(DROPPED, ()), number])
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        self._requeue = again
        self._add_prior(finished)
        done = [r for r in self.candidates if r.spec.run_key in finished]
        # with a tolerance, nothing is proposed before the stopping rule has answered for the
        # runs already done: a study that had stopped on its interval went on training when resumed
        self._proposed_at = len(done)
        return done

    def _add_prior(self, finished: Mapping[str, FinishedRun]) -> None:
        """Candidates finished before this selection took them over, with no trial in the journal
        (the study ran as a grid before, or the journal was lost): completed trials marked
        :data:`PRIOR`, so the sampler counts them as known and never proposes them again (it
        did, and the budget paid for runs that were only skipped), at no cost to the budget."""
        trials = self.study.get_trials(deepcopy=False)
        known = {t.user_attrs.get("run_key") for t in trials}
        prior = [int(t.params[PARAM]) for t in trials if t.user_attrs.get(PRIOR)]  # an earlier invocation's
        distribution = {PARAM: self.pool.distribution()}
        for i, run in enumerate(self.candidates):
            key = run.spec.run_key
            done = finished.get(key)
            if done is None or key in known or not np.isfinite(done.final_loss):
                continue
            self.study.add_trial(
                optuna.trial.create_trial(
                    params={PARAM: i},
                    distributions=distribution,
                    value=done.final_loss,
                    user_attrs={
                        "run_key": key,
                        "inputs": {k: float(v[i]) for k, v in self.pool.inputs.items()},
                        "flops": float(run.plan.flops),
                        PRIOR: True,
                    },
                )
            )
            prior.append(i)
        self.prior_flops = float(sum(self.candidates[i].plan.flops for i in prior))

    def propose(self, k: int) -> list[PlannedRun]:
        """Up to ``k`` new candidate runs (fewer, or none, when the budget or the stopping rule
        says so), each preceded by the teacher it starts from the first time this invocation
        needs that teacher (so a proposal may hold more than ``k`` runs)."""
        self.refresh_inputs()
        out: list[PlannedRun] = []
        n, asked = 0, False
        while self._requeue and n < k:
            out += self._with_upstream(self._tagged(self._requeue.pop(0)))
            n += 1
        while n < k and self.stopped is None:
            if self.waiting():
                break
            if not available(self.study, self.pool).any():
                untaken = len(set(proposed(self.study))) < self.pool.size
                self.stopped = (
                    f"budget spent ({self.spent():.3g} of {self.pool.budget:.3g} FLOPs)" if untaken
                    else f"every candidate run taken ({self.spent():.3g} of {self.pool.budget:.3g} FLOPs spent)"
                )
                break
            before = committed(self.study, self.pool)
            trial = self.study.ask({PARAM: self.pool.distribution()})
            i = int(trial.params[PARAM])
            run = self.candidates[i]
            # the trial says which run it is in the study's own terms, not only by pool index
            trial.set_user_attr("run_key", run.spec.run_key)
            trial.set_user_attr("inputs", {k: float(v[i]) for k, v in self.pool.inputs.items()})
            trial.set_user_attr("flops", float(run.plan.flops))
            if self.pool.upstream is not None and (u := int(self.pool.upstream[i])) >= 0:
                # the journal records what this proposal spends on its teacher: paid once
                trial.set_user_attr("upstream", list(self.upstream)[u])
                trial.set_user_attr(UPSTREAM_FLOPS, 0.0 if before[u] else float(self.pool.upstream_cost[u]))
            self._trials[run.spec.run_key] = trial.number
            out += self._with_upstream(self._tagged(run))
            n += 1
            asked = True
        if asked:  # the stopping rule answers for the runs finished now before the next proposal
            self._proposed_at = self._submitted()
        return out

    def _with_upstream(self, run: PlannedRun) -> list[PlannedRun]:
        """``run``, after the runs it starts from that this invocation has not proposed yet."""
        first = [self.upstream[k] for k in run.depends_on.values() if k in self.upstream and k not in self._sent]
        self._sent.update(r.key for r in first)
        return [*first, run]

    def refresh_inputs(self) -> None:
        """Recompute the law inputs that come from teachers (L_T): a finished teacher's loss, or
        the supervised loss the current fit's law (``fit_.get_law()``, whose supervised law is the
        study's latest fit of it) predicts for it. The pool's inputs are replaced when they change."""
        if self.pool.upstream is None or "L_T" not in self.law.inputs:
            return
        fit_ = self._fit()
        law = self.law if fit_ is None or not fit_.law_spec else fit_.get_law()
        runs = list(self.upstream.values())
        lt = supervised_losses(law, runs)
        for u, r in enumerate(runs):
            if r.key in self._upstream_loss:
                lt[u] = self._upstream_loss[r.key]
        column = lt[self.pool.upstream]
        if not np.array_equal(column, self.pool.inputs["L_T"]):
            self.pool.inputs = {**self.pool.inputs, "L_T": column}

    def waiting(self) -> bool:
        """True when active selection has proposed its space-filling start and waits for a fit
        of those runs (which is on its way: runs in flight, or a refit behind) before the
        criterion takes over. Without this, runs that finish in an instant (a replayed table)
        would all be proposed from the space-filling design before the first fit arrives.

        And, with a tolerance, until the stopping rule has answered for every run that had
        finished when this selection last proposed (``answered(law, n)``: a fit of the law on
        at least n finished runs is out with its widths): that answer may end the selection. Proposing
        meanwhile spent the budget the stop is there to save (a sparsity law's first interval
        was within the tolerance at 7 % of the budget; the stop came at 96 %, the runs in
        between proposed while fits and bootstraps were computed). Each wait is for one fixed
        set of runs, so runs that keep finishing cannot hold proposals off for good. It lasts a
        refit and, when one is due, a bootstrap (a second for a Chinchilla law, up to a minute
        for a mixture law's, which runs once the runs have grown by a quarter), against runs
        that take minutes or hours; runs in flight go on."""
        if self.stopped is not None:
            return False
        if (
            self.config.tolerance > 0
            # below this many runs there are too few configurations for an interval: no answer to wait for
            and self._proposed_at >= MIN_CONFIGURATIONS_PER_PARAM * self.law.n_params
            and not self._answered(self.law_name, self._proposed_at)
        ):
            return True
        if not isinstance(self.sampler, InformationSampler):
            return False
        fit_ = self._fit()
        if fit_ is not None and fit_.report.n_points >= self.sampler.initial_runs:
            return False
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        if sum(PARAM in t.params for t in trials) < self.sampler.initial_runs:
            return False
        return self._refit_behind() or any(t.state == TrialState.RUNNING for t in trials)

    def observe(self, event: Event) -> None:
        """Tell Optuna how a proposed run ended; note a teacher's loss when it has finished, and
        that its students cannot train when it has failed for good."""
        u = self._upstream_index.get(event.run.spec.run_key)
        if u is not None:
            if event.kind in ("finish", "skip") and event.finished is not None:
                self._upstream_loss[event.run.spec.run_key] = event.finished.final_loss
            elif event.kind == "fail":
                self.pool.upstream_failed[u] = True
            return
        number = self._trials.get(event.run.spec.run_key)
        if number is None:
            return
        if event.kind in ("finish", "skip") and event.finished is not None:
            self.study.tell(number, event.finished.final_loss, skip_if_finished=True)
        elif event.kind == "fail":
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)

    def stop_widths(
        self,
        law_name: str,
        fit_: laws.LawFit,
        inputs: Mapping[str, np.ndarray],
        loss: np.ndarray,
        groups: np.ndarray | None = None,
    ) -> dict[str, float] | None:
        """The targets' interval widths for the stopping rule (:func:`target_widths`), for a new
        fit of the selection's law when a tolerance is set (else None). The refitter calls it on
        a thread of its own once the fit is out: a bootstrap takes a fraction of a second (a
        Chinchilla law on a few hundred runs), too long for the driver's, and must not delay
        the fit the criterion waits for. One that took ``STOP_SLOW_S`` or more (a mixture law's:
        20 s and more) is redone only once the runs have grown by ``STOP_GROWTH``; the
        fits in between get None (no stop)."""
        if self.config.tolerance <= 0 or law_name != self.law_name or self.stopped is not None or self._closed.is_set():
            return None
        if self._last_widths is not None:
            runs, seconds = self._last_widths
            if seconds >= STOP_SLOW_S and len(loss) < STOP_GROWTH * runs:
                return None  # a slow bootstrap (a mixture law's) waits for more runs
        t0 = time.perf_counter()
        try:
            widths = target_widths(fit_, inputs, loss, self.targets, seed=self._seed, cancel=self._closed.is_set, groups=groups)
        except laws.Cancelled:
            return None
        self._last_widths = (len(loss), time.perf_counter() - t0)
        return widths

    def close(self) -> None:
        """The study is over: a stopping bootstrap in flight stops (its answer is not needed,
        and a mixture law's takes a minute), and none starts."""
        self._closed.set()

    def check_stop(self, widths: Mapping[str, float] | None, n_runs: int | None = None) -> None:
        """Stop proposing once every target's 95 % interval (``widths``, from
        :meth:`stop_widths`, of a fit on ``n_runs`` finished runs) is within the tolerance."""
        tol = self.config.tolerance
        if tol <= 0 or not widths or self.stopped is not None:
            return
        self.widest, self.widest_runs = max(widths.values()), n_runs
        if self.widest <= tol:
            self.stopped = f"target intervals within +-{tol:g} ({', '.join(f'{k}: {v:.3g}' for k, v in widths.items())})"
            # kept with the journal: a resumed selection stays stopped (see _restore_stop)
            self.study.set_user_attr(STOP_ATTR, {"reason": self.stopped, "widest": self.widest, "runs": n_runs})

    def _restore_stop(self) -> None:
        """A selection that stopped on its interval stays stopped when resumed, while its
        tolerance is no tighter than the interval it stopped on (resumed, it went on proposing
        while a new bootstrap of the same runs, which may come out a little wider, was computed).
        With a tighter tolerance it goes on."""
        stop = self.study.user_attrs.get(STOP_ATTR)
        if stop and 0 < stop["widest"] <= self.config.tolerance:
            self.stopped = stop["reason"]
            self.widest, self.widest_runs = float(stop["widest"]), stop.get("runs")

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
        if self.prior_flops > 0:  # runs finished before the selection took over: done, not paid for by its budget
            out["selection.prior_flops"] = self.prior_flops
        if self.config.tolerance > 0:
            out["selection.tolerance"] = self.config.tolerance
            if self.widest is not None and np.isfinite(self.widest):
                out["selection.widest_interval"] = self.widest
                if self.widest_runs is not None:
                    out["selection.widest_interval_runs"] = float(self.widest_runs)
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
        return spent_flops(self.study, self.pool)

    def _tagged(self, run: PlannedRun) -> PlannedRun:
        return replace(run, tags={**run.tags, TRIAL_TAG: str(self._trials[run.spec.run_key])})


def check_affordable(study: StudyConfig, pool: Pool) -> None:
    """Raise a :class:`StudyError` naming the budget key when the budget cannot pay for even the
    cheapest candidate: a student with its teacher, unless teachers may be adopted from other
    studies."""
    sel = study.selection
    adopting = study.grid.teachers is not None and bool(study.grid.teachers.from_studies)
    cheapest = float((pool.cost if adopting else effective_cost_now(pool)).min())
    if pool.budget < cheapest:
        key = "selection.budget_flops" if sel.budget_flops is not None else "selection.budget_fraction"
        what = "run" if pool.upstream is None or not (pool.upstream >= 0).any() else "run with the run it starts from"
        raise StudyError(key, f"a budget of {pool.budget:.3g} FLOPs cannot pay for even the cheapest {what} ({cheapest:.3g})")


def selection_pool(study: StudyConfig, runs: Sequence[PlannedRun], law: laws.ScalingLaw | None = None) -> Pool:
    """The candidate pool of a budgeted study's expanded ``runs`` for ``law`` (default: the
    selection's law): its runs of stage ``main``, starting from the others (teachers), with the
    budget out of the full grid's cost (every run it trains, each teacher once)."""
    main, upstream = [r for r in runs if r.stage == "main"], [r for r in runs if r.stage != "main"]
    grid_cost = float(sum(trained_flops(r) for r in runs))
    law = law or selection_law(study).law
    return make_pool(main, law, study.selection, selection_budget(study.selection, grid_cost), upstream)


def check_selection_budget(study: StudyConfig, runs: Sequence[PlannedRun]) -> None:
    """:func:`check_affordable` for a budgeted study's expanded ``runs``, before anything starts
    (``isoflop validate`` and :func:`~orchestrator.study.run_study` call it; grid mode has
    nothing to check)."""
    if study.selection.mode != "grid":
        check_affordable(study, selection_pool(study, runs))


def effective_cost_now(pool: Pool) -> np.ndarray:
    """Each candidate's cost with its teacher, before anything is proposed or known finished."""
    if pool.upstream is None:
        return pool.cost
    return pool.cost + np.where(pool.upstream >= 0, pool.upstream_cost[np.maximum(pool.upstream, 0)], 0.0)


def target_samples(boot: BootstrapResult, fit_: laws.LawFit, targets: Sequence[Target]) -> tuple[np.ndarray, np.ndarray]:
    """Each target's value under ``fit_`` [T] and under each converged resample of ``boot``
    [T, R_c]: the loss at a target's inputs, or the loss and N_opt at the compute optimum of a
    target budget (each resample at its own optimum; a budget's loss and N_opt share them)."""
    centre, samples = [], []
    optima: dict[float, tuple[laws.Allocation, np.ndarray, np.ndarray]] = {}
    for t in targets:
        if t.inputs:
            x = {k: np.array([v]) for k, v in t.inputs.items()}
            centre.append(float(fit_.predict(**x)[0]))
            samples.append(boot.predict_samples(**x)[:, 0])
            continue
        if t.budget is None:
            raise ValueError(f"target {t.kind!r} needs a budget or inputs")
        if t.budget not in optima:
            optima[t.budget] = (laws.compute_optimal(fit_, [t.budget])[0], *boot.optimum_samples(t.budget))
        optimum, n, d = optima[t.budget]
        if t.kind == "N_opt":
            centre.append(optimum.N_opt)
            samples.append(n)
        else:
            centre.append(optimum.loss)
            samples.append(np.diagonal(boot.predict_samples(N=n, D=d)))
    return np.array(centre), np.array(samples)


def target_widths(
    fit_: laws.LawFit,
    inputs: Mapping[str, np.ndarray],
    loss: np.ndarray,
    targets: Sequence[Target],
    *,
    n_resamples: int = STOP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    cancel: Callable[[], bool] | None = None,
    scheme: str = STOP_SCHEME,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Relative half-width of each target's ``level`` interval, max(hi / T - 1, T / lo - 1) for
    the percentile interval [lo, hi] of the target T over bootstrap refits of ``fit_`` on
    reweighted configurations of its runs (``inputs``, ``loss``). Infinite with fewer than
    ``MIN_CONFIGURATIONS_PER_PARAM`` configurations per law parameter, and when too few refits
    converged.

    Not the delta method on the fit's covariance: with few runs the sandwich covariance is both
    noisy and too small, and stopping at the first fit it calls precise enough is stopping on
    its noise. On the simulated Chinchilla world (``benchmarks/stopping.py``, 16 seeds) the
    delta-method rule left N_opt more than 20 % off in 10 of its 16 stops at +-20 % (up to 81 %
    off). ``scheme``: the Bayesian bootstrap by default, not the multinomial one of ``isoflop
    export --bootstrap``. Both are conservative there (the interval held the error on 98 to
    100 % of the fits), but the multinomial resamples that leave out one of a selection's few
    large runs widen the interval most: the Bayesian bootstrap stopped with 35 to 40 % less
    compute, 1 of its 60 stops beyond the tolerance against 0 of 51.

    ``cancel``: asked between the refits' Newton iterations; True stops them and raises
    :class:`laws.Cancelled`. ``groups``: the runs' resampling units (a replayed table's group
    column), weighed whole; default: configurations."""
    unknown = {t.label: float("inf") for t in targets}
    law = fit_.get_law()
    configurations = len(np.unique(np.column_stack([np.asarray(inputs[k], dtype=np.float64) for k in law.inputs]), axis=0))
    if configurations < MIN_CONFIGURATIONS_PER_PARAM * law.n_params:
        # with too few configurations a refit can fit them (or a multinomial resample's 63 % of
        # them) exactly, by the fit itself where they cannot be fitted any other way: the
        # refits agree for want of data, not for the data's sake
        return unknown
    try:
        boot = bootstrap_fit(
            fit_, inputs, loss, n_resamples=n_resamples, seed=seed, options=resample_options(fit_), cancel=cancel,
            scheme=scheme, groups=groups,
        )
    except ValueError:  # too few configurations to resample
        return unknown
    if not boot.has_intervals:
        return unknown
    centre, samples = target_samples(boot, fit_, targets)
    out = {}
    for t, c, s in zip(targets, centre, samples, strict=True):
        # a resample whose law has no compute optimum leaves the target unbounded
        interval = unbounded_percentile(s, level)
        width = max(interval[1] / c - 1.0, c / interval[0] - 1.0) if interval and interval[0] > 0 and c > 0 else np.inf
        out[t.label] = float(width) if np.isfinite(width) else float("inf")
    return out


def journal_storage(path: Path) -> JournalStorage:
    """Optuna's journal-file storage (safe with several processes; SQLite is not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))
