"""Where trainings execute: Ray tasks on a cluster, or inline in this process (tests, debugging).

An executor takes ``RunTask`` objects and hands back ``Completion`` objects as they finish; the
scheduler never touches Ray directly, so it can be stepped in tests with the inline executor.
Executors also say which submitted tasks have not started yet (``waiting``), so a watchdog can
report runs that no node picks up.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any

from orchestrator.cluster import sigint_deferred
from orchestrator.startboard import StartBoard
from orchestrator.sysmetrics import sampled
from orchestrator.tracking import MetricRow, SinkFactory
from trainers import RunResult, RunSpec, get_trainer


@dataclass(frozen=True, kw_only=True)
class RunTask:
    """One attempt of one run, as shipped to a worker."""

    spec: RunSpec
    run_id: str  # the tracking store's id of this attempt
    sink_factory: SinkFactory
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: float = 0.0  # bytes of memory to reserve on the node (0 = no reservation)
    # data-parallel workers (``orchestrator.parallel``); the figures above are then per worker
    workers: int = 1
    storage: str = ""  # with several workers: where Ray Train keeps its state (shared by nodes)


@dataclass(frozen=True, kw_only=True)
class Completion:
    """A finished attempt: a result, or the reason it failed. ``leftover``: metric rows
    ``(key, value, timestamp_ms, step)`` the worker buffered but left to the driver to log."""

    task: RunTask
    result: RunResult | None = None
    error: str | None = None
    leftover: tuple[MetricRow, ...] = ()


def execute(spec: RunSpec, sink_factory: SinkFactory) -> tuple[RunResult, tuple[MetricRow, ...]]:
    """Train one run (the body of every worker task); returns the result and the metric rows
    still buffered in the sink, which the driver logs with the final metrics in one write (a
    short run then costs the worker no tracking-store round trip at all). The host's use is
    sampled meanwhile (:mod:`orchestrator.sysmetrics`). A failed run flushes its partial curve
    from the worker, for the post-mortem."""
    sink = sink_factory()
    try:
        with sampled(sink) as monitored:  # system/* metrics while it trains
            result = get_trainer(spec.trainer).train(spec, monitored)
    except BaseException as exc:
        flush = getattr(sink, "flush", None)
        if flush is not None:
            try:
                flush()
            except Exception as lost:  # noqa: BLE001 - the training's own error is the one to report
                # the tracking store is down too: the rows stay in the sink, the error says why
                exc.add_note(f"its buffered metrics could not be written either: {lost}")
        raise
    drain = getattr(sink, "drain", None)
    return result, tuple(drain()) if drain is not None else ()


def execute_marked(spec: RunSpec, sink_factory: SinkFactory, board: Any, token: str) -> tuple[RunResult, tuple[MetricRow, ...]]:
    """:func:`execute`, after telling ``board`` that attempt ``token`` has started."""
    board.mark.remote(token)
    return execute(spec, sink_factory)


class Executor(ABC):
    """Runs tasks and reports completions."""

    @abstractmethod
    def submit(self, task: RunTask) -> None:
        """Start a task (non-blocking for real executors)."""

    @abstractmethod
    def wait(self, timeout: float) -> list[Completion]:
        """Completions that arrived, waiting at most ``timeout`` seconds for the first one."""

    @abstractmethod
    def in_flight(self) -> int:
        """Tasks submitted and not yet reported."""

    def capacity(self, num_cpus: float, num_gpus: float) -> int:
        """How many tasks of this size can run at once (a hint for the concurrency cap)."""
        return 1

    def waiting(self, older_than: float = 0.0) -> list[tuple[RunTask, float]]:
        """Tasks submitted at least ``older_than`` seconds ago and not started on any worker yet,
        with the seconds since submission."""
        return []

    def shutdown(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release resources; in-flight tasks are abandoned."""


class InlineExecutor(Executor):
    """Runs each task synchronously inside ``wait``: deterministic, no Ray, for tests. A task of
    several data-parallel workers trains in this one process (the same run, up to summation
    order)."""

    def __init__(self) -> None:
        self._queue: deque[RunTask] = deque()

    def submit(self, task: RunTask) -> None:
        self._queue.append(task)

    def wait(self, timeout: float) -> list[Completion]:
        if not self._queue:
            return []
        task = self._queue.popleft()
        try:
            result, leftover = execute(task.spec, task.sink_factory)
            return [Completion(task=task, result=result, leftover=leftover)]
        except Exception as exc:  # the reason is recorded on the run; the study goes on
            return [Completion(task=task, error=_describe(exc))]

    def in_flight(self) -> int:
        return len(self._queue)


def _describe(exc: BaseException) -> str:
    last = traceback.format_exception(exc)[-3:]
    return f"{type(exc).__name__}: {exc}\n{''.join(last)}".strip()


class RayExecutor(Executor):
    """Runs each task as a Ray task with its resource request; results collected by ``ray.wait``."""

    def __init__(self, ray_module: Any | None = None, *, board_poll_s: float = 2.0) -> None:
        if ray_module is None:
            import ray as ray_module
        self._ray = ray_module
        self._remote = self._ray.remote(execute_marked)
        self._remote_parallel: Any = None
        self._pending: dict[Any, RunTask] = {}
        self._submitted: dict[str, float] = {}  # run id -> monotonic submission time
        self._board: Any = None
        self._board_poll_s = board_poll_s
        self._started: set[str] = set()
        self._polled = -float("inf")

    def submit(self, task: RunTask) -> None:
        if self._board is None:
            self._board = self._ray.remote(num_cpus=0)(StartBoard).remote()
        name = f"run-{task.spec.run_key}"
        if task.workers > 1:
            ref = self._submit_parallel(task, name)
        else:
            options: dict[str, Any] = {"num_cpus": task.num_cpus, "num_gpus": task.num_gpus}
            if task.memory > 0:
                options["memory"] = int(task.memory)
            ref = self._remote.options(**options, max_retries=0, name=name).remote(
                task.spec, task.sink_factory, self._board, task.run_id
            )
        self._pending[ref] = task
        self._submitted[task.run_id] = time.monotonic()

    def _submit_parallel(self, task: RunTask, name: str) -> Any:
        """A data-parallel run: a task holding no resources drives Ray Train, whose placement
        group reserves the workers."""
        if self._remote_parallel is None:
            from orchestrator.parallel import execute_parallel

            self._remote_parallel = self._ray.remote(execute_parallel)
        return self._remote_parallel.options(num_cpus=0, max_retries=0, name=name).remote(
            task.spec,
            task.sink_factory,
            workers=task.workers,
            num_cpus=task.num_cpus,
            num_gpus=task.num_gpus,
            memory=task.memory,
            storage=task.storage,
            board=self._board,
            token=task.run_id,
        )

    def wait(self, timeout: float) -> list[Completion]:
        if not self._pending:
            return []
        ready, _ = self._ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        if ready:  # collect everything else that is already done too
            more, _ = self._ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        completions = []
        for ref in ready:
            task = self._pending.pop(ref)
            self._submitted.pop(task.run_id, None)
            self._started.discard(task.run_id)
            try:
                result, leftover = self._ray.get(ref)
                completions.append(Completion(task=task, result=result, leftover=leftover))
            except Exception as exc:
                cause = getattr(exc, "cause", None)
                completions.append(Completion(task=task, error=_describe(cause or exc)))
        return completions

    def in_flight(self) -> int:
        return len(self._pending)

    def capacity(self, num_cpus: float, num_gpus: float) -> int:
        total = self._ray.cluster_resources()
        limits = []
        if num_cpus > 0:
            limits.append(int(total.get("CPU", 0) // num_cpus))
        if num_gpus > 0:
            limits.append(int(total.get("GPU", 0) // num_gpus))
        return max(1, min(limits)) if limits else 1

    def waiting(self, older_than: float = 0.0) -> list[tuple[RunTask, float]]:
        """Asks the start board (at most every ``board_poll_s`` seconds, and only while some task
        not known to have started is ``older_than``) which attempts started."""
        now = time.monotonic()
        old = [(t, now - self._submitted[t.run_id]) for t in self._pending.values() if t.run_id in self._submitted]
        old = [(t, age) for t, age in old if age >= older_than and t.run_id not in self._started]
        if old and self._board is not None and now - self._polled >= self._board_poll_s:
            self._polled = now
            with contextlib.suppress(Exception):  # a slow board only delays the report
                self._started.update(self._ray.get(self._board.started.remote([t.run_id for t, _ in old]), timeout=10))
        return [(t, age) for t, age in old if t.run_id not in self._started]

    def shutdown(self) -> None:
        """Cancel the tasks still running and stop the start board, with Ctrl-C held back (a
        second one must not leave it half done). A task already finished is not cancelled:
        there is nothing left to stop, and ``ray.cancel`` racing a task's completion reply is a
        known Ray abort (a RAY_CHECK on the pending-task table, "Tried to ... task that was not
        pending"; ray-project/ray#54798)."""
        pending = list(self._pending)
        self._pending.clear()
        self._submitted.clear()
        with sigint_deferred():
            if pending:
                _, running = self._ray.wait(pending, num_returns=len(pending), timeout=0)
                for ref in running:
                    with contextlib.suppress(Exception):  # finished meanwhile: nothing to stop
                        self._ray.cancel(ref, force=True)
            if self._board is not None:
                with contextlib.suppress(Exception):
                    self._ray.kill(self._board)
                self._board = None
