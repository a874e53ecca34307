"""Online refit: every law of a study is refit each time runs finish, without holding up the
scheduler.

Each update is a warm-started fit (from the previous optimum, the latest full multi-start optimum
and a few seeded perturbations of them; on 300 runs 0.05 s for the Chinchilla law to under a
second for the distillation law, ``benchmarks/refit_speed.py``). Every
``full_every`` updates a full multi-start refit from the law's whole initialisation grid runs in a
background thread; its optimum joins the warm starts of the next update, so the online fit cannot
stay stuck in a poor basin. Fits are logged on the study's parent run with the number of finished
runs as the step.

More work on a fit (a budgeted selection's bootstrap of its targets, for the stopping rule: 20 s
and more for a mixture law) runs on a second thread, after the fit is out: it never delays the
fit the selection's criterion waits for.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

import laws
from laws.export import law_entry
from orchestrator.fitting import StudyLaw, as_study_law, resolve
from orchestrator.tracking import FinishedRun, Tracker

#: warm-started refits start next to the optimum: a few dozen Newton steps are plenty, and a
#: poorly identified fit must not spend the full iteration budget on every update
WARM_OPTIONS = laws.NewtonOptions(max_iter=50)
#: rounds of polish (``laws.fit(polish=...)``) a warm refit gives its best unconverged starts; the
#: default fit's 10 rounds made a distillation law's update on 300 runs 2.3 s, with a target
#: prediction no closer to the cold fit's than 2 rounds give (benchmarks/refit_speed.py); the
#: full refits keep their whole polish
WARM_POLISH = 2


@dataclass(frozen=True, kw_only=True)
class RefitState:
    """The latest fit of one law and how it was obtained."""

    law: str
    fit: laws.LawFit | None
    n_runs: int
    error: str | None = None
    #: what the refitter's ``widths`` hook made of the fit (a budgeted selection's target
    #: intervals, for its stopping rule), computed on the widths thread after the fit was
    #: published; None until then, or when not asked for
    widths: Mapping[str, float] | None = None


#: one fit the ``widths`` hook is asked about: its state and the table it was fitted to
WidthsJob = tuple[RefitState, Mapping[str, np.ndarray], np.ndarray, np.ndarray | None]


class OnlineRefitter:
    """Keeps the current fit of every law of a study as runs finish.

    The driver calls :meth:`submit` with newly finished runs and :meth:`poll` once per scheduler
    step; fits are computed in a background thread on the latest snapshot of the runs (updates
    that arrive meanwhile are coalesced into the next one) and logged from the driver's thread
    by :meth:`poll`. With ``background=False`` every submit refits at once (tests, replay).

    ``widths(law, fit, inputs, loss, groups)``: more work on each new fit (a bootstrap of the
    selection's targets for its stopping rule; ``groups``: the runs' resampling units,
    :meth:`StudyLaw.groups`, or None), done on a thread of its own once the fit is published, one
    fit at a time: fits that arrive meanwhile are coalesced to the latest of each law. Its answer
    becomes the state's ``widths`` (when the fit is still the current one) and is reported to
    ``on_widths`` with the fit's state, from :meth:`poll` on the driver's thread.
    """

    def __init__(
        self,
        study_laws: Sequence[StudyLaw | str],
        *,
        tracker: Tracker | None = None,
        budgets: Sequence[float] = (),
        full_every: int = 10,
        jitter_starts: int = 8,
        seed: int = 0,
        background: bool = True,
        min_interval_s: float = 0.5,
        on_fit: Callable[[RefitState], None] | None = None,
        widths: Callable[[str, laws.LawFit, Mapping[str, np.ndarray], np.ndarray, np.ndarray | None], Mapping[str, float] | None]
        | None = None,
        on_widths: Callable[[RefitState], None] | None = None,
    ) -> None:
        self.laws = {law.name: law for law in map(as_study_law, study_laws)}
        self.tracker = tracker
        self.budgets = list(budgets)
        self.full_every = max(int(full_every), 1)
        self.jitter_starts = jitter_starts
        self.rng = np.random.default_rng(seed)
        self.on_fit = on_fit or (lambda state: None)
        self.widths = widths
        self.on_widths = on_widths or (lambda state: None)
        self.states: dict[str, RefitState] = {}
        self.updates = 0  # refits completed
        self._runs: dict[str, FinishedRun] = {}
        self._dirty = False
        self._full: dict[str, np.ndarray] = {}  # law -> latest full multi-start optimum
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refit") if background else None
        self._job: Future[tuple[dict[str, RefitState], dict[str, WidthsJob]]] | None = None
        self._tables: dict[str, WidthsJob] = {}  # the latest fits the widths hook has not seen
        self._widths_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refit-widths") if background else None
        self._widths_job: Future[Mapping[str, float] | None] | None = None
        self._widths_of: RefitState | None = None  # the fit of that job
        self._answered: dict[str, int] = {}  # law -> runs of the latest fit whose widths are in
        # background refits start at most this often, so the refit thread cannot starve the
        # driver of the GIL when results arrive quickly
        self.min_interval_s = min_interval_s if background else 0.0
        self._started_at = -float("inf")

    # -- public ---------------------------------------------------------------------------------
    @property
    def runs(self) -> list[FinishedRun]:
        """Every finished run submitted so far."""
        return list(self._runs.values())

    def behind(self) -> bool:
        """Whether runs have finished that the current fits do not include yet."""
        return self._dirty or self._job is not None

    def current(self, name: str) -> laws.LawFit | None:
        state = self.states.get(name)
        return state.fit if state else None

    def submit(self, finished: Iterable[FinishedRun]) -> None:
        """Add finished runs; a refit on them starts now or right after the running one."""
        for run in finished:
            self._runs[run.run_key] = run
            self._dirty = True
        self._start()
        if self._pool is None:
            self.poll()

    def poll(self) -> dict[str, RefitState]:
        """Collect a finished refit (logging it) and finished widths; returns the laws whose fit
        it updated (may be empty)."""
        self._poll_widths()
        if self._job is None:
            self._start()
            return {}
        if not self._job.done():
            return {}
        new, tables = self._job.result()
        self._job = None
        self.updates += 1
        for name, state in new.items():
            self.states[name] = state
            self._log(state)
            self.on_fit(state)
            if name not in tables or self.widths is None:  # no fit, or nothing more to do with one
                self._answer(state)
        if self.widths is not None:
            self._tables.update(tables)
            self._poll_widths()
        self._start()
        return new

    @property
    def submitted(self) -> int:
        """How many finished runs have been submitted so far."""
        return len(self._runs)

    def answered(self, name: str, n_runs: int) -> bool:
        """Whether a fit of law ``name`` on at least ``n_runs`` submitted runs is out with its
        widths (or failed: there will be no widths for it)."""
        return self._answered.get(name, -1) >= n_runs

    def drain(self) -> dict[str, RefitState]:
        """Wait until the fits reflect every submitted run."""
        self._start(force=True)
        while self._job is not None:
            self._job.result()
            self.poll()
            self._start(force=True)
        return dict(self.states)

    def close(self) -> None:
        """Stop the threads, after the refit and the widths in flight (fits waiting for their
        widths are dropped: nothing is left to decide with them)."""
        self._tables.clear()
        for pool in (self._pool, self._widths_pool):
            if pool is not None:
                pool.shutdown(wait=True)

    # -- internals ------------------------------------------------------------------------------
    def _start(self, force: bool = False) -> None:
        if self._job is not None or not self._dirty:
            return
        if not force and time.monotonic() - self._started_at < self.min_interval_s:
            return
        self._started_at = time.monotonic()
        self._dirty = False
        runs = sorted(self._runs.values(), key=lambda r: r.run_key)
        full = self.updates % self.full_every == 0
        starts = {name: self._starts(name, law.law) for name, law in self.laws.items()}
        if self._pool is None:
            done: Future[dict[str, RefitState]] = Future()
            done.set_result(self._refit_all(runs, starts, full))
            self._job = done
        else:
            self._job = self._pool.submit(self._refit_all, runs, starts, full)

    def _starts(self, name: str, law: laws.ScalingLaw) -> np.ndarray | None:
        bases = []
        prev = self.current(name)
        if prev is not None and all(np.isfinite(v) for v in prev.params.values()):
            bases.append(law.from_natural(prev.params).numpy())
        if name in self._full:
            bases.append(self._full[name])
        bases = [b for b in bases if np.all(np.isfinite(b))]  # a degenerate fit is no place to start
        if not bases:
            return None  # first fit: the law's whole initialisation grid
        base = np.stack(bases)
        jitter = base[self.rng.integers(0, len(base), self.jitter_starts)]
        jitter = jitter + self.rng.normal(scale=0.1, size=jitter.shape) * np.maximum(np.abs(jitter), 0.1)
        return np.concatenate([base, jitter])

    def _poll_widths(self) -> None:
        """Report the widths job if it is done, and start the next one (inline without a pool)."""
        while True:
            if self._widths_job is not None:
                if not self._widths_job.done():
                    return
                try:
                    answer = self._widths_job.result()
                except Exception as exc:  # noqa: BLE001 - more work on a fit must not end the study
                    warnings.warn(f"refit: the widths of a fit failed ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=2)
                    answer = None
                state = dataclasses.replace(self._widths_of, widths=answer)
                self._widths_job = self._widths_of = None
                self._answer(state)
                if self.states.get(state.law) is not None and self.states[state.law].fit is state.fit:
                    self.states[state.law] = state  # still the current fit (else a newer one is out)
                self.on_widths(state)
            if not self._tables or self.widths is None:
                return
            self._widths_of, inputs, loss, groups = self._tables.pop(next(iter(self._tables)))
            job = (self._widths_of.law, self._widths_of.fit, inputs, loss, groups)
            if self._widths_pool is None:
                done: Future[Mapping[str, float] | None] = Future()
                done.set_result(self.widths(*job))
                self._widths_job = done
            else:
                self._widths_job = self._widths_pool.submit(self.widths, *job)

    def _answer(self, state: RefitState) -> None:
        """Note that the fit of ``state`` has its widths, or will have none (:meth:`answered`)."""
        self._answered[state.law] = max(self._answered.get(state.law, -1), state.n_runs)

    def _refit_all(
        self, runs: list[FinishedRun], starts: dict[str, np.ndarray | None], full: bool
    ) -> tuple[dict[str, RefitState], dict[str, WidthsJob]]:
        out: dict[str, RefitState] = {}
        tables: dict[str, WidthsJob] = {}
        for name, study_law in self.laws.items():
            try:
                ready = resolve(study_law, {k: v.fit for k, v in out.items()})
                law = ready.law
                inputs, loss = ready.table(runs)
                if full and starts[name] is not None:
                    best = laws.fit(law, inputs, loss, covariance=False)
                    self._full[name] = law.from_natural(best.params).numpy()
                    starts[name] = np.concatenate([starts[name], self._full[name][None]])
                warm = starts[name] is not None
                fit_ = laws.fit(law, inputs, loss, init=starts[name], options=WARM_OPTIONS if warm else None,
                                polish=WARM_POLISH if warm else None)
            except ValueError as exc:
                out[name] = RefitState(law=name, fit=None, n_runs=len(runs), error=str(exc))
                continue
            out[name] = RefitState(law=name, fit=fit_, n_runs=len(runs))
            tables[name] = (out[name], inputs, loss, ready.groups(runs))
        return out, tables

    def _log(self, state: RefitState) -> None:
        if self.tracker is None or state.fit is None:
            return
        self.tracker.log_fit(state.law, law_entry(state.fit, budgets=self.budgets), step=state.n_runs)


def fit_summary(state: RefitState) -> str:
    """One line: the law, its parameters with intervals where known."""
    if state.fit is None:
        return f"law {state.law}: not fitted yet ({state.error})"
    try:
        intervals = laws.parametric_intervals(state.fit)
    except ValueError:
        intervals = {}
    parts = []
    for k, v in state.fit.params.items():
        lo_hi = intervals.get(k)
        parts.append(f"{k}={v:.4g}" + (f" [{lo_hi[0]:.3g}, {lo_hi[1]:.3g}]" if lo_hi else ""))
    # the runs the law is fitted to (a distillation study's supervised law: its teachers only)
    n = state.fit.report.n_points or state.n_runs
    return f"law {state.law} on {n} runs: " + ", ".join(parts)
