"""The steppable scheduler, with Ray and MLflow swapped for fakes."""

from __future__ import annotations

import pytest

from orchestrator.executors import InlineExecutor
from orchestrator.grid import expand
from orchestrator.loading import study_from_dict
from orchestrator.scheduler import Scheduler
from orchestrator.study import run_study
from orchestrator.tracking import MemoryTracker
from tests.orchestrator.conftest import ScriptedExecutor


def _study(**extra):
    raw = {
        "name": "sched",
        "trainer": {"kind": "simulated"},
        "grid": {"N": [1e6, 1e7, 1e8], "tokens_per_param": [5, 20, 80]},
    }
    raw.update(extra)
    return study_from_dict(raw)


def test_runs_everything_and_respects_the_cap() -> None:
    study = _study()
    runs = expand(study)
    executor, tracker = ScriptedExecutor(), MemoryTracker()
    tracker.open_study(study.name, "")
    sched = Scheduler(runs, executor=executor, tracker=tracker, max_concurrent=2, max_retries=0)
    steps = 0
    while sched.step(timeout=0):
        steps += 1
        assert executor.in_flight() <= 2
    assert sched.stats.finished == 9
    assert executor.max_in_flight == 2
    assert len(tracker.finished_runs()) == 9
    assert all(r["metrics"] for r in tracker.runs.values()), "workers stream curves into the sink"


def test_retries_are_bounded_and_failures_recorded() -> None:
    study = _study()
    runs = expand(study)
    flaky, broken = runs[0].spec.run_key, runs[1].spec.run_key
    executor = ScriptedExecutor(failures={flaky: 1, broken: 10})
    tracker = MemoryTracker()
    tracker.open_study(study.name, "")
    events = []
    sched = Scheduler(
        runs, executor=executor, tracker=tracker, max_concurrent=3, max_retries=2, on_event=events.append
    )
    stats = sched.run(timeout=0)
    assert stats.finished == 8
    assert stats.failed == 1
    assert executor.submitted.count(flaky) == 2
    assert executor.submitted.count(broken) == 3  # first attempt + 2 retries
    assert "scripted failure" in stats.failures[broken]
    failed = [r for r in tracker.runs.values() if r["status"] == "FAILED"]
    assert len(failed) == 4 and all("scripted failure" in r["reason"] for r in failed)
    assert [e.kind for e in events].count("retry") == 3
    assert [e.kind for e in events].count("fail") == 1


def test_a_run_that_fails_for_good_is_left_out_of_the_fits_and_the_study_goes_on() -> None:
    study = _study(resources={"max_retries": 1}, trainer={"kind": "simulated", "simulated": {"noise": 0.0}})
    runs = expand(study)
    broken = runs[4].spec.run_key
    tracker = MemoryTracker()
    outcome = run_study(
        study, tracker=tracker, executor=ScriptedExecutor(failures={broken: 10}), background_refit=False
    )
    assert outcome.stats.finished == 8 and outcome.stats.failed == 1  # the CLI exits 1 on this
    assert tracker.closed is True  # the parent run is marked failed
    fit = outcome.laws[0].fit
    assert fit is not None and fit.report.n_points == 8  # fitted on the 8 that finished, not the broken one
    assert tracker.fits and all(step <= 8 for _, step, _ in tracker.fits)  # no fit ever counted it
    # noise-free runs: the 8 survivors still pin the law
    assert fit.params["alpha"] == pytest.approx(0.3473, rel=0.02)


def test_rerun_skips_finished_runs() -> None:
    study = _study()
    tracker = MemoryTracker()
    first = run_study(study, tracker=tracker, executor=InlineExecutor())
    assert first.stats.finished == 9
    executor = ScriptedExecutor()
    second = run_study(study, tracker=tracker, executor=executor)
    assert second.stats.skipped == 9 and second.stats.finished == 0
    assert executor.submitted == []
    # the law is refit on the same runs either way
    assert second.laws[0].fit is not None
    assert second.laws[0].fit.params == pytest.approx(first.laws[0].fit.params)


def test_runs_left_running_by_a_dead_driver_are_redone() -> None:
    study = _study()
    runs = expand(study)
    tracker = MemoryTracker()
    tracker.open_study(study.name, "")
    sched = Scheduler(runs, executor=ScriptedExecutor(), tracker=tracker, max_concurrent=3, max_retries=0)
    sched.step(timeout=0)  # three started, one finished; then the driver "dies"
    assert sum(r["status"] == "RUNNING" for r in tracker.runs.values()) == 2
    outcome = run_study(study, tracker=tracker, executor=InlineExecutor())
    assert outcome.stats.skipped == 1 and outcome.stats.finished == 8
    statuses = [r["status"] for r in tracker.runs.values()]
    assert statuses.count("KILLED") == 2 and statuses.count("FINISHED") == 9
    # the run finished before the crash counts for the fits: every online refit saw it
    steps = [step for law, step, _ in tracker.fits]
    assert steps[-2:] == [9, 9], "the last online refit (before the final fit) saw all 9 runs"


def test_study_fits_chinchilla_on_simulated_runs() -> None:
    study = _study(trainer={"kind": "simulated", "simulated": {"noise": 0.0}})
    tracker = MemoryTracker()
    outcome = run_study(study, tracker=tracker, executor=InlineExecutor(), background_refit=False)
    fit = outcome.laws[0].fit
    assert fit is not None
    # refit online as runs finished (steps = finished runs, never decreasing), then the final fit
    steps = [step for law, step, _ in tracker.fits if law == "chinchilla"]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] == 9
    assert 5 <= steps[0] < 9  # the first fit as soon as there are as many runs as parameters
    assert set(tracker.fits[-1][2]["intervals"]) == {"E", "A", "B", "alpha", "beta"}
    assert {"loss_vs_compute.png", "isoflop_curves.png", "residuals_chinchilla.png", "trajectory_chinchilla.png"} <= set(
        tracker.figures
    )
    assert tracker.closed is False


def test_figures_are_refreshed_while_the_study_runs() -> None:
    study = _study(trainer={"kind": "simulated"}, tracking={"figures_every_s": 0})
    tracker = MemoryTracker()
    run_study(study, tracker=tracker, executor=InlineExecutor(), background_refit=False)
    at = [finished for finished, _ in tracker.figure_logs]
    assert len(at) >= 3 and at == sorted(at) and at[0] < 9 and at[-1] == 9, at
    assert all("loss_vs_compute.png" in names for _, names in tracker.figure_logs)


def test_a_custom_law_named_in_the_study_is_fitted_and_logged_under_its_name() -> None:
    truth = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}
    power = {
        "family": "custom",
        "name": "power",
        "expression": "E + A / N**alpha + B / D**beta",
        "inputs": ["N", "D"],
        "params": {
            "E": [1.0, 2.0],
            "A": {"log": True, "init": [0, 5, 10]},
            "B": {"log": True, "init": [0, 5, 10]},
            "alpha": [0.2, 0.5],
            "beta": [0.2, 0.5],
        },
    }
    study = _study(
        trainer={"kind": "simulated", "simulated": {"noise": 0.0, "params": truth}},
        laws=["chinchilla", power],
    )
    tracker = MemoryTracker()
    outcome = run_study(study, tracker=tracker, executor=InlineExecutor(), background_refit=False)
    by_name = {o.name: o.fit for o in outcome.laws}
    assert by_name["power"] is not None
    # the same formula as chinchilla, written by hand: the same optimum
    assert by_name["power"].params == pytest.approx(truth, rel=1e-3)
    assert {law for law, _, _ in tracker.fits} == {"chinchilla", "power"}


class _WaitingProposer:
    """Proposes two runs, then has nothing for a few asks while it waits (for a refit, say),
    then one more run, then nothing for good."""

    def __init__(self, runs: list) -> None:
        self.batches = [runs[:2], [], [], [], runs[2:3], []]
        self.asks = 0

    def start(self, finished) -> None:  # noqa: ANN001
        pass

    def propose(self, k: int) -> list:
        self.asks += 1
        return self.batches.pop(0) if self.batches else []

    def waiting(self) -> bool:
        return len(self.batches) > 1  # the final empty batch means "no more"

    def observe(self, event) -> None:  # noqa: ANN001
        pass


def test_a_waiting_proposer_is_asked_again_instead_of_ending_the_study() -> None:
    study = _study()
    runs = expand(study)
    executor, tracker = ScriptedExecutor(), MemoryTracker()
    tracker.open_study(study.name, "")
    proposer = _WaitingProposer(runs)
    sched = Scheduler([], executor=executor, tracker=tracker, max_concurrent=4, max_retries=0, proposer=proposer)
    stats = sched.run(timeout=0)
    assert stats.finished == 3  # the run proposed after the waits ran too
    assert proposer.asks == 6 and not proposer.batches
