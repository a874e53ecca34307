"""``isoflop status``: the live view's block, read from the tracking store.

The study may be running here, on a cluster, or not at all any more: everything comes from the
store (the attempts of every run, their times, the latest fit document of every law, the
selection's metrics and the run keys it would propose next), and it is drawn by the same
:func:`~orchestrator.live.block_lines` that ``isoflop run`` draws live.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import laws
from orchestrator.config import StudyConfig
from orchestrator.grid import PlannedRun, expand
from orchestrator.live import (
    Snapshot,
    block_lines,
    duration,
    estimate_eta,
    grid_flops_of,
)
from orchestrator.mlflow_tracker import study_status, tracking_uri
from orchestrator.refit import RefitState, fit_summary
from orchestrator.selection.selector import (
    ACTIVE_METRICS,
    TOLERANCE_METRICS,
    SelectionView,
    selection_budget,
)
from orchestrator.tracking import (
    GRID_FLOPS_TAG,
    GRID_RUNS_TAG,
    NEXT_TAG,
    STOPPED_TAG,
    StudyStatus,
    driver_state,
)


def run_states(attempts: Mapping[str, Sequence[str]], *, max_attempts: int, ended: bool) -> dict[str, int]:
    """Runs (not attempts) by state: ``done`` (an attempt finished), ``running``, ``failed`` (every
    allowed attempt failed, or the study ended without it finishing) and ``retries`` (failed
    attempts that were, or will be, tried again). Attempts a dead driver left (KILLED) are redone,
    so they count as neither; so are attempts still marked RUNNING once the study has ended (an
    interrupted driver's: nothing runs them any more)."""
    done = running = failed = failed_attempts = 0
    for states in attempts.values():
        n_failed = sum(s == "FAILED" for s in states)
        failed_attempts += n_failed
        if "FINISHED" in states:
            done += 1
        elif "RUNNING" in states and not ended:
            running += 1
        elif n_failed and (n_failed >= max_attempts or ended):
            failed += 1
    return {"done": done, "running": running, "failed": failed, "retries": failed_attempts - failed}


@dataclass(frozen=True)
class GridView:
    """The study's grid as status counts it: its runs, where they can be expanded, how many there
    are and the FLOPs of training them all."""

    runs: Sequence[PlannedRun]
    total: int
    flops: float

    @classmethod
    def of(cls, runs: Sequence[PlannedRun]) -> GridView:
        return cls(runs=runs, total=len(runs), flops=grid_flops_of(runs))


def grid_view(study: StudyConfig, st: StudyStatus) -> GridView:
    """The grid of ``study``, expanded; or, for a replay study whose table is not on this machine
    (it ran on another), the size and FLOPs its last run recorded on the parent run (runs that ran
    before they were recorded: the stored runs alone)."""
    if study.trainer.kind == "replay" and not Path(study.trainer.replay.path).exists():
        total = st.tags.get(GRID_RUNS_TAG)
        flops = st.tags.get(GRID_FLOPS_TAG)
        if total is not None and flops is not None:
            return GridView(runs=(), total=int(total), flops=float(flops))
        return GridView(runs=(), total=len(st.attempts), flops=st.flops_done)
    return GridView.of(expand(study))


def snapshot_of(st: StudyStatus, study: StudyConfig, grid: GridView) -> Snapshot:
    """The live view's counts and times, from what the store recorded, against ``grid``."""
    ended = st.study_status != "RUNNING"
    states = run_states(st.attempts, max_attempts=study.resources.max_retries + 1, ended=ended)
    total = grid.total
    pending = max(total - states["done"] - states["failed"] - states["running"], 0)
    budget = None if study.selection.mode == "grid" else selection_budget(study.selection, grid.flops)
    before = st.selection.get("selection.prior_flops", 0.0) if budget is not None else 0.0
    mean = sum(st.run_seconds) / len(st.run_seconds) if st.run_seconds else None
    eta = None
    if not ended:
        eta = estimate_eta(
            mean,
            pending,
            st.running_since_s,
            parallel=max(len(st.running_since_s), study.resources.max_concurrent, 1),
            budget_flops=budget,
            flops_done=st.flops_done - before,
            done=states["done"],
            done_here=states["done"],
        )
    return Snapshot(
        total=total,
        pending=pending,
        running=states["running"],
        done=states["done"],
        skipped=0,
        failed=states["failed"],
        retries=states["retries"],
        flops_done=st.flops_done,
        budget_flops=budget,
        elapsed_s=st.elapsed_s,
        mean_run_s=mean,
        eta_s=eta,
        grid_flops=grid.flops,
        flops_before=before,
    )


def fit_lines(st: StudyStatus) -> list[str]:
    """One line per law, as the live view shows it: from the law's latest fit document, or
    from its parameter metrics when the document cannot be read."""
    out = []
    for law in sorted(set(st.fits) | set(st.fit_documents)):
        document = st.fit_documents.get(law)
        try:
            fit_ = laws.LawFit.from_dict(dict(document)) if document is not None else None
        except (KeyError, TypeError, ValueError):
            fit_ = None
        if fit_ is not None:
            out.append(fit_summary(RefitState(law=law, fit=fit_, n_runs=fit_.report.n_points)))
        else:
            params = {k: v for k, v in st.fits.get(law, {}).items() if k != "objective"}
            out.append(f"law {law}: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()))
    return out


def selection_line(st: StudyStatus, runs: Sequence[PlannedRun], mode: str, tolerance: float = 0.0) -> str | None:
    """The selection's line for a study whose selection is ``mode`` (with ``tolerance``) now.
    The parent run keeps every metric an earlier invocation logged: none is shown in grid mode,
    a baseline's line leaves out the estimates an earlier active selection logged, and one
    without a tolerance the stopping rule's."""
    if not st.selection or mode == "grid":
        return None
    metrics = st.selection if mode == "active" else {k: v for k, v in st.selection.items() if k not in ACTIVE_METRICS}
    if tolerance <= 0:
        metrics = {k: v for k, v in metrics.items() if k not in TOLERANCE_METRICS}
    by_key = {r.spec.run_key: r for r in runs}
    keys = [k for k in st.tags.get(NEXT_TAG, "").split(",") if k in by_key]
    view = SelectionView(
        metrics=metrics, next_runs=[by_key[k] for k in keys], stopped=st.tags.get(STOPPED_TAG) or None
    )
    return view.summary()


def _first_line(text: str | None) -> str | None:
    line = next(iter((text or "").strip().splitlines()), None)
    return line[:200] if line else None


def status_lines(study: StudyConfig) -> list[str]:
    """What ``isoflop status`` prints: the study's parent run, then the live view's block."""
    st = study_status(tracking_uri(study), study.tracking.experiment or study.name, study.name)
    grid = grid_view(study, st)
    runs = grid.runs
    driver = driver_state(st.tags) if st.study_status == "RUNNING" else None
    if driver is not None and not driver.alive:
        # the store still says RUNNING, but nothing runs it: count it as ended, at its last report
        head = (
            f"study {st.name!r} (parent run {st.parent_run_id}, running in the store, but {driver.reason}: "
            "it stopped without ending the study; `isoflop resume` continues it)"
        )
        # its times end at the last sign of it: its heartbeat (every 30 s) or a run it started or ended
        silent = min(driver.silent_s or 0.0, st.idle_s if st.idle_s is not None else float("inf"))
        st = replace(
            st, study_status="KILLED", elapsed_s=max(st.elapsed_s - silent, 0.0), since_first_s=max(st.since_first_s - silent, 0.0)
        )
    else:
        # KILLED: ended by Ctrl-C (or by `isoflop cancel`), with nothing failed
        state = "interrupted" if st.study_status == "KILLED" else st.study_status.lower()
        head = f"study {st.name!r} (parent run {st.parent_run_id}, {state})"
    if st.invocations > 1:  # the block's elapsed time is the latest invocation's
        span = duration(st.since_first_s)
        head += (
            f"; invocation {st.invocations}, the first began {span} ago"
            if st.study_status == "RUNNING"
            else f"; {st.invocations} invocations over {span}"
        )
    # runs of a grid since changed are not this grid's: not counted here, not fitted by export
    keys = {r.spec.run_key for r in runs}
    outside = sum(k not in keys for k in st.attempts) if runs else 0
    if outside:
        attempts = {k: v for k, v in st.attempts.items() if k in keys}
        done = [r for r in runs if "FINISHED" in attempts.get(r.spec.run_key, ())]
        st = replace(st, attempts=attempts, flops_done=grid_flops_of(done))
    block = block_lines(
        study.name,
        snapshot_of(st, study, grid),
        fits=fit_lines(st),
        selection=selection_line(st, runs, study.selection.mode, study.selection.tolerance),
        last_error=_first_line(st.last_failure),
        final=st.study_status != "RUNNING",
    )
    note = [f"{outside} stored runs are not in this grid (it changed since they ran): not counted, not fitted"] if outside else []
    return [head, *block, *note]


__all__ = ["GridView", "fit_lines", "grid_view", "run_states", "selection_line", "snapshot_of", "status_lines"]
