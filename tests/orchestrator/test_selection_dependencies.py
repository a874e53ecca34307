"""Budgeted selection over distillation studies: students are the candidates, each proposed with
its teacher the first time it is needed, teachers paid for once, students parked until their
teacher has finished, and the selection resumable from its journal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import laws
from laws.chinchilla import BUSBRIDGE_SUPERVISED_PARAMS
from laws.distillation import BUSBRIDGE_DISTILLATION_PARAMS
from orchestrator.executors import Completion
from orchestrator.grid import PlannedRun, expand, trained_flops
from orchestrator.loading import study_from_dict
from orchestrator.scheduler import CheckpointPolicy, Scheduler
from orchestrator.selection import Selector
from orchestrator.selection.samplers import UPSTREAM_FLOPS
from orchestrator.study import run_study
from orchestrator.tracking import MemoryTracker
from tests.orchestrator.conftest import ScriptedExecutor
from tests.orchestrator.test_dependencies import FakeTrainingExecutor, _distill_study
from trainers.checkpoint import checkpoint_path

TARGET = {"N": 1e10, "D": 2e11, "L_T": 1.8265}


def _study(mode: str = "random", tmp: Path | None = None, seed: int = 0, **selection: object):  # noqa: ANN202
    sel = {"mode": mode, "budget_fraction": 0.2, "target": {"points": [TARGET]}, "refit_every": 1000, **selection}
    raw = {
        "name": f"sel-distil-{mode}",
        "seed": seed,
        "trainer": {
            "kind": "simulated",
            "simulated": {"law": "distillation", "params": BUSBRIDGE_DISTILLATION_PARAMS,
                          "supervised": BUSBRIDGE_SUPERVISED_PARAMS, "noise": 0.005},
        },
        "grid": {"N": [5e7, 2e8, 8e8], "tokens_per_param": [5, 20, 80],
                 "teachers": {"N": [1e8, 4e8, 1.6e9], "tokens_per_param": [10, 40]}},
        "laws": [{"family": "distillation"}],
        "selection": sel,
    }
    if tmp is not None:
        raw["resources"] = {"checkpoint_dir": str(tmp / "ckpt")}
    return study_from_dict(raw)


class OrderedExecutor(ScriptedExecutor):
    """The real (simulated) trainer, recording which runs had finished when each was submitted."""

    def __init__(self, failures: dict[str, int] | None = None) -> None:
        super().__init__(failures)
        self.completed: list[str] = []
        self.finished_before: dict[str, set[str]] = {}

    def submit(self, task) -> None:  # noqa: ANN001
        self.finished_before.setdefault(task.spec.run_key, set(self.completed))
        super().submit(task)

    def wait(self, timeout: float) -> list[Completion]:
        done = super().wait(timeout)
        self.completed += [c.task.spec.run_key for c in done if c.result is not None]
        return done


def _teacher_of(runs: list[PlannedRun]) -> dict[str, str]:
    return {r.key: r.depends_on["teacher"] for r in runs if r.stage == "main"}


def test_proposals_bring_their_teacher_first_and_exactly_once() -> None:
    study = _study("random", budget_fraction=1.0)
    grid = expand(study)
    teacher_of = _teacher_of(grid)
    sel = Selector(study, grid, fit_provider=lambda name: None, storage=optuna.storages.InMemoryStorage())
    assert {r.stage for r in sel.candidates} == {"main"} and len(sel.candidates) == len(teacher_of)
    order: list[PlannedRun] = []
    while batch := sel.propose(4):
        order += batch
        assert sum(r.stage == "main" for r in batch) <= 4, "k counts candidates, not the teachers they bring"
    keys = [r.key for r in order]
    teachers = [r.key for r in order if r.stage == "teacher"]
    assert len(teachers) == len(set(teachers)) == 6, "every teacher exactly once"
    assert sorted(k for k in keys if k in teacher_of) == sorted(teacher_of), "every student, once"
    for i, key in enumerate(keys):
        if key in teacher_of:
            assert keys.index(teacher_of[key]) < i, "a student comes after its teacher"
            assert order[i].tags["isoflop.trial"]  # students are trials, teachers are not
        else:
            assert "isoflop.trial" not in order[i].tags
    # the journal says what each teacher cost, once
    trials = sel.study.get_trials()
    charged = [t.user_attrs["upstream"] for t in trials if t.user_attrs[UPSTREAM_FLOPS] > 0]
    assert sorted(charged) == sorted(teachers)
    by_key = {r.key: r for r in grid}
    assert sel.spent() == pytest.approx(sum(trained_flops(by_key[k]) for k in keys))


@pytest.mark.parametrize("mode", ["active", "random", "cheapest"])
def test_budget_counts_each_teacher_once_and_students_wait_for_their_teacher(mode: str, tmp_path: Path) -> None:
    study = _study(mode, tmp_path, initial_runs=6)
    grid = expand(study)
    budget = 0.2 * sum(trained_flops(r) for r in grid)
    teacher_of = _teacher_of(grid)
    tracker, executor = MemoryTracker(), OrderedExecutor()
    storage = optuna.storages.InMemoryStorage()
    outcome = run_study(study, tracker=tracker, executor=executor, optuna_storage=storage, background_refit=True)
    done = [r for r in tracker.runs.values() if r["status"] == "FINISHED"]
    keys = [r["run_key"] for r in done]
    assert len(keys) == len(set(keys)), "nothing trained twice, teachers included"
    students = [k for k in keys if k in teacher_of]
    assert len(students) >= 5 and outcome.stopped is not None and "budget spent" in outcome.stopped
    assert {teacher_of[k] for k in students} == {k for k in keys if k not in teacher_of}, "exactly the teachers needed"
    trained = sum(r["plan"].flops for r in done)
    assert trained <= budget * (1 + 1e-9)
    # the journal's account is exactly what was trained, each teacher once
    sel_study = optuna.load_study(study_name=study.name, storage=storage)
    trials = sel_study.get_trials()
    assert len(trials) == len(students) and all(t.state == TrialState.COMPLETE for t in trials)
    assert sum(t.user_attrs["flops"] + t.user_attrs[UPSTREAM_FLOPS] for t in trials) == pytest.approx(trained)
    for key in students:
        assert teacher_of[key] in executor.finished_before[key], "a student starts after its teacher has finished"
    # every student's L_T is its own teacher's simulated final loss
    finished = tracker.finished_runs()
    for key in students:
        assert finished[key].inputs["L_T"] == finished[teacher_of[key]].final_loss
        assert finished[key].metrics["teacher_eval_loss"] == pytest.approx(finished[teacher_of[key]].final_loss)
    if mode == "cheapest":  # cheapest counting the teacher a student would bring
        first = next(k for k in executor.submitted if k in teacher_of)
        costs = {r.key: r.plan.flops + grid_cost(grid, r) for r in grid if r.stage == "main"}
        assert costs[first] == min(costs.values())


def grid_cost(grid: list[PlannedRun], student: PlannedRun) -> float:
    return next(r.plan.flops for r in grid if r.key == student.depends_on["teacher"])


def _driver(study, grid, tracker, executor, storage, tmp_path: Path) -> tuple[Scheduler, Selector]:  # noqa: ANN001
    selector = Selector(study, grid, fit_provider=lambda name: None, storage=storage)
    tracker.open_study(study.name, "")
    sched = Scheduler(
        [], executor=executor, tracker=tracker, max_concurrent=3, max_retries=0, proposer=selector,
        checkpoints=CheckpointPolicy(root=tmp_path / "ckpt"),
    )
    return sched, selector


def test_resume_after_a_dead_driver_continues_the_selection_without_retraining_teachers(tmp_path: Path) -> None:
    study = _study("random", tmp_path, budget_fraction=0.3)
    grid = expand(study)
    teacher_of = _teacher_of(grid)
    storage = optuna.storages.InMemoryStorage()
    tracker = MemoryTracker()
    first, first_sel = _driver(study, grid, tracker, OrderedExecutor(), storage, tmp_path)
    for _ in range(6):  # a few steps, then the driver dies with runs in flight
        first.step(timeout=0)
    trained_first = set(tracker.finished_runs())
    teachers_first = {k for k in trained_first if k not in teacher_of}
    assert teachers_first and first._running, "some teachers finished, some runs still in flight"
    in_flight = {k for k in first._running if k in teacher_of}
    parked = {r.key for runs in first._waiting.values() for r in runs}
    left_running = {t.number for t in first_sel.study.get_trials() if t.state == TrialState.RUNNING}
    spent_before = first_sel.spent()

    executor = OrderedExecutor()
    second, sel = _driver(study, grid, tracker, executor, storage, tmp_path)
    second.run(timeout=0)
    assert not teachers_first & set(executor.submitted), "teachers finished before are not trained again"
    # the students left in flight or parked are proposed again first, under their own trials
    again = [k for k in executor.submitted if k in teacher_of][: len(in_flight | parked)]
    assert set(again) == (in_flight | parked) - trained_first
    assert {t.number for t in sel.study.get_trials() if t.user_attrs["run_key"] in again} <= left_running
    # one selection, one budget: the journal counts what the dead driver proposed, teachers once
    finished = tracker.finished_runs()
    by_key = {r.key: r for r in grid}
    trained = sum(trained_flops(by_key[k]) for k in finished)
    assert sel.spent() >= spent_before and sel.spent() == pytest.approx(trained)
    assert trained <= 0.3 * sum(trained_flops(r) for r in grid) * (1 + 1e-9)
    assert all(t.state == TrialState.COMPLETE for t in sel.study.get_trials())
    assert len({t.user_attrs["run_key"] for t in sel.study.get_trials()}) == len(sel.study.get_trials())


def test_a_teacher_that_fails_for_good_fails_its_proposed_students(tmp_path: Path) -> None:
    study = _study("cheapest", tmp_path, budget_fraction=0.5)
    grid = expand(study)
    teacher_of = _teacher_of(grid)
    # the cheapest student's teacher: the first one cheapest-first brings
    cheapest = min((r for r in grid if r.stage == "main"), key=lambda r: r.plan.flops + grid_cost(grid, r))
    bad = teacher_of[cheapest.key]
    executor = OrderedExecutor(failures={bad: 10})
    tracker = MemoryTracker()
    storage = optuna.storages.InMemoryStorage()
    outcome = run_study(study, tracker=tracker, executor=executor, optuna_storage=storage, background_refit=True)
    orphans = {r["run_key"] for r in tracker.runs.values() if teacher_of.get(r["run_key"]) == bad}
    assert cheapest.key in orphans
    for key in orphans:
        assert key not in executor.submitted, "a student of a failed teacher never trains"
        assert f"its teacher run {bad} failed" in outcome.stats.failures[key]
        assert all(r["status"] == "FAILED" for r in tracker.runs.values() if r["run_key"] == key)
    trials = optuna.load_study(study_name=study.name, storage=storage).get_trials()
    assert {t.user_attrs["run_key"] for t in trials if t.state == TrialState.FAIL} == orphans
    # once the teacher has failed, its other students are no longer proposed; the study goes on
    assert len(orphans) <= 2 and outcome.stats.finished > 5


class _ListProposer:
    """Proposes the runs it is given, one batch, then nothing."""

    def __init__(self, runs: list[PlannedRun]) -> None:
        self.batches = [runs]
        self.seen: dict[str, object] = {}

    def start(self, finished) -> None:  # noqa: ANN001
        self.seen = dict(finished)

    def propose(self, k: int) -> list[PlannedRun]:
        return self.batches.pop(0) if self.batches else []

    def waiting(self) -> bool:
        return False

    def observe(self, event) -> None:  # noqa: ANN001
        pass


def test_a_proposed_teacher_finished_in_the_store_is_skipped_or_retrained_when_its_checkpoint_is_gone(
    tmp_path: Path,
) -> None:
    runs = expand(study_from_dict(_distill_study()))
    teacher = next(r for r in runs if r.stage == "teacher")
    students = [r for r in runs if r.depends_on.get("teacher") == teacher.key]
    tracker = MemoryTracker()
    policy = CheckpointPolicy(root=tmp_path / "ckpt")

    def invocation(batch: list[PlannedRun], adopted: dict | None = None, store: MemoryTracker | None = None):  # noqa: ANN202
        executor = FakeTrainingExecutor()
        store = store or tracker
        store.open_study("s", "")
        proposer = _ListProposer(batch)
        sched = Scheduler([], executor=executor, tracker=store, max_concurrent=2, max_retries=0, proposer=proposer,
                          checkpoints=policy, adopted=adopted)
        return sched, sched.run(timeout=0), executor, proposer

    sched, stats, executor, _ = invocation([teacher, students[0]])
    assert executor.order == [teacher.key, students[0].key] and stats.finished == 2
    assert executor.specs[teacher.key].checkpoint_dir, "a proposed teacher keeps a checkpoint"
    # again, with the teacher in the store: it is skipped, the next student trains on it
    sched, stats, executor, proposer = invocation([teacher, students[1]])
    assert executor.order == [students[1].key] and stats.skipped == 1
    assert teacher.key in proposer.seen, "the proposer is told what the store has finished"
    assert sched.finished[students[1].key].inputs["L_T"] == tracker.finished_runs()[teacher.key].final_loss
    # its checkpoint gone: it is trained again before its student
    checkpoint_path(policy.directory(teacher.key)).unlink()
    _, stats, executor, _ = invocation([teacher, students[0]])
    assert executor.order == [teacher.key] and stats.skipped == 1, "the student itself was finished"
    # a teacher adopted from another study is read from there, not trained
    _, stats, executor, proposer = invocation([teacher, students[1]], adopted=tracker.finished_runs(), store=MemoryTracker())
    assert executor.order == [students[1].key] and teacher.key in proposer.seen


def _distillation_fit(supervised: dict[str, float], n_points: int = 50) -> laws.LawFit:
    report = laws.FitReport(n_points=n_points, n_starts=1, n_best=1, best_tol=0.0, grad_norm=0.0, converged=True)
    law = laws.get_law("distillation", supervised=supervised)
    return laws.LawFit(law="distillation", params=dict(BUSBRIDGE_DISTILLATION_PARAMS), objective=0.0, report=report,
                       law_spec=law.spec())


def test_students_l_t_is_their_teachers_loss_or_the_fitted_supervised_laws_prediction() -> None:
    study = _study("active", initial_runs=1, budget_fraction=0.5)
    grid = expand(study)
    # a fitted supervised law other than the published one: the fit's own law predicts L_T
    supervised = {**BUSBRIDGE_SUPERVISED_PARAMS, "E": 1.4}
    fit_ = _distillation_fit(supervised)
    sel = Selector(study, grid, fit_provider=lambda name: fit_, storage=optuna.storages.InMemoryStorage())
    sel.propose(1)
    teachers = list(sel.upstream.values())
    sup = laws.get_law("chinchilla_gamma")
    expect = sup.predict(supervised, N=np.array([float(t.plan.n_params) for t in teachers]),
                         D=np.array([float(t.plan.tokens) for t in teachers]))
    np.testing.assert_allclose(sel.pool.inputs["L_T"], expect[sel.pool.upstream], rtol=1e-12)
    key_before = sel.sampler._cache[0]
    assert key_before[2] == sel.pool.inputs_key, "the Jacobians are cached on the pool's inputs"
    # a teacher finishes: its students' L_T is its loss, and the criterion works on the new inputs
    from orchestrator.scheduler import Event
    from orchestrator.tracking import FinishedRun

    done = teachers[0]
    sel.observe(Event(kind="finish", run=done, finished=FinishedRun(run_key=done.key, run_id="r", inputs={}, final_loss=2.75,
                                                                   stage="teacher")))
    sel.propose(1)
    mine = sel.pool.upstream == 0
    assert np.all(sel.pool.inputs["L_T"][mine] == 2.75)
    np.testing.assert_allclose(sel.pool.inputs["L_T"][~mine], expect[sel.pool.upstream[~mine]], rtol=1e-12)
    assert sel.sampler._cache[0] != key_before and sel.sampler._cache[0][2] == sel.pool.inputs_key
    # the sampler scores with the fit's law, whose Ls~ is the fitted supervised law
    assert sel.sampler.law_of(fit_).supervised == pytest.approx(supervised)


@pytest.mark.parametrize("mode", ["random", "cheapest"])
def test_a_selection_of_cooldown_branches_pays_each_trunk_once_and_branches_their_cooldowns(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.orchestrator.test_dependencies import _branch_study

    monkeypatch.chdir(tmp_path)
    raw = _branch_study(N=[1.2e4, 2.4e4, 3.6e4])
    raw["selection"] = {"mode": mode, "budget_fraction": 0.6, "refit_every": 1000}
    study = study_from_dict(raw)
    grid = expand(study)
    trunk_of = {r.key: r.depends_on["branch"] for r in grid if r.stage == "main"}
    by_key = {r.key: r for r in grid}
    executor, tracker = FakeTrainingExecutor(), MemoryTracker()
    storage = optuna.storages.InMemoryStorage()
    outcome = run_study(study, tracker=tracker, executor=executor, optuna_storage=storage, background_refit=False)
    trained = executor.order
    assert len(trained) == len(set(trained))
    branches = [k for k in trained if k in trunk_of]
    assert branches and set(trained) - set(branches) == {trunk_of[k] for k in branches}, "exactly the trunks needed"
    for k in branches:
        assert trained.index(trunk_of[k]) < trained.index(k), "a branch starts from its trunk's kept checkpoint"
    # a trunk once, each branch its cooldown only: what the journal spent is what was trained
    cost = sum(trained_flops(by_key[k]) for k in trained)
    assert outcome.stats.flops_done == pytest.approx(cost)
    assert cost <= 0.6 * sum(trained_flops(r) for r in grid) * (1 + 1e-9)
    trials = optuna.load_study(study_name=study.name, storage=storage).get_trials()
    pool_cost = {k: trained_flops(by_key[k]) for k in branches}
    assert sum(pool_cost[t.user_attrs["run_key"]] + t.user_attrs[UPSTREAM_FLOPS] for t in trials) == pytest.approx(cost)
    if mode == "cheapest":  # the cheapest branch with its trunk first, then the cheap cooldowns of that trunk
        first = trunk_of[branches[0]]
        assert all(trunk_of[k] == first for k in branches[: sum(v == first for v in trunk_of.values())])
