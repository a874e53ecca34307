"""The pending-run watchdog: runs Ray leaves waiting for a node are reported, running ones are not."""

from __future__ import annotations

import time

import pytest

from orchestrator.executors import RayExecutor, RunTask
from orchestrator.grid import expand
from orchestrator.loading import study_from_dict
from orchestrator.progress import Progress
from orchestrator.scheduler import Event, Scheduler
from orchestrator.tracking import MemoryTracker

pytestmark = pytest.mark.slow


def _runs(n: int, sleep_s: float):
    study = study_from_dict(
        {
            "name": "watchdog",
            "trainer": {"kind": "simulated", "simulated": {"sleep_s": sleep_s}},
            "grid": {"N": [1e6 * (i + 1) for i in range(n)], "tokens_per_param": [20]},
        }
    )
    return study, expand(study)


def _warm(executor: RayExecutor, tracker: MemoryTracker, run) -> None:  # noqa: ANN001 - PlannedRun
    """Train one run first, so a worker process with the trainers imported is already up."""
    run_id = tracker.start_run(run.spec, run.plan, attempt=1, budget=run.budget, tags={}, inputs={})
    executor.submit(RunTask(spec=run.spec, run_id=run_id, sink_factory=tracker.sink_factory(run_id), num_cpus=2))
    deadline = time.monotonic() + 120
    while not executor.wait(1.0) and time.monotonic() < deadline:
        pass


def test_runs_waiting_for_a_node_are_reported_once_and_running_ones_never(ray_local, capsys) -> None:
    # each run asks for both CPUs of the 2-CPU Ray, so with 3 submitted at once two must wait
    study, runs = _runs(4, sleep_s=3.0)
    tracker = MemoryTracker()
    tracker.open_study(study.name, "")
    executor = RayExecutor(ray_local, board_poll_s=0.1)
    warm, runs = runs[0], runs[1:]
    _warm(executor, tracker, warm)
    events: list[Event] = []
    progress = Progress(total=3)

    def on_event(event: Event) -> None:
        events.append(event)
        progress(event)

    sched = Scheduler(
        runs, executor=executor, tracker=tracker, max_concurrent=3,
        max_retries=0, num_cpus=2, on_event=on_event, pending_warn_s=1.5,
    )
    stats = sched.run(timeout=0.1)
    assert stats.finished == 3 and stats.failed == 0
    pending = [e for e in events if e.kind == "pending"]
    # the first run to start never waited; the other two waited >= 3 s and are reported once each
    assert len(pending) == 2 == stats.pending_reported
    assert len({e.run.key for e in pending}) == 2
    first_finished = next(e for e in events if e.kind == "finish").run.key
    assert first_finished not in {e.run.key for e in pending}
    assert all("with 2 CPUs" in (e.error or "") and "not started after" in (e.error or "") for e in pending)
    out = capsys.readouterr().out
    assert out.count("PENDING") == 2 and out.count("finished") == 3  # not counted as done or failed


def test_the_start_board_tells_waiting_from_started_tasks(ray_local) -> None:
    study, runs = _runs(2, sleep_s=4.0)
    tracker = MemoryTracker()
    tracker.open_study(study.name, "")
    executor = RayExecutor(ray_local, board_poll_s=0.0)
    tasks = []
    for run in runs:
        run_id = tracker.start_run(run.spec, run.plan, attempt=1, budget=run.budget, tags={}, inputs={})
        task = RunTask(spec=run.spec, run_id=run_id, sink_factory=tracker.sink_factory(run_id), num_cpus=2)
        executor.submit(task)
        tasks.append(task)
    # generous deadlines: on a loaded 2-core machine a Ray worker can take many seconds to start
    deadline = time.monotonic() + 120
    while len(executor.waiting()) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    waiting = executor.waiting()
    assert len(waiting) == 1  # one run trains on both CPUs, the other waits for them
    done = []
    deadline = time.monotonic() + 120
    while len(done) < 2 and time.monotonic() < deadline:
        done += executor.wait(1.0)
    assert len(done) == 2 and all(c.error is None for c in done)
    assert executor.waiting() == []
    executor.shutdown()
