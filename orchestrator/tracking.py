"""Where a study's runs are recorded: the ``Tracker`` interface and an in-memory implementation.

The driver owns every run's life cycle: it creates the child run before the training starts,
workers stream metrics into it through a picklable sink factory, and the driver marks it FINISHED
or FAILED. So no run is ever left RUNNING by a crashed worker without the driver knowing, and
re-running a study skips every run key already FINISHED.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainers import MetricSink, RunResult
from trainers.base import RunPlan, RunSpec

SinkFactory = Callable[[], MetricSink]
#: one logged metric value: (key, value, timestamp in ms, step)
MetricRow = tuple[str, float, int, int]


@dataclass(frozen=True, kw_only=True)
class FinishedRun:
    """A finished run as the store remembers it: enough to fit laws and to skip it next time."""

    run_key: str
    run_id: str
    inputs: Mapping[str, float]  # law inputs: N (exact params), D (tokens), C (FLOPs), ...
    final_loss: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    stage: str = "main"  # main (the grid's own runs), or teacher, pretrain or trunk (runs others start from)
    group: str = ""  # its bootstrap resampling unit ("" = its own inputs; a replayed table's group column)


#: the tag that records a run's stage (``PlannedRun.stage``)
STAGE_TAG = "isoflop.stage"
#: the tag that records a run's resampling group (``RunPoint.group``), when it has one
GROUP_TAG = "isoflop.group"
#: parent-run tags: the run keys a budgeted selection would propose next, and why it stopped
NEXT_TAG = "isoflop.selection.next"
STOPPED_TAG = "isoflop.selection.stopped"
#: the parent run's description in the MLflow UI (Markdown)
NOTE_TAG = "mlflow.note.content"
#: parent-run tags: how many runs the study's grid has and the FLOPs of training them all, as it
#: was last run (status reads them where the grid cannot be expanded: a replay table not here)
GRID_RUNS_TAG = "isoflop.grid.runs"
GRID_FLOPS_TAG = "isoflop.grid.flops"
#: the driver's wall clock (unix seconds) when it last reported; it does so every
#: ``HEARTBEAT_S`` while the study runs
HEARTBEAT_TAG = "isoflop.heartbeat"
HEARTBEAT_S = 30.0
#: a study whose driver has not reported for this long is taken for stopped (it died: killed,
#: out of memory, its machine lost) although its parent run still says RUNNING
SILENT_S = 4 * HEARTBEAT_S
#: ``host:pid`` of the driver that opened the study last
DRIVER_TAG = "isoflop.driver"


def this_driver() -> str:
    """This process as :data:`DRIVER_TAG` names a driver."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class DriverState:
    """Whether the driver of a study whose parent run says RUNNING is still there: ``alive``
    False when it is known to have stopped (its process is gone from this host, or it has been
    silent for :data:`SILENT_S`), ``silent_s`` since it last reported (None: it never did)."""

    alive: bool
    silent_s: float | None
    driver: str | None
    reason: str = ""


def driver_state(tags: Mapping[str, str], now: float | None = None) -> DriverState:
    """The state of the driver named by a RUNNING parent run's tags (:data:`DRIVER_TAG`,
    :data:`HEARTBEAT_TAG`). On the driver's own host its process is looked up, so a killed driver
    is known at once; elsewhere its heartbeat tells. A study run before drivers reported counts
    as alive."""
    now = time.time() if now is None else now
    driver = tags.get(DRIVER_TAG) or None
    try:
        silent = max(now - float(tags[HEARTBEAT_TAG]), 0.0) if tags.get(HEARTBEAT_TAG) else None
    except ValueError:
        silent = None
    host, _, pid = (driver or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _process_exists(int(pid)):
        return DriverState(False, silent, driver, f"its driver (process {pid} on this host) is gone")
    if silent is not None and silent > SILENT_S:
        return DriverState(False, silent, driver, f"its driver has not reported for {silent:.0f} s")
    return DriverState(True, silent, driver)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@dataclass(frozen=True, kw_only=True)
class StudyStatus:
    """A study as its store records it: its runs' attempts, the latest law fits and selection."""

    name: str
    parent_run_id: str
    counts: Mapping[str, int]  # attempts by MLflow status
    flops_done: float
    fits: Mapping[str, Mapping[str, float]]
    selection: Mapping[str, float] = field(default_factory=dict)  # latest ``selection.*`` metrics
    #: run key -> the MLflow statuses of its attempts, oldest first
    attempts: Mapping[str, Sequence[str]] = field(default_factory=dict)
    run_seconds: Sequence[float] = ()  # wall time of each finished attempt
    running_since_s: Sequence[float] = ()  # seconds each RUNNING attempt has run so far
    elapsed_s: float = 0.0  # since the latest invocation started (to its end, if it ended)
    since_first_s: float = 0.0  # since the study's first invocation started
    invocations: int = 1  # how many times the study was run or resumed
    idle_s: float | None = None  # since the latest start or end of one of its runs (None: no run yet)
    study_status: str = "RUNNING"  # the parent run's MLflow status
    fit_documents: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # law -> fits/<law>.json
    tags: Mapping[str, str] = field(default_factory=dict)  # the parent run's isoflop.* tags
    last_failure: str | None = None  # the reason of the latest failed attempt


#: the law inputs every run records (:func:`law_inputs`), besides its mixture weights and extras
RUN_INPUTS = ("N", "N_non_embedding", "N_active", "D", "C", "S")


def law_inputs(plan: RunPlan, spec: RunSpec, extra: Mapping[str, float] | None = None) -> dict[str, float]:
    """The quantities laws are fitted on, from a run's plan and point, plus ``extra`` inputs the
    grid or its dependencies give (finetuning's D_ft, p and L_pt0, distillation's L_T)."""
    values = (plan.n_params, plan.n_params_non_embedding, plan.n_params_active, plan.tokens, plan.flops,
              spec.point.sparsity)
    inputs = {name: float(v) for name, v in zip(RUN_INPUTS, values, strict=True)}
    for i, w in enumerate(spec.point.mixture):
        inputs[f"h{i + 1}"] = float(w)  # h1 .. hk, as the mixture laws name them
    inputs.update({k: float(v) for k, v in spec.point.inputs})  # a replayed table's input columns
    inputs.update({k: float(v) for k, v in (extra or {}).items()})
    return inputs


class Tracker(ABC):
    """Records a study and its runs. Methods are called by the driver only, in this order:
    ``open_study`` once, then ``start_run``/``finish_run``/``fail_run`` per attempt,
    ``log_fit`` as laws are refit, and ``close_study`` at the end."""

    @abstractmethod
    def open_study(self, name: str, config_yaml: str) -> str:
        """Create or reopen the study's parent run; mark runs a dead driver left RUNNING as
        KILLED. Returns the parent run id."""

    @abstractmethod
    def finished_runs(self) -> dict[str, FinishedRun]:
        """Runs of this study already FINISHED, by run key."""

    @abstractmethod
    def start_run(
        self,
        spec: RunSpec,
        plan: RunPlan,
        *,
        attempt: int,
        budget: float | None,
        tags: Mapping[str, str] | None = None,
        inputs: Mapping[str, float] | None = None,
        memory: float = 0.0,
    ) -> str:
        """Create a child run for one attempt (with extra ``tags``, and extra law ``inputs``
        recorded next to those of :func:`law_inputs`; ``memory``: the bytes it reserves on its
        node, 0 for none); returns its id."""

    @abstractmethod
    def sink_factory(self, run_id: str) -> SinkFactory:
        """A picklable factory of the metric sink a worker writes the run's curve into."""

    @abstractmethod
    def finish_run(self, run_id: str, result: RunResult, leftover: Sequence[MetricRow] = ()) -> FinishedRun:
        """Record a successful attempt, with the metric rows its worker left to log."""

    @abstractmethod
    def fail_run(self, run_id: str, reason: str) -> None:
        """Record a failed attempt with its reason."""

    @abstractmethod
    def log_fit(self, law: str, fit_document: Mapping[str, object], *, step: int) -> None:
        """Log a law fit on the parent run; ``step`` is the number of finished runs."""

    @abstractmethod
    def close_study(self, *, failed: bool, interrupted: bool = False) -> None:
        """Mark the parent run finished, failed, or killed (``interrupted``: Ctrl-C)."""

    def log_figures(self, figures: Mapping[str, Any]) -> None:  # noqa: B027 - optional
        """Attach figures (matplotlib, by file name) to the parent run; replaces earlier ones."""

    def log_study_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:  # noqa: B027 - optional
        """Log study-level metrics (e.g. the selection's noise and misfit estimates) on the parent
        run; ``step`` is the number of finished runs."""

    def log_study_tags(self, tags: Mapping[str, str]) -> None:  # noqa: B027 - optional
        """Set study-level tags on the parent run (e.g. the selection's next choices)."""

    def fit_history(self, law: str) -> dict[int, dict[str, float]]:
        """The law's logged fits, as the metrics :func:`~orchestrator.mlflow_tracker.fit_metrics`
        makes of them (``law.<law>.<param>`` and its ``.lo``/``.hi``), by step (the number of
        finished runs; the latest fit at each step). Every invocation of the study counts."""
        return {}


def final_metrics(result: RunResult) -> dict[str, float]:
    """The end-of-run metrics a tracker records for a finished run (laws read their loss here)."""
    return {
        "final_loss": result.final_loss,
        "flops": result.plan.flops,
        "tokens_per_s": result.tokens_per_s,
        "wall_time_s": result.wall_time_s,
        **{f"eval_loss/{d}": v for d, v in result.eval_losses.items()},
        **result.metrics,
    }


class _ListSink:
    def __init__(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        self._rows = rows

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        self._rows.append((step, dict(metrics)))


class MemoryTracker(Tracker):
    """A tracker that keeps everything in memory: for tests and in-process use.

    Its sink factories only work in the same process (the inline executor)."""

    def __init__(self) -> None:
        self.parent_id = ""
        self.runs: dict[str, dict[str, object]] = {}
        self.fits: list[tuple[str, int, Mapping[str, object]]] = []
        self.closed: bool | None = None
        self.interrupted = False
        self.figures: dict[str, str] = {}
        self.figure_logs: list[tuple[int, list[str]]] = []  # (finished runs, figures) per refresh
        self.study_metrics: list[tuple[int, dict[str, float]]] = []
        self.study_tags: dict[str, str] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def open_study(self, name: str, config_yaml: str) -> str:
        self.parent_id = self.parent_id or f"study-{name}"
        for run in self.runs.values():
            if run["status"] == "RUNNING":
                run["status"] = "KILLED"
        self.closed = None
        return self.parent_id

    def finished_runs(self) -> dict[str, FinishedRun]:
        return {
            r["run_key"]: r["finished"]  # type: ignore[misc]
            for r in self.runs.values()
            if r["status"] == "FINISHED"
        }

    def start_run(
        self,
        spec: RunSpec,
        plan: RunPlan,
        *,
        attempt: int,
        budget: float | None,
        tags: Mapping[str, str] | None = None,
        inputs: Mapping[str, float] | None = None,
        memory: float = 0.0,
    ) -> str:
        with self._lock:
            run_id = f"run-{next(self._ids)}"
        self.runs[run_id] = {
            "run_key": spec.run_key,
            "status": "RUNNING",
            "attempt": attempt,
            "spec": spec,
            "plan": plan,
            "tags": dict(tags or {}),
            "inputs": dict(inputs or {}),
            "memory": memory,
            "metrics": [],
        }
        return run_id

    def sink_factory(self, run_id: str) -> SinkFactory:
        rows = self.runs[run_id]["metrics"]
        assert isinstance(rows, list)
        return lambda: _ListSink(rows)

    def finish_run(self, run_id: str, result: RunResult, leftover: Sequence[MetricRow] = ()) -> FinishedRun:
        run = self.runs[run_id]
        rows = run["metrics"]
        assert isinstance(rows, list)
        for key, value, _, step in leftover:
            rows.append((step, {key: value}))
        spec, tags, extra = run["spec"], run["tags"], run["inputs"]
        assert isinstance(spec, RunSpec) and isinstance(tags, dict) and isinstance(extra, dict)
        finished = FinishedRun(
            run_key=spec.run_key,
            run_id=run_id,
            inputs=law_inputs(result.plan, spec, extra),
            final_loss=result.final_loss,
            metrics=final_metrics(result),
            stage=tags.get(STAGE_TAG, "main"),
            group=spec.point.group,
        )
        run.update(status="FINISHED", finished=finished)
        return finished

    def fail_run(self, run_id: str, reason: str) -> None:
        self.runs[run_id].update(status="FAILED", reason=reason)

    def log_fit(self, law: str, fit_document: Mapping[str, object], *, step: int) -> None:
        self.fits.append((law, step, fit_document))

    def close_study(self, *, failed: bool, interrupted: bool = False) -> None:
        self.closed = failed
        self.interrupted = interrupted

    def log_figures(self, figures: Mapping[str, Any]) -> None:
        self.figures.update({name: type(fig).__name__ for name, fig in figures.items()})
        finished = sum(r["status"] == "FINISHED" for r in self.runs.values())
        self.figure_logs.append((finished, sorted(figures)))

    def log_study_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        self.study_metrics.append((step, dict(metrics)))

    def log_study_tags(self, tags: Mapping[str, str]) -> None:
        self.study_tags.update(tags)

    def fit_history(self, law: str) -> dict[int, dict[str, float]]:
        from orchestrator.mlflow_tracker import fit_metrics

        return {step: fit_metrics(name, document) for name, step, document in self.fits if name == law}
