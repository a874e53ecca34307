"""The steppable scheduler: keeps runs in flight, records results, retries failures.

``step()`` does one unit of work (fill free slots, wait briefly for results, record them), so tests
drive it deterministically with an inline executor and an in-memory tracker, and the CLI simply
loops over it. Ray, MLflow and the refit hook are all injected.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from orchestrator.executors import Completion, Executor, RunTask
from orchestrator.grid import PlannedRun, branch_step, trained_flops
from orchestrator.tracking import STAGE_TAG, FinishedRun, Tracker
from trainers.checkpoint import checkpoint_path, final_checkpoint, kept_checkpoint_path

#: how a dependency's final loss enters its dependent's law inputs
DEPENDENCY_INPUTS = {"teacher": "L_T", "init": "L_pt0"}


#: tag of a run trained by several data-parallel workers: how many
WORKERS_TAG = "isoflop.workers"


@dataclass(frozen=True, kw_only=True)
class CheckpointPolicy:
    """Where runs keep checkpoints: ``root/<run key>``. Runs others depend on always do (their
    dependents read the final checkpoint); with ``all_runs`` every run does, so a retried
    attempt resumes where the failed one stopped. ``every``: optimiser steps between
    checkpoints, 0 = only the final one."""

    root: Path
    all_runs: bool = False
    every: int = 0

    def directory(self, key: str) -> Path:
        return self.root / key


@dataclass(frozen=True, kw_only=True)
class Event:
    """Something that happened to a run, for progress display."""

    kind: str  # skip | start | finish | fail | retry | pending (submitted long ago, not started)
    run: PlannedRun
    attempt: int = 0
    finished: FinishedRun | None = None
    error: str | None = None


@dataclass(kw_only=True)
class SchedulerStats:
    """Counts over the runs this scheduler owns."""

    total: int
    skipped: int = 0  # already finished in the store before this invocation
    finished: int = 0
    failed: int = 0  # failed after all retries
    attempts_failed: int = 0
    flops_done: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # run key -> last reason
    pending_reported: int = 0  # attempts the watchdog reported as waiting too long for a node


class Proposer(Protocol):
    """Supplies runs on demand (budgeted selection) instead of a fixed list.

    A proposed run that depends on others (a distillation student) comes after them, in the same
    proposal or an earlier one (its teacher, whose stage is not ``main``); the scheduler trains a
    proposed run another depends on with a checkpoint, skips it when the store (or a study it
    adopts runs from) already has it finished with its checkpoint, and parks its dependents
    until it has finished."""

    def start(self, finished: Mapping[str, FinishedRun]) -> Sequence[PlannedRun]:
        """Called once, before the first :meth:`propose`, with the runs already finished: this
        study's store and the runs adopted from other studies (``grid.teachers.from_studies``).
        Returns the proposer's own runs among the store's (those an earlier invocation trained):
        they count as done, for the fits and the totals, and are never proposed again."""

    def propose(self, k: int) -> list[PlannedRun]:
        """Up to ``k`` runs to start now; an empty list means no more runs will come, unless
        :meth:`waiting` says they will once something else has happened."""

    def waiting(self) -> bool:
        """True while an empty proposal means "not yet" (e.g. until the law's fit catches up
        with the finished runs): the scheduler asks again instead of winding down."""

    def observe(self, event: Event) -> None:
        """Called with every scheduler event (start, finish, fail, skip, retry)."""


class Scheduler:
    """Runs a list of planned runs through an executor, recording each attempt in a tracker."""

    def __init__(
        self,
        runs: list[PlannedRun],
        *,
        executor: Executor,
        tracker: Tracker,
        max_concurrent: int,
        max_retries: int,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        on_event: Callable[[Event], None] | None = None,
        on_finished: Callable[[list[FinishedRun]], None] | None = None,
        proposer: Proposer | None = None,
        checkpoints: CheckpointPolicy | None = None,
        memory: Callable[[PlannedRun], float] | None = None,
        gpus: Callable[[PlannedRun], float] | None = None,
        workers: Callable[[PlannedRun], int] | None = None,
        pending_warn_s: float = 0.0,
        adopted: Mapping[str, FinishedRun] | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        self.runs = runs
        self.executor = executor
        self.tracker = tracker
        self.max_concurrent = max_concurrent
        self.max_retries = max_retries
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.proposer = proposer
        self._exhausted = proposer is None
        user_event = on_event or (lambda event: None)

        def on_any(event: Event) -> None:
            if proposer is not None:
                proposer.observe(event)
            user_event(event)

        self.on_event = on_any
        self.on_finished = on_finished or (lambda runs: None)
        self.stats = SchedulerStats(total=len(runs))
        self.finished: dict[str, FinishedRun] = {}
        self._pending: deque[PlannedRun] = deque()
        self._attempts: dict[str, int] = {}
        self._running: dict[str, PlannedRun] = {}
        self._started = False
        self._stored: dict[str, FinishedRun] = {}
        # finished runs of other studies that stand in for the runs others here depend on
        self._adopted = dict(adopted or {})
        self.checkpoints = checkpoints
        self.memory = memory or (lambda run: 0.0)  # bytes each run (each of its workers) reserves
        self.gpus = gpus or (lambda run: self.num_gpus)  # GPUs (or a share of one) each run asks for
        # data-parallel workers of each run (orchestrator.parallel); num_cpus and memory are per
        # worker, the run's GPUs are split evenly among them
        self.workers = workers or (lambda run: 1)
        self._needed = {dep for run in runs for dep in run.depends_on.values()}  # keys others depend on
        self._waiting: dict[str, list[PlannedRun]] = {}  # unfinished dependency -> runs parked on it
        self._failed: dict[str, str] = {}  # run key -> why it failed for good
        self._planned = {run.key: run for run in runs}
        self.pending_warn_s = pending_warn_s  # report attempts not started after this long (0 = never)
        self._reported: set[str] = set()  # run ids already reported as pending

    def start(self) -> None:
        """Skip runs the store already has as FINISHED; queue the rest.

        A finished run that others depend on is trained again when its checkpoint is gone (its
        dependents need the weights, and a run retrains to the same result)."""
        if self._started:
            return
        self._started = True
        if self._needed and self.checkpoints is None:
            raise ValueError("runs depend on other runs' checkpoints: the scheduler needs a CheckpointPolicy")
        stored = self.tracker.finished_runs()
        adopted = {k: r for k, r in self._adopted.items() if k in self._needed}
        done = self._stored = {**adopted, **stored}
        claimed = list(self.proposer.start({**self._adopted, **stored}) or []) if self.proposer is not None else []
        known = {run.key for run in self.runs}
        for run in self.runs:
            unknown = [k for k in run.depends_on.values() if k not in known and k not in done]
            if unknown:
                raise ValueError(f"run {run.key} depends on {unknown[0]}, which is neither planned nor finished")
        for run in self.runs:
            previous = done.get(run.spec.run_key)
            if previous is not None and self._checkpoint_missing(run):
                # trained again from scratch (to the same result): a last.pt left behind would
                # make it resume at its end and never rewrite the missing files
                checkpoint_path(self.checkpoints.directory(run.key)).unlink(missing_ok=True)  # type: ignore[union-attr]
                previous = None
            if previous is not None:
                self._skip(run, previous)
            else:
                self._pending.append(run)
        for run in claimed:  # a budgeted selection's runs from earlier invocations
            if run.spec.run_key in stored and run.spec.run_key not in self.finished:
                self.runs.append(run)
                self.stats.total += 1
                self._skip(run, stored[run.spec.run_key])

    def _skip(self, run: PlannedRun, previous: FinishedRun) -> None:
        """``run`` is done already (``previous``): counted as finished and reported as skipped."""
        self.finished[run.spec.run_key] = previous
        self.stats.skipped += 1
        self.on_event(Event(kind="skip", run=run, finished=previous))

    def _checkpoint_missing(self, run: PlannedRun) -> bool:
        if run.key not in self._needed or self.checkpoints is None:
            return False
        folder = self.checkpoints.directory(run.key)
        files = [final_checkpoint(folder, run.spec.trainer), *(kept_checkpoint_path(folder, s) for s in run.spec.keep_steps)]
        return not all(f.is_file() for f in files)

    @property
    def done(self) -> bool:
        return self._started and self._exhausted and not self._pending and not self._running

    def step(self, timeout: float = 1.0) -> bool:
        """Fill free slots, wait up to ``timeout`` s for results, record them. False when done."""
        self.start()
        self._fill()
        if self._running:
            completions = self.executor.wait(timeout)
            newly = [f for f in (self._record(c) for c in completions) if f is not None]
            if newly:
                self.on_finished(newly)
            self._watch()
        elif not self._exhausted and not self._pending:
            time.sleep(min(timeout, 0.05))  # the proposer is waiting (for a refit): don't spin
        return not self.done

    def _watch(self) -> None:
        """Report every attempt that has waited ``pending_warn_s`` for a node without starting
        (Ray leaves such a task pending silently, e.g. when the nodes able to hold it are busy
        with other work or an autoscaler cannot add one); each attempt is reported once."""
        if self.pending_warn_s <= 0 or not self._running:
            return
        for task, age in self.executor.waiting(self.pending_warn_s):
            run = self._running.get(task.spec.run_key)
            if run is None or task.run_id in self._reported:
                continue
            self._reported.add(task.run_id)
            self.stats.pending_reported += 1
            memory = f", {task.memory / 2**20:.0f} MB" if task.memory > 0 else ""
            where = "a node" if task.workers == 1 else f"{task.workers} workers, each"
            self.on_event(Event(
                kind="pending", run=run, attempt=self._attempts.get(run.key, 0),
                error=f"not started after {age:.0f} s: waiting for {where} with {task.num_cpus:g} CPUs, "
                f"{task.num_gpus:g} GPUs{memory} free (check the cluster's nodes and autoscaler)",
            ))

    def _fill(self) -> None:
        """Start runs until every slot is busy, asking the proposer when the queue is empty."""
        while len(self._running) < self.max_concurrent:
            if not self._pending and not self._exhausted:
                assert self.proposer is not None
                proposed = self.proposer.propose(self.max_concurrent - len(self._running))
                if not proposed:
                    self._exhausted = not self.proposer.waiting()
                    break
                self._pending.extend(self._admit(proposed))
                continue  # all of them may have been finished already: ask again
            if not self._pending:
                break
            run = self._pending.popleft()
            if self._ready(run):
                self._submit(run)

    def _ready(self, run: PlannedRun) -> bool:
        """Whether every run ``run`` depends on has finished; if one has not, ``run`` waits for it
        (or fails with it, when it has failed for good)."""
        for dep in run.depends_on.values():
            if dep in self.finished:
                continue
            if dep in self._failed:
                self._fail_blocked(run, dep)
            else:
                self._waiting.setdefault(dep, []).append(run)
            return False
        return True

    def _fail_blocked(self, run: PlannedRun, dep: str) -> None:
        """``run`` cannot train because ``dep`` failed for good: record it as failed too."""
        use = next(k for k, v in run.depends_on.items() if v == dep)
        reason = f"its {use} run {dep} failed: {self._failed[dep]}"
        run_id = self.tracker.start_run(run.spec, run.plan, attempt=1, budget=run.budget, tags=self._tags(run))
        self.tracker.fail_run(run_id, reason)
        self._give_up(run, reason)

    def _give_up(self, run: PlannedRun, reason: str) -> None:
        self._failed[run.key] = reason
        self.stats.failed += 1
        self.stats.failures[run.key] = reason
        self.on_event(Event(kind="fail", run=run, attempt=self._attempts.get(run.key, 0), error=reason))
        for blocked in self._waiting.pop(run.key, []):
            self._fail_blocked(blocked, run.key)

    def _release(self, key: str) -> None:
        """Runs parked on ``key`` go back to the front of the queue now that it has finished."""
        self._pending.extendleft(reversed(self._waiting.pop(key, [])))

    @staticmethod
    def _tags(run: PlannedRun) -> dict[str, str]:
        return {**run.tags, STAGE_TAG: run.stage}

    def _admit(self, runs: list[PlannedRun]) -> list[PlannedRun]:
        """Proposed runs minus those already finished (in the store, adopted from another study,
        or here), reported as skipped. Runs others depend on join the keys that need a
        checkpoint first; one finished whose checkpoint is gone is trained again, as in
        :meth:`start`."""
        for run in runs:
            self._planned[run.key] = run
            self._needed.update(run.depends_on.values())
            if run.stage != "main":
                self._needed.add(run.key)
        if self._needed and self.checkpoints is None:
            raise ValueError("runs depend on other runs' checkpoints: the scheduler needs a CheckpointPolicy")
        for run in runs:
            unknown = [
                k for k in run.depends_on.values()
                if k not in self._planned and k not in self._stored and k not in self._adopted
            ]
            if unknown:
                raise ValueError(f"run {run.key} depends on {unknown[0]}, which is neither planned nor finished")
        fresh = []
        for run in runs:
            if run.spec.run_key in self.finished and run.key not in self._needed:
                continue  # counted already (a selection's run from an earlier invocation)
            self.runs.append(run)
            self.stats.total += 1
            key = run.spec.run_key
            previous = self.finished.get(key) or self._stored.get(key)
            if previous is None and key in self._needed:
                previous = self._adopted.get(key)
            if previous is not None and key not in self.finished and self._checkpoint_missing(run):
                checkpoint_path(self.checkpoints.directory(run.key)).unlink(missing_ok=True)  # type: ignore[union-attr]
                previous = None
            if previous is None:
                fresh.append(run)
                continue
            self._skip(run, previous)
        return fresh

    def run(self, timeout: float = 1.0) -> SchedulerStats:
        """Step until every run has finished or failed for good."""
        while self.step(timeout):
            pass
        return self.stats

    def _resolve(self, run: PlannedRun) -> tuple[PlannedRun, dict[str, float]]:
        """The run's spec with its checkpoint paths filled in, and its law inputs from the runs it
        depends on (their final losses: L_T for a teacher, L_pt0 for a pretrained run)."""
        spec = run.spec
        inputs = dict(run.inputs)
        if self.checkpoints is not None and (run.key in self._needed or self.checkpoints.all_runs):
            every = self.checkpoints.every or run.plan.steps
            spec = replace(spec, checkpoint_dir=str(self.checkpoints.directory(run.key)), checkpoint_every=every)
        for use, dep in run.depends_on.items():
            assert self.checkpoints is not None
            path = str(checkpoint_path(self.checkpoints.directory(dep)))
            if use == "teacher":
                # what the teacher left: its weights, or for a simulated teacher its final loss
                teacher = self._planned.get(dep)
                config = teacher.spec.trainer if teacher is not None else spec.trainer
                spec = replace(spec, teacher_checkpoint=str(final_checkpoint(self.checkpoints.directory(dep), config)))
            elif use == "branch":
                kept = kept_checkpoint_path(self.checkpoints.directory(dep), branch_step(run.plan, spec.trainer))
                spec = replace(spec, branch_from=str(kept))
                continue  # a branch's trunk gives it no law input
            elif use == "init":
                upstream = self._planned.get(dep)
                mixture = upstream.spec.point.mixture if upstream is not None else ()
                spec = replace(spec, init_checkpoint=path, init_mixture=mixture)
            else:
                raise ValueError(f"run {run.key}: unknown dependency kind {use!r}")
            inputs[DEPENDENCY_INPUTS[use]] = self.finished[dep].final_loss
        return replace(run, spec=spec), inputs

    def _submit(self, run: PlannedRun) -> None:
        key = run.spec.run_key
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempt
        run, inputs = self._resolve(run)
        memory = self.memory(run)
        workers = self.workers(run)
        tags = self._tags(run) | ({WORKERS_TAG: str(workers)} if workers > 1 else {})
        run_id = self.tracker.start_run(
            run.spec, run.plan, attempt=attempt, budget=run.budget, tags=tags, inputs=inputs, memory=memory
        )
        storage = self.checkpoints.root / "_workers" if self.checkpoints is not None else None
        task = RunTask(
            spec=run.spec,
            run_id=run_id,
            sink_factory=self.tracker.sink_factory(run_id),
            num_cpus=self.num_cpus,
            num_gpus=self.gpus(run) / workers,
            memory=memory,
            workers=workers,
            storage=str(storage) if storage is not None and workers > 1 else "",
        )
        self._running[key] = run
        self.executor.submit(task)
        self.on_event(Event(kind="start", run=run, attempt=attempt))

    def _record(self, completion: Completion) -> FinishedRun | None:
        key = completion.task.spec.run_key
        run = self._running.pop(key)
        attempt = self._attempts[key]
        if completion.result is not None:
            finished = self.tracker.finish_run(completion.task.run_id, completion.result, completion.leftover)
            self.finished[key] = finished
            self.stats.finished += 1
            self.stats.flops_done += trained_flops(run)  # a cooldown branch pays only for its cooldown
            self.on_event(Event(kind="finish", run=run, attempt=attempt, finished=finished))
            self._release(key)
            return finished
        reason = completion.error or "unknown error"
        self.tracker.fail_run(completion.task.run_id, reason)
        self.stats.attempts_failed += 1
        self.stats.failures[key] = reason
        if attempt <= self.max_retries:
            self._pending.append(run)
            self.on_event(Event(kind="retry", run=run, attempt=attempt, error=reason))
        else:
            self._give_up(run, reason)
        return None
