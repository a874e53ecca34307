"""The MLflow tracker: one parent run per study, one nested child run per training attempt.

Facts this relies on (MLflow 3.17): the driver must create the sqlite database and the experiment
before any worker writes (concurrent schema migration fails); params are immutable, so each retry
gets its own child run; a child is nested in the UI by the ``mlflow.parentRunId`` tag; filters on
params and tags compare strings, so the run key is a tag.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from orchestrator.config import StudyConfig
from orchestrator.errors import StudyError
from orchestrator.secrets import redact_text
from orchestrator.tracking import (
    DRIVER_TAG,
    GROUP_TAG,
    HEARTBEAT_TAG,
    SILENT_S,
    STAGE_TAG,
    FinishedRun,
    MetricRow,
    SinkFactory,
    StudyStatus,
    Tracker,
    driver_state,
    final_metrics,
    law_inputs,
    this_driver,
)
from trainers import RunResult
from trainers.base import RunPlan, RunSpec

ROLE_TAG = "isoflop.role"
KEY_TAG = "isoflop.run_key"
STUDY_TAG = "isoflop.study"
PARENT_TAG = "mlflow.parentRunId"
_MAX_BATCH = 900  # MLflow's log_batch accepts at most 1000 metrics per call


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    """The embedded store in write-ahead-log mode with normal sync: commits stop waiting for a
    full fsync of the database file (about half of a run's tracking cost), readers never block
    the writer, and a crash of the process still loses nothing committed. (Local disks only,
    as sqlite itself; a cluster logs to an MLflow server.)"""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def default_tracking_uri(workdir: Path | None = None) -> str:
    """The embedded store: ``.isoflop/mlflow.db`` under the working directory."""
    root = (workdir or Path.cwd()).resolve() / ".isoflop"
    return f"sqlite:///{root / 'mlflow.db'}"


def tracking_uri(study: StudyConfig) -> str:
    """The store a study is tracked in: ``tracking.uri``, or the embedded one here."""
    return study.tracking.uri or default_tracking_uri()


def _artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


class MlflowSink:
    """Streams a worker's metrics into its child run, buffered into few ``log_batch`` calls.

    Nothing is written until ``flush_every_s`` has passed (then everything buffered goes in one
    call), so a short run never opens the store from the worker: what is still buffered at the
    end is handed to the driver (:meth:`drain`) and logged with the final metrics.
    """

    def __init__(self, uri: str, run_id: str, flush_every_s: float = 5.0) -> None:
        self._uri = uri
        self._client: MlflowClient | None = None
        self._run_id = run_id
        self._flush_every_s = flush_every_s
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        self.buffer(metrics, step=step)
        if time.monotonic() - self._last_flush > self._flush_every_s:
            self.flush()

    def buffer(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Add rows to the buffer only; the next :meth:`log_metrics` or :meth:`flush` writes them."""
        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())

    def flush(self) -> None:
        """Write everything buffered, oldest first, in calls of at most ``_MAX_BATCH`` rows.

        A chunk leaves the buffer only once MLflow has taken it: when ``log_batch`` fails (its
        HTTP retries spent), that chunk and all after it stay buffered, in order, for the next
        flush or for :meth:`drain`, and the error propagates. Chunks written before it are not
        written again.
        """
        if self._buffer and self._client is None:
            self._client = MlflowClient(tracking_uri=self._uri)
        try:
            while self._buffer:
                chunk = self._buffer[:_MAX_BATCH]
                assert self._client is not None
                self._client.log_batch(self._run_id, metrics=chunk)
                del self._buffer[: len(chunk)]
        finally:
            # after a failure too: the next attempt waits a flush interval instead of stalling
            # every logged step on another round of retries
            self._last_flush = time.monotonic()

    def drain(self) -> list[MetricRow]:
        """The rows not written yet, as plain tuples; the buffer is emptied."""
        rows = [(m.key, m.value, m.timestamp, m.step) for m in self._buffer]
        self._buffer = []
        return rows


class MlflowSinkFactory:
    """Picklable: shipped to Ray workers, builds an ``MlflowSink`` there."""

    def __init__(self, uri: str, run_id: str, flush_every_s: float = 5.0) -> None:
        self.uri = uri
        self.run_id = run_id
        self.flush_every_s = flush_every_s

    def __call__(self) -> MlflowSink:
        return MlflowSink(self.uri, self.run_id, self.flush_every_s)


class MlflowTracker(Tracker):
    """Tracks a study in an MLflow store (embedded sqlite or a tracking server)."""

    def __init__(self, uri: str, experiment: str, *, flush_every_s: float = 5.0) -> None:
        # MLflow prints "View run ... at: <server URI>" to stdout each time a run ends on a
        # server: two lines per training in the study's output, with the URI's credentials
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self.experiment_name = experiment
        self.flush_every_s = flush_every_s  # how often workers write their buffered curves
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = ""
        self.parent_id = ""
        self._inputs: dict[str, dict[str, float]] = {}  # run id -> law inputs, for finish_run
        self._stages: dict[str, str] = {}  # run id -> stage, for finish_run
        self._groups: dict[str, str] = {}  # run id -> resampling group, for finish_run

    # -- study -------------------------------------------------------------------------------
    def attach(self, name: str) -> str:
        """Find an existing study without changing anything (for status and export)."""
        if self.uri.startswith("sqlite:///") and not Path(self.uri.removeprefix("sqlite:///")).is_file():
            raise LookupError(f"no study named {name!r}: no tracking store at {redact_text(self.uri)}")
        exp = self.client.get_experiment_by_name(self.experiment_name)
        parent = find_parent_run(self.client, exp.experiment_id, name) if exp is not None else None
        if exp is None or parent is None:
            raise LookupError(f"no study named {name!r} in {redact_text(self.uri)}")
        self.experiment_id, self.parent_id = exp.experiment_id, parent
        return parent

    def open_study(self, name: str, config_yaml: str) -> str:
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            self.experiment_id = self.client.create_experiment(
                self.experiment_name,
                artifact_location=_artifact_root(self.uri),
                # the UI opens it in model-training mode (runs, metrics, charts), not GenAI mode
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        else:
            self.experiment_id = exp.experiment_id
        parent = find_parent_run(self.client, self.experiment_id, name)
        if parent is None:
            run = self.client.create_run(
                self.experiment_id, run_name=name, tags={ROLE_TAG: "study", STUDY_TAG: name}
            )
            self.parent_id = run.info.run_id
        else:
            check_not_running(self.client.get_run(parent), name)
            self.parent_id = parent
            self.client.update_run(self.parent_id, status="RUNNING")
        # who runs it now, and that it is alive (the study loop keeps this up to date)
        self.client.set_tag(self.parent_id, DRIVER_TAG, this_driver())
        self.client.set_tag(self.parent_id, HEARTBEAT_TAG, f"{time.time():.0f}")
        # A driver that died left its in-flight children RUNNING: they will be redone.
        for run in self._children("attributes.status = 'RUNNING'"):
            self.client.set_tag(run.info.run_id, "isoflop.failure", "driver stopped before the run ended")
            self.client.set_terminated(run.info.run_id, status="KILLED")
        self.client.log_text(self.parent_id, config_yaml, f"study/{int(time.time())}.yaml")
        return self.parent_id

    def close_study(self, *, failed: bool, interrupted: bool = False) -> None:
        status = "KILLED" if interrupted else "FAILED" if failed else "FINISHED"
        self.client.set_terminated(self.parent_id, status=status)

    def _children(self, extra: str = "") -> list:
        query = f"tags.`{PARENT_TAG}` = '{self.parent_id}'"
        if extra:
            query += f" and {extra}"
        return list(
            self.client.search_runs([self.experiment_id], filter_string=query, max_results=50000)
        )

    # -- runs --------------------------------------------------------------------------------
    def finished_runs(self) -> dict[str, FinishedRun]:
        done: dict[str, FinishedRun] = {}
        for run in self._children("attributes.status = 'FINISHED'"):
            key = run.data.tags.get(KEY_TAG)
            metrics = run.data.metrics
            if key is None or "final_loss" not in metrics:
                continue
            inputs = {k.removeprefix("law."): float(v) for k, v in run.data.params.items() if k.startswith("law.")}
            done[key] = FinishedRun(
                run_key=key,
                run_id=run.info.run_id,
                inputs=inputs,
                final_loss=float(metrics["final_loss"]),
                metrics={k: float(v) for k, v in metrics.items()},
                stage=run.data.tags.get(STAGE_TAG, "main"),
                group=run.data.tags.get(GROUP_TAG, ""),
            )
        return done

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
        tags = {
            PARENT_TAG: self.parent_id,
            KEY_TAG: spec.run_key,
            STUDY_TAG: spec.study,
            ROLE_TAG: "training",
            "isoflop.attempt": str(attempt),
            **({GROUP_TAG: spec.point.group} if spec.point.group else {}),
            **(tags or {}),
        }
        name = f"N{plan.n_params:.2g}-D{plan.tokens:.2g}-{spec.run_key[:6]}".replace("+", "")
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        self._inputs[run_id] = law_inputs(plan, spec, inputs)
        params = run_params(spec, plan, budget, self._inputs[run_id], memory=memory)
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        self._stages[run_id] = (tags or {}).get(STAGE_TAG, "main")
        self._groups[run_id] = spec.point.group
        return run_id

    def sink_factory(self, run_id: str) -> SinkFactory:
        return MlflowSinkFactory(self.uri, run_id, self.flush_every_s)

    def finish_run(self, run_id: str, result: RunResult, leftover: Sequence[MetricRow] = ()) -> FinishedRun:
        now = int(time.time() * 1000)
        final = final_metrics(result)
        metrics = [Metric(k, float(v), ts, step) for k, v, ts, step in leftover]
        metrics += [Metric(k, float(v), now, 0) for k, v in final.items()]
        for i in range(0, len(metrics), _MAX_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + _MAX_BATCH])
        self.client.set_terminated(run_id, status="FINISHED")
        return FinishedRun(
            run_key=result.run_key,
            run_id=run_id,
            inputs=self._inputs.pop(run_id),
            final_loss=result.final_loss,
            metrics=final,
            stage=self._stages.pop(run_id, "main"),
            group=self._groups.pop(run_id, ""),
        )

    def fail_run(self, run_id: str, reason: str) -> None:
        self._inputs.pop(run_id, None)
        self._stages.pop(run_id, None)
        self._groups.pop(run_id, None)
        self.client.set_tag(run_id, "isoflop.failure", redact_text(reason)[:4000])
        self.client.set_terminated(run_id, status="FAILED")

    def log_fit(self, law: str, fit_document: Mapping[str, object], *, step: int) -> None:
        self.log_study_metrics(fit_metrics(law, fit_document), step=step)
        self.client.log_text(self.parent_id, json.dumps(fit_document, indent=2), f"fits/{law}.json")

    def fit_history(self, law: str) -> dict[int, dict[str, float]]:
        prefix = f"law.{law}."
        keys = [k for k in self.client.get_run(self.parent_id).data.metrics if k.startswith(prefix)]
        history: dict[int, dict[str, float]] = {}
        for key in keys:
            for m in sorted(self.client.get_metric_history(self.parent_id, key), key=lambda m: m.timestamp):
                history.setdefault(m.step, {})[key] = m.value  # the latest value at each step
        return dict(sorted(history.items()))

    def log_figures(self, figures: Mapping[str, object]) -> None:
        for name, fig in figures.items():
            self.client.log_figure(self.parent_id, fig, f"plots/{name}")

    def log_study_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.parent_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_study_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(rows), _MAX_BATCH):
            self.client.log_batch(self.parent_id, metrics=rows[i : i + _MAX_BATCH])


def fit_metrics(law: str, document: Mapping[str, object]) -> dict[str, float]:
    """A law fit as parent-run metrics: ``law.<law>.<param>`` with ``.lo``/``.hi`` interval ends,
    the objective, and the compute-optimal recipe per budget (``law.<law>.N_opt.C1e21``)."""
    out: dict[str, float] = {}
    params = document.get("params") or {}
    intervals = document.get("intervals") or {}
    assert isinstance(params, Mapping) and isinstance(intervals, Mapping)
    for k, v in params.items():
        out[f"law.{law}.{k}"] = float(v)
        if k in intervals:
            lo, hi = intervals[k]
            out[f"law.{law}.{k}.lo"], out[f"law.{law}.{k}.hi"] = float(lo), float(hi)
    objective = document.get("objective")
    if isinstance(objective, int | float):
        out[f"law.{law}.objective"] = float(objective)
    for row in document.get("compute_optimal") or []:  # type: ignore[union-attr]
        tag = f"C{row['C']:.0e}".replace("+", "")
        for q in ("N_opt", "D_opt", "loss"):
            out[f"law.{law}.{q}.{tag}"] = float(row[q])
    return {k: v for k, v in out.items() if np.isfinite(v)}


def run_params(
    spec: RunSpec, plan: RunPlan, budget: float | None, inputs: Mapping[str, float], *, memory: float = 0.0
) -> dict[str, str]:
    """A child run's params: every axis, the exact sizes, the conventions used and its law
    ``inputs`` (:func:`~orchestrator.tracking.law_inputs`) as ``law.<name>``."""
    params: dict[str, object] = {
        "N_target": spec.point.n_params,
        "D_target": spec.point.tokens,
        "seed": spec.seed,
        "trainer": spec.trainer.kind,
        "attention": spec.trainer.model.attention,
        "seq_len": spec.trainer.seq_len,
        "batch_size": spec.trainer.batch_size,
        "lr": spec.trainer.optim.lr,
        "schedule": spec.trainer.optim.schedule,
        "flop_convention": plan.flop_convention,
        "steps": plan.steps,
        "flops_per_token": plan.flops_per_token,
        "mixture": list(spec.point.mixture),
        "sparsity": spec.point.sparsity,
        "teacher": spec.point.teacher or "",
        "init_from": spec.point.init_from or "",
        "budget": budget if budget is not None else "",
    }
    if plan.shape is not None:
        params.update(n_layer=plan.shape.n_layer, d_model=plan.shape.d_model, n_head=plan.shape.n_head)
    if memory > 0:  # what the scheduler reserved for it (a teacher's weights included)
        params["memory_budget_mb"] = round(memory / 2**20, 1)
    params.update({f"law.{k}": v for k, v in inputs.items()})
    return {k: str(v) for k, v in params.items()}


def find_parent_run(client: MlflowClient, experiment_id: str, name: str) -> str | None:
    """The parent run of study ``name`` in an experiment, if it exists."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'study' and tags.`{STUDY_TAG}` = '{name}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def check_not_running(parent, name: str) -> None:  # noqa: ANN001 - mlflow.entities.Run
    """Refuse to open a study another driver is running: both would train the same runs, and
    each would take the other's runs in flight for a dead driver's. A driver known to have
    stopped (:func:`~orchestrator.tracking.driver_state`) is not in the way, nor is this process."""
    if parent.info.status != "RUNNING":
        return
    tags = parent.data.tags
    state = driver_state(tags)
    if not state.alive or state.driver is None or state.driver == this_driver():
        return
    wait = "" if state.silent_s is None else (
        f"; it reported {state.silent_s:.0f} s ago, and is taken for stopped once it has been silent for {SILENT_S:.0f} s"
    )
    raise StudyError(
        "name",
        f"study {name!r} is running (driver {state.driver}, parent run {parent.info.run_id}){wait}: "
        "follow it with `isoflop status`, or stop it before running it again",
    )


def study_status(uri: str, experiment: str, name: str) -> StudyStatus:
    """A snapshot of a study from its store (also while it runs elsewhere): every attempt of
    every run, the times they took, the latest fit document of every law, the selection's
    metrics and tags, and the latest failure."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    parent = find_parent_run(client, exp.experiment_id, name) if exp is not None else None
    if exp is None or parent is None:
        raise LookupError(f"no study named {name!r} in {redact_text(uri)}")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent}'",
        max_results=50000,
        order_by=["attributes.start_time ASC"],
    )
    now_ms = time.time() * 1000
    counts: dict[str, int] = {}
    attempts: dict[str, list[str]] = {}
    seconds: list[float] = []
    running_for: list[float] = []
    flops = 0.0
    last_failure: tuple[int, str] | None = None
    last_ms = 0.0  # the latest start or end of a run
    for run in runs:
        status = run.info.status
        counts[status] = counts.get(status, 0) + 1
        last_ms = max(last_ms, run.info.start_time or 0, run.info.end_time or 0)
        attempts.setdefault(run.data.tags.get(KEY_TAG, run.info.run_id), []).append(status)
        if status == RunStatus.to_string(RunStatus.FINISHED):
            flops += float(run.data.metrics.get("flops", 0.0))
            if run.info.end_time:
                seconds.append((run.info.end_time - run.info.start_time) / 1000)
        elif status == "RUNNING":
            running_for.append(max(now_ms - run.info.start_time, 0.0) / 1000)
        elif status == "FAILED" and (last_failure is None or run.info.start_time >= last_failure[0]):
            last_failure = (run.info.start_time, run.data.tags.get("isoflop.failure", "unknown error"))
    study_run = client.get_run(parent)
    parent_metrics = study_run.data.metrics
    fits: dict[str, dict[str, float]] = {}
    for key, value in parent_metrics.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "law":  # law.<law>.<param>; intervals have 4 parts
            fits.setdefault(parts[1], {})[parts[2]] = float(value)
    documents: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="isoflop-status-") as scratch:
        for artifact in client.list_artifacts(parent, "fits"):
            if artifact.path.endswith(".json"):
                # a document being rewritten right now is skipped: its metrics still tell
                with contextlib.suppress(OSError, ValueError, MlflowException):
                    local = client.download_artifacts(parent, artifact.path, scratch)
                    documents[Path(artifact.path).stem] = json.loads(Path(local).read_text())
    info = study_run.info
    # every invocation logs its YAML as study/<unix seconds>.yaml (:meth:`MlflowTracker.open_study`)
    started = sorted(
        int(Path(a.path).stem) for a in client.list_artifacts(parent, "study") if Path(a.path).stem.isdigit()
    )
    # a resumed parent run is RUNNING again but keeps the end time of its previous invocation
    end_ms = now_ms if info.status == "RUNNING" else info.end_time or now_ms
    # (named to the second: a later invocation's time is exact to a second, the first's is the run's)
    latest_ms = max(1000.0 * started[-1], info.start_time) if len(started) > 1 else info.start_time
    return StudyStatus(
        name=name,
        parent_run_id=parent,
        counts=counts,
        flops_done=flops,
        fits=fits,
        selection={k: float(v) for k, v in parent_metrics.items() if k.startswith("selection.")},
        attempts=attempts,
        run_seconds=seconds,
        running_since_s=running_for,
        elapsed_s=max(end_ms - latest_ms, 0.0) / 1000,
        since_first_s=max(end_ms - info.start_time, 0.0) / 1000,
        invocations=max(len(started), 1),
        idle_s=max(now_ms - last_ms, 0.0) / 1000 if last_ms else None,
        study_status=info.status,
        fit_documents=documents,
        tags={k: v for k, v in study_run.data.tags.items() if k.startswith("isoflop.")},
        last_failure=last_failure[1] if last_failure else None,
    )


__all__ = [
    "MlflowSink",
    "MlflowSinkFactory",
    "MlflowTracker",
    "default_tracking_uri",
    "find_parent_run",
    "study_status",
]
