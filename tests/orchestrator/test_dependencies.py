"""Runs that start from other runs: distillation teachers and pretrained runs are trained first,
their checkpoints handed to their dependents, their losses recorded as law inputs."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest

from orchestrator.errors import StudyError
from orchestrator.executors import Completion, Executor, InlineExecutor, RunTask
from orchestrator.grid import expand
from orchestrator.loading import study_from_dict
from orchestrator.scheduler import CheckpointPolicy, Scheduler
from orchestrator.study import run_study
from orchestrator.tracking import MemoryTracker
from trainers import RunResult, get_trainer
from trainers.base import NullSink
from trainers.checkpoint import checkpoint_path, kept_checkpoint_path

TINY_TRAINER = {
    "seq_len": 32,
    "batch_size": 8,
    "log_every": 5,
    "device": "cpu",
    "model": {"head_dim": 16, "aspect_ratio": 16.0},
    "data": {"eval_tokens": 1024},
}


def _distill_study(**grid: object) -> dict:
    return {
        "name": "distil",
        "trainer": {**TINY_TRAINER, "kind": "distill"},
        "grid": {"N": [8e3], "D": [8e3, 1.6e4], "teachers": {"N": [1.2e4, 2.4e4], "D": [2.4e4]}, **grid},
        "laws": [
            {"family": "chinchilla", "name": "supervised", "runs": "teacher"},
            {"family": "distillation", "supervised": "supervised"},
        ],
    }


def _finetune_study(**finetune: object) -> dict:
    return {
        "name": "forget",
        "trainer": {**TINY_TRAINER, "kind": "dense"},
        "grid": {
            "N": [1.2e4],
            "D": [4e3, 8e3],
            "finetune": {"domain": "prose", "injection": [0.0, 0.25], "pretrain_tokens_per_param": 2, **finetune},
        },
        "laws": [
            {"family": "forgetting", "loss": "pretrain_loss"},
            {"family": "forgetting_ft", "loss": "eval_loss/prose"},
        ],
    }


class FakeTrainingExecutor(Executor):
    """Answers runs at once with a made-up result, writing the final checkpoint a real trainer
    would, and records what each run was handed."""

    def __init__(self, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.queue: deque[RunTask] = deque()
        self.order: list[str] = []
        self.specs: dict[str, object] = {}
        self.resumable: dict[str, bool] = {}
        self.fail = fail

    def submit(self, task: RunTask) -> None:
        spec = task.spec
        for path in (spec.teacher_checkpoint, spec.init_checkpoint, spec.branch_from):
            assert not path or Path(path).is_file(), f"{spec.run_key} was started before {path} existed"
        self.queue.append(task)
        self.order.append(spec.run_key)
        self.specs[spec.run_key] = spec
        # whether a real trainer would resume this run from a checkpoint of its own
        self.resumable[spec.run_key] = bool(spec.checkpoint_dir) and checkpoint_path(spec.checkpoint_dir).is_file()

    def wait(self, timeout: float) -> list[Completion]:
        if not self.queue:
            return []
        task = self.queue.popleft()
        spec = task.spec
        if spec.run_key in self.fail:
            return [Completion(task=task, error="RuntimeError: scripted failure")]
        if spec.checkpoint_dir:
            Path(spec.checkpoint_dir).mkdir(parents=True, exist_ok=True)
            checkpoint_path(spec.checkpoint_dir).write_bytes(b"weights")
            for step in spec.keep_steps:
                kept_checkpoint_path(spec.checkpoint_dir, step).write_bytes(b"weights")
        plan = get_trainer(spec.trainer).plan(spec.point)
        loss = 3.0 + 1e3 / spec.point.n_params
        return [Completion(task=task, result=RunResult(run_key=spec.run_key, plan=plan, final_loss=loss))]

    def in_flight(self) -> int:
        return len(self.queue)


def _scheduler(runs, tmp_path: Path, executor: Executor, tracker: MemoryTracker | None = None, **kw) -> Scheduler:
    tracker = tracker or MemoryTracker()
    tracker.open_study("s", "")
    return Scheduler(
        runs,
        executor=executor,
        tracker=tracker,
        max_concurrent=kw.pop("max_concurrent", 4),
        max_retries=kw.pop("max_retries", 0),
        checkpoints=CheckpointPolicy(root=tmp_path / "ckpt"),
        **kw,
    )


def test_teachers_expand_first_once_each_and_students_name_them() -> None:
    runs = expand(study_from_dict(_distill_study(replicates=2)))
    teachers = [r for r in runs if r.stage == "teacher"]
    students = [r for r in runs if r.stage == "main"]
    assert runs[: len(teachers)] == teachers, "teachers come first"
    assert len(teachers) == 2 and len(students) == 1 * 2 * 2 * 2  # N x D x teachers x replicates
    assert {t.spec.trainer.kind for t in teachers} == {"dense"}
    assert {t.spec.seed for t in teachers} == {0}, "one teacher serves every replicate"
    teacher_keys = {t.key for t in teachers}
    for s in students:
        assert s.spec.point.teacher in teacher_keys and s.depends_on == {"teacher": s.spec.point.teacher}
    # a different teacher makes a different student
    assert len({s.key for s in students}) == len(students)


def test_finetuning_expands_one_pretrained_run_per_size_and_injected_mixtures() -> None:
    study = study_from_dict(_finetune_study(injection=[0.0, 0.1]))
    runs = expand(study)
    (pre,) = [r for r in runs if r.stage == "pretrain"]
    assert pre.spec.point.mixture == (1.0, 0.0) and pre.spec.point.tokens == 2 * 12_000
    finetuned = [r for r in runs if r.stage == "main"]
    assert len(finetuned) == 2 * 2
    for r in finetuned:
        p = r.inputs["p"]
        assert r.spec.point.mixture == pytest.approx((p, 1.0 - p))  # (code = pretraining, prose = target)
        assert r.inputs["D_ft"] == r.spec.point.tokens
        assert r.depends_on == {"init": pre.key} and r.spec.point.init_from == pre.key


def test_scheduler_trains_each_teacher_first_and_hands_over_checkpoint_and_loss(tmp_path: Path) -> None:
    runs = expand(study_from_dict(_distill_study()))
    executor = FakeTrainingExecutor()
    sched = _scheduler(runs, tmp_path, executor)
    stats = sched.run(timeout=0)
    assert stats.finished == len(runs) and stats.failed == 0
    position = {key: i for i, key in enumerate(executor.order)}
    for run in runs:
        for dep in run.depends_on.values():
            assert position[dep] < position[run.key]
            spec = executor.specs[run.key]
            assert spec.teacher_checkpoint == str(checkpoint_path(tmp_path / "ckpt" / dep))
            # the teacher's loss is the student's law input L_T
            assert sched.finished[run.key].inputs["L_T"] == sched.finished[dep].final_loss
    teachers = [r.key for r in runs if r.stage == "teacher"]
    assert all(executor.specs[k].checkpoint_dir for k in teachers), "teachers keep checkpoints"
    students = [r.key for r in runs if r.stage == "main"]
    assert not any(executor.specs[k].checkpoint_dir for k in students), "students need none by default"


def test_a_failed_teacher_fails_its_students_with_the_reason_and_spares_the_others(tmp_path: Path) -> None:
    runs = expand(study_from_dict(_distill_study()))
    bad = next(r.key for r in runs if r.stage == "teacher")
    executor = FakeTrainingExecutor(fail={bad})
    tracker = MemoryTracker()
    sched = _scheduler(runs, tmp_path, executor, tracker, max_retries=1)
    stats = sched.run(timeout=0)
    orphans = [r.key for r in runs if r.depends_on.get("teacher") == bad]
    assert stats.failed == 1 + len(orphans)
    assert stats.finished == len(runs) - 1 - len(orphans)
    for key in orphans:
        assert key not in executor.order, "a student of a failed teacher never trains"
        assert f"its teacher run {bad} failed" in stats.failures[key]
    recorded = [r for r in tracker.runs.values() if r["run_key"] in orphans]
    assert recorded and all(r["status"] == "FAILED" for r in recorded)


def test_a_finished_teacher_whose_checkpoint_is_gone_is_trained_again(tmp_path: Path) -> None:
    runs = expand(study_from_dict(_distill_study()))
    tracker = MemoryTracker()
    _scheduler(runs, tmp_path, FakeTrainingExecutor(), tracker).run(timeout=0)
    lost = next(r.key for r in runs if r.stage == "teacher")
    checkpoint_path(tmp_path / "ckpt" / lost).unlink()
    again = FakeTrainingExecutor()
    stats = _scheduler(runs, tmp_path, again, tracker).run(timeout=0)
    assert again.order == [lost], "only the teacher whose weights are missing is retrained"
    assert stats.skipped == len(runs) - 1


def test_teachers_finished_by_another_study_are_read_not_trained(tmp_path: Path) -> None:
    first = expand(study_from_dict(_distill_study()))
    tracker = MemoryTracker()
    _scheduler(first, tmp_path, FakeTrainingExecutor(), tracker).run(timeout=0)
    # a second study with other students and the same teachers, sharing the checkpoint root
    second = expand(study_from_dict({**_distill_study(), "name": "distil-2"} | {"grid": {**_distill_study()["grid"], "D": [3.2e4]}}))
    teachers = {r.key for r in second if r.stage == "teacher"}
    assert teachers == {r.key for r in first if r.stage == "teacher"}  # the same runs
    executor = FakeTrainingExecutor()
    sched = _scheduler(second, tmp_path, executor, MemoryTracker(), adopted=tracker.finished_runs())
    stats = sched.run(timeout=0)
    assert set(executor.order) == {r.key for r in second} - teachers, "only the students train"
    assert stats.skipped == len(teachers) and stats.failed == 0
    donor = tracker.finished_runs()
    for run in second:
        if run.stage == "main":
            teacher = run.depends_on["teacher"]
            assert executor.specs[run.key].teacher_checkpoint == str(checkpoint_path(tmp_path / "ckpt" / teacher))
            assert sched.finished[run.key].inputs["L_T"] == donor[teacher].final_loss
    # an adopted teacher whose checkpoint is not in this study's root is trained here
    lost = sorted(teachers)[0]
    checkpoint_path(tmp_path / "ckpt" / lost).unlink()
    again = FakeTrainingExecutor()
    _scheduler(second, tmp_path, again, MemoryTracker(), adopted=donor).run(timeout=0)
    assert lost in again.order and not (teachers - {lost}) & set(again.order)


def test_teachers_from_an_unknown_study_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    from orchestrator.study import adopted_runs

    raw = {**_distill_study(), "tracking": {"uri": f"sqlite:///{tmp_path / 'none.db'}"}}
    raw["grid"] = {**raw["grid"], "teachers": {**raw["grid"]["teachers"], "from_studies": ["elsewhere"]}}
    with pytest.raises(StudyError) as info:
        adopted_runs(study_from_dict(raw))
    assert info.value.key == "grid.teachers.from_studies" and "elsewhere" in str(info.value)
    assert not (tmp_path / "none.db").exists()
    raw["grid"]["teachers"]["from_studies"] = ["distil"]
    with pytest.raises(StudyError) as info:
        study_from_dict(raw)
    assert info.value.key == "grid.teachers.from_studies[0]"


def test_dependencies_must_be_planned_or_finished(tmp_path: Path) -> None:
    runs = expand(study_from_dict(_distill_study()))
    students = [r for r in runs if r.stage == "main"]
    with pytest.raises(ValueError, match="neither planned nor finished"):
        _scheduler(students, tmp_path, FakeTrainingExecutor()).run(timeout=0)


def test_checkpoint_all_gives_every_run_a_checkpoint_dir(tmp_path: Path) -> None:
    study = study_from_dict(
        {"name": "s", "trainer": {"kind": "simulated"}, "grid": {"N": [1e6, 1e7], "D": [1e8]}}
    )
    executor = FakeTrainingExecutor()
    tracker = MemoryTracker()
    tracker.open_study("s", "")
    policy = CheckpointPolicy(root=tmp_path, all_runs=True, every=7)
    Scheduler(expand(study), executor=executor, tracker=tracker, max_concurrent=2, max_retries=0, checkpoints=policy).run(0)
    assert {(s.checkpoint_dir, s.checkpoint_every) for s in executor.specs.values()} == {
        (str(tmp_path / k), 7) for k in executor.specs
    }


@pytest.mark.parametrize(
    ("label", "change", "key"),
    [
        ("distill without teachers", lambda raw: raw["grid"].pop("teachers"), "grid.teachers"),
        ("teachers for a dense trainer", lambda raw: raw["trainer"].update(kind="dense"), "grid.teachers"),
        ("teacher size", lambda raw: raw["grid"]["teachers"].update(N=[-1.0]), "grid.teachers.N[0]"),
        ("teacher tokens twice", lambda raw: raw["grid"]["teachers"].update(tokens_per_param=[20.0]), "grid.teachers.D"),
        ("supervised law after", lambda raw: raw["laws"].reverse(), "laws[0].supervised"),
        ("supervised of a non-distillation law", lambda raw: raw["laws"][0].update(supervised="x"), "laws[0].supervised"),
        # students are chosen by a law of the students, not by the teachers' supervised law
        ("selection by the teachers' law", lambda raw: raw.update(selection={"mode": "random", "budget_fraction": 0.5}), "selection.law"),
        ("selection law taking L_T that cannot predict it",
         lambda raw: raw.update(laws=[{"family": "custom", "name": "lt", "expression": "L_T + A / N**alpha", "inputs": ["N", "L_T"],
                                       "params": {"A": [1.0], "alpha": [0.5]}}],
                                selection={"mode": "random", "budget_fraction": 0.5}), "selection.law"),
    ],
)
def test_bad_distillation_studies_name_the_key(label: str, change, key: str) -> None:
    raw = _distill_study()
    change(raw)
    with pytest.raises(StudyError) as info:
        study_from_dict(raw)
    assert info.value.key == key, str(info.value)


@pytest.mark.parametrize(
    ("label", "change", "key"),
    [
        ("unknown target domain", lambda raw: raw["grid"]["finetune"].update(domain="poems"), "grid.finetune.domain"),
        ("injection of 1", lambda raw: raw["grid"]["finetune"].update(injection=[1.0]), "grid.finetune.injection[0]"),
        ("pretraining on the target", lambda raw: raw["grid"]["finetune"].update(pretrain_mixture=[0.5, 0.5]), "grid.finetune.pretrain_mixture"),
        ("mixtures given too", lambda raw: raw["grid"].update(mixture=[[0.5, 0.5]]), "grid.mixture"),
        ("moe trainer", lambda raw: raw["trainer"].update(kind="moe"), "grid.finetune"),
        ("pretrain_loss without finetuning", lambda raw: raw["grid"].pop("finetune"), "laws[0].loss"),
        ("unknown domain loss", lambda raw: raw["laws"][1].update(loss="eval_loss/poems"), "laws[1].loss"),
        ("two laws one name", lambda raw: raw["laws"][1].update(name="forgetting"), "laws[1].name"),
        ("selection over finetuning runs", lambda raw: raw.update(selection={"mode": "random", "budget_fraction": 0.5}), "selection.mode"),
    ],
)
def test_bad_finetuning_studies_name_the_key(label: str, change, key: str) -> None:
    raw = _finetune_study()
    change(raw)
    with pytest.raises(StudyError) as info:
        study_from_dict(raw)
    assert info.value.key == key, str(info.value)


def test_distillation_study_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real teachers, then real students on their logits; L_T is the teacher's held-out loss, and
    the supervised law fitted on the teachers feeds the distillation law."""
    monkeypatch.chdir(tmp_path)
    raw = _distill_study(N=[8e3, 1.6e4], D=[6e3, 1.2e4])
    raw["grid"]["teachers"].update(N=[1.2e4, 2.4e4, 3.6e4], D=[1.2e4, 2.4e4])
    study = study_from_dict(raw)
    tracker = MemoryTracker()
    outcome = run_study(study, tracker=tracker, executor=InlineExecutor(), background_refit=False)
    assert outcome.stats.failed == 0 and outcome.stats.finished == 6 + 4 * 6
    finished = tracker.finished_runs()
    students = [f for f in finished.values() if f.stage == "main"]
    for s in students:
        # the student measured its teacher on the same held-out data
        assert s.inputs["L_T"] == pytest.approx(s.metrics["teacher_eval_loss"], rel=1e-6)
    assert list(Path(".isoflop/checkpoints").iterdir()), "teachers' checkpoints live under the study's checkpoint dir"
    by_name = {o.name: o for o in outcome.laws}
    assert by_name["supervised"].n_points == 6 and by_name["supervised"].fit is not None
    assert by_name["distillation"].n_points == 24
    # the distillation law was fitted, on the supervised law the study fitted (not the published one)
    fit_ = by_name["distillation"].fit
    assert fit_ is not None, by_name["distillation"].error
    assert fit_.law_spec["supervised"]["E"] == pytest.approx(by_name["supervised"].fit.params["E"])
    # and it explains the students: held-out loss predicted within a few percent
    law = fit_.get_law()
    for s in students:
        predicted = float(law.predict(fit_.params, **{k: s.inputs[k] for k in law.inputs}))
        assert predicted == pytest.approx(s.final_loss, rel=0.05)


def test_finetuning_study_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pretrained run per size, then finetuning runs from its weights; L_pt0 is the pretrained
    run's loss and pretrain_loss is logged along the way."""
    monkeypatch.chdir(tmp_path)
    raw = _finetune_study()
    raw["trainer"]["eval_every"] = 5
    study = study_from_dict(raw)
    tracker = MemoryTracker()
    outcome = run_study(study, tracker=tracker, executor=InlineExecutor(), background_refit=False)
    assert outcome.stats.failed == 0 and outcome.stats.finished == 1 + 2 * 2
    finished = tracker.finished_runs()
    (pre,) = [f for f in finished.values() if f.stage == "pretrain"]
    for f in finished.values():
        if f.stage != "main":
            continue
        assert f.inputs["L_pt0"] == pre.final_loss
        assert {"p", "D_ft", "N"} <= set(f.inputs)
        assert "pretrain_loss" in f.metrics
        run = next(r for r in tracker.runs.values() if r["run_key"] == f.run_key)
        curve = [m["pretrain_loss"] for _, m in run["metrics"] if "pretrain_loss" in m]
        # logged before the first step (the pretrained model: L_pt0) and along the way
        assert curve[0] == pytest.approx(pre.final_loss, rel=1e-6) and len(curve) >= 3
    names = [o.name for o in outcome.laws]
    assert names == ["forgetting", "forgetting_ft"]
    assert all(o.n_points == 4 for o in outcome.laws)
    # the planned runs stay as planned: checkpoints are filled into copies at submission
    assert all(r.spec.init_checkpoint == "" for r in expand(study))


def _branch_study(**grid: object) -> dict:
    return {
        "name": "branches",
        "trainer": {**TINY_TRAINER, "kind": "dense", "optim": {"schedule": "wsd", "warmup_frac": 0.1, "cooldown_frac": 0.25}},
        "grid": {"N": [1.2e4, 2.4e4], "D": [8e3, 1.6e4, 2.4e4], "cooldown_branches": True, **grid},
    }


def test_cooldown_branches_expand_one_trunk_per_size_keeping_every_branch_point() -> None:
    runs = expand(study_from_dict(_branch_study()))
    trunks = [r for r in runs if r.stage == "trunk"]
    branches = [r for r in runs if r.stage == "main"]
    assert len(trunks) == 2 and len(branches) == 6
    for trunk in trunks:
        mine = [b for b in branches if b.depends_on == {"branch": trunk.key}]
        assert len(mine) == 3 and {b.spec.point.n_params for b in mine} == {trunk.spec.point.n_params}
        points = sorted(b.plan.steps - round(0.25 * b.plan.steps) for b in mine)
        assert trunk.spec.keep_steps == tuple(points)
        assert trunk.plan.steps == points[-1], "the trunk stops at the last branch point"
        assert trunk.spec.trainer.optim.cooldown_frac == 0.0
        # one warmup for the trunk and all of its branches: the shortest run's
        warmups = {b.spec.trainer.optim.warmup_steps for b in mine} | {trunk.spec.trainer.optim.warmup_steps}
        assert warmups == {round(0.1 * min(b.plan.steps for b in mine))}


def test_branches_start_from_their_own_branch_point(tmp_path: Path) -> None:
    runs = expand(study_from_dict(_branch_study()))
    executor = FakeTrainingExecutor()
    stats = _scheduler(runs, tmp_path, executor).run(timeout=0)
    assert stats.finished == len(runs)
    # the trunks are paid in full, the branches only for their cooldowns
    trunks = sum(r.plan.flops for r in runs if r.stage == "trunk")
    cooldowns = sum(r.plan.flops * round(0.25 * r.plan.steps) / r.plan.steps for r in runs if r.stage == "main")
    assert stats.flops_done == pytest.approx(trunks + cooldowns)
    for run in runs:
        if run.stage != "main":
            continue
        start = run.plan.steps - round(0.25 * run.plan.steps)
        trunk = run.depends_on["branch"]
        assert executor.specs[run.key].branch_from == str(kept_checkpoint_path(tmp_path / "ckpt" / trunk, start))
        assert executor.order.index(trunk) < executor.order.index(run.key)


def test_a_trunk_missing_a_branch_point_is_trained_again_from_scratch(tmp_path: Path) -> None:
    runs = expand(study_from_dict(_branch_study()))
    tracker = MemoryTracker()
    _scheduler(runs, tmp_path, FakeTrainingExecutor(), tracker).run(timeout=0)
    trunk = next(r for r in runs if r.stage == "trunk")
    folder = tmp_path / "ckpt" / trunk.key
    kept_checkpoint_path(folder, trunk.spec.keep_steps[0]).unlink()
    again = FakeTrainingExecutor()
    _scheduler(runs, tmp_path, again, tracker).run(timeout=0)
    assert again.order == [trunk.key]
    assert again.resumable[trunk.key] is False, "it starts from scratch, not from its own end"
    assert all(kept_checkpoint_path(folder, s).is_file() for s in trunk.spec.keep_steps)


def test_cooldown_branch_study_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two trunks, six branches: the law is fitted on the branches only, and every branch ends as
    a run trained from scratch to its D would have."""
    monkeypatch.chdir(tmp_path)
    study = study_from_dict(_branch_study())
    tracker = MemoryTracker()
    outcome = run_study(study, tracker=tracker, executor=InlineExecutor(), background_refit=False)
    assert outcome.stats.failed == 0 and outcome.stats.finished == 8
    assert outcome.laws[0].n_points == 6
    finished = tracker.finished_runs()
    branch = next(r for r in expand(study) if r.stage == "main")
    scratch = get_trainer(branch.spec.trainer).train(branch.spec, NullSink())  # no branch_from: from scratch
    assert finished[branch.key].final_loss == scratch.final_loss


@pytest.mark.parametrize(
    ("label", "change", "key"),
    [
        ("cosine schedule", lambda raw: raw["trainer"]["optim"].update(schedule="cosine"), "grid.cooldown_branches"),
        ("isoflop grid", lambda raw: raw.update(grid={"isoflop": {"budgets": [1e10]}, "cooldown_branches": True}), "grid.cooldown_branches"),
        ("branch inside warmup", lambda raw: raw["trainer"]["optim"].update(warmup_frac=0.9), "grid.cooldown_branches"),
        ("warmup steps given", lambda raw: raw["trainer"]["optim"].update(warmup_steps=3), "trainer.optim.warmup_steps"),
    ],
)
def test_bad_branch_studies_name_the_key(label: str, change, key: str) -> None:
    raw = _branch_study()
    change(raw)
    with pytest.raises(StudyError) as info:
        study_from_dict(raw)
        expand(study_from_dict(raw))
    assert info.value.key == key, str(info.value)


class _Nodes:
    """The part of the ray module ``check_feasible`` reads."""

    def __init__(self, *resources: dict) -> None:
        self._nodes = [{"Alive": True, "Resources": r} for r in resources]

    def nodes(self) -> list[dict]:
        return self._nodes


def test_runs_reserve_their_memory_budget_and_an_impossible_one_is_refused(tmp_path: Path) -> None:
    from orchestrator.cluster import check_feasible
    from orchestrator.study import memory_request
    from trainers.memory import estimate_memory

    study = study_from_dict(_distill_study())
    runs = expand(study)
    request = memory_request(study, runs)
    student = next(r for r in runs if r.stage == "main")
    teacher = next(r for r in runs if r.key == student.depends_on["teacher"])
    # a student reserves room for its teacher too
    assert request(student) == estimate_memory(student.plan, student.spec.trainer, teacher_params=teacher.plan.n_params).budget
    assert request(student) > estimate_memory(student.plan, student.spec.trainer).budget
    executor = FakeTrainingExecutor()
    tasks = []
    original = executor.submit
    executor.submit = lambda task: (tasks.append(task), original(task))  # type: ignore[method-assign]
    tracker = MemoryTracker()
    _scheduler(runs, tmp_path, executor, tracker, memory=request).run(timeout=0)
    assert {t.spec.run_key: t.memory for t in tasks} == {r.key: request(r) for r in runs}
    # the run records what it reserved (the student its teacher's weights too), and MLflow's
    # parameters say the same
    recorded = {r["run_key"]: r["memory"] for r in tracker.runs.values()}
    assert recorded == {r.key: request(r) for r in runs}
    from orchestrator.mlflow_tracker import run_params

    params = run_params(student.spec, student.plan, None, {}, memory=request(student))
    assert float(params["memory_budget_mb"]) == pytest.approx(request(student) / 2**20, abs=0.05)
    fixed = memory_request(study_from_dict({**_distill_study(), "resources": {"memory_per_run": "512"}}), runs)
    assert fixed(student) == 512 * 2**20
    check_feasible(_Nodes({"CPU": 2, "memory": 4 * 2**30}), 1, 0, 2**30)
    with pytest.raises(StudyError) as info:
        check_feasible(_Nodes({"CPU": 2, "memory": 2**29}, {"CPU": 0.5, "memory": 2**33}), 1, 0, 2**30)
    assert info.value.key == "resources.memory_per_run" and "512 MB" in str(info.value)
    with pytest.raises(StudyError) as info:
        study_from_dict({**_distill_study(), "resources": {"memory_per_run": "lots"}})
    assert info.value.key == "resources.memory_per_run"


def test_auto_gpus_are_a_share_sized_by_each_runs_memory(tmp_path: Path) -> None:
    from orchestrator.cluster import GPU_SHARES, gpu_share
    from orchestrator.study import gpu_request
    from trainers.memory import estimate_memory

    raw = _distill_study()
    runs = expand(study_from_dict(raw))
    student = next(r for r in runs if r.stage == "main")
    teacher = next(r for r in runs if r.key == student.depends_on["teacher"])
    need = estimate_memory(student.plan, student.spec.trainer, teacher_params=teacher.plan.n_params).budget
    # a GPU with room for exactly 3 students: each gets half of it (the smallest share that holds it)
    gpu_mb = 3 * need / 2**20
    gpus = gpu_request(study_from_dict({**raw, "resources": {"gpu_memory_mb": gpu_mb}}), runs, 1.0)
    assert gpus(student) == 0.5
    for run in runs:
        assert gpus(run) in GPU_SHARES and gpus(run) * gpu_mb * 2**20 >= 0.999 * estimate_memory(
            run.plan, run.spec.trainer,
            teacher_params=next((t.plan.n_params for t in runs if t.key == run.depends_on.get("teacher")), 0),
        ).budget
    # the scheduler hands each run its own share
    executor, tasks = FakeTrainingExecutor(), []
    original = executor.submit
    executor.submit = lambda task: (tasks.append(task), original(task))  # type: ignore[method-assign]
    _scheduler(runs, tmp_path, executor, gpus=gpus).run(timeout=0)
    assert {t.spec.run_key: t.num_gpus for t in tasks} == {r.key: gpus(r) for r in runs}
    # without a GPU memory, or with no GPUs or a fixed number, every run gets the same
    assert gpu_request(study_from_dict(raw), runs, 1.0)(student) == 1.0
    assert gpu_request(study_from_dict({**raw, "resources": {"gpu_memory_mb": gpu_mb}}), runs, 0.0)(student) == 0.0
    fixed = study_from_dict({**raw, "resources": {"gpu_memory_mb": gpu_mb, "gpus_per_run": "2"}})
    assert gpu_request(fixed, runs, 2.0)(student) == 2.0
    # a run whose model state alone overflows a GPU is refused before anything starts, naming
    # the key: data parallelism replicates the state
    with pytest.raises(StudyError) as info:
        gpu_share(1.0, lambda workers: need, 0.5 * need / 2**20, 8)
    assert info.value.key == "resources.gpu_memory_mb" and "replicates the model state" in str(info.value)


class _GpuCluster(_Nodes):
    """Nodes and their summed resources, as ``plan_resources`` reads the ray module."""

    def cluster_resources(self) -> dict:
        total: dict = {}
        for node in self._nodes:
            for name, amount in node["Resources"].items():
                total[name] = total.get(name, 0) + amount
        return total


def test_gpu_shares_follow_the_accelerator_type_ray_detects_when_asked() -> None:
    """With resources.detect_gpu_memory (and gpu_memory_mb unset), a GPU's memory comes from the
    accelerator type Ray reports on each GPU node (the smallest when they differ); an unknown or
    missing type keeps a whole GPU per run, and so does the default (a MIG slice reports its
    card's type); a memory the study sets wins over the detected one."""
    from orchestrator.cluster import GPU_MEMORY_MB, GPU_SHARES, detected_gpu_memory_mb, gpu_share
    from orchestrator.study import memory_budget, plan_resources

    h100 = {"CPU": 16, "GPU": 8, "accelerator_type:H100": 1}
    a100 = {"CPU": 16, "GPU": 8, "accelerator_type:A100-40G": 1}
    cpu = {"CPU": 8}
    assert detected_gpu_memory_mb(_Nodes(h100, cpu).nodes())[0] == GPU_MEMORY_MB["H100"] == 80 * 1024
    mb, said = detected_gpu_memory_mb(_Nodes(h100, a100).nodes())
    assert mb == 40 * 1024 and "A100-40G" in said
    assert detected_gpu_memory_mb(_Nodes({"CPU": 4, "GPU": 2}).nodes()) == (0.0, "a GPU node reports no accelerator type")
    unknown = detected_gpu_memory_mb(_Nodes(h100, {"CPU": 4, "GPU": 1, "accelerator_type:X9": 1}).nodes())
    assert unknown[0] == 0.0 and "'X9'" in unknown[1]
    assert detected_gpu_memory_mb(_Nodes(cpu).nodes()) == (0.0, "no node has GPUs")

    raw = _distill_study()
    raw["trainer"] = {**raw["trainer"], "device": "auto"}  # trainings that may take a GPU
    runs = expand(study_from_dict(raw))
    student = next(r for r in runs if r.stage == "main")
    detect = {**raw, "resources": {"detect_gpu_memory": True}}
    # by default a whole GPU each, even where Ray names the card
    assert plan_resources(study_from_dict(raw), runs, _GpuCluster(h100)).gpus(student) == 1.0
    # asked to detect: tiny students on an H100 node get the smallest share, sized by their budgets
    plan = plan_resources(study_from_dict(detect), runs, _GpuCluster(h100))
    assert plan.gpus(student) == GPU_SHARES[0]
    assert all(plan.gpus(r) * 80 * 1024 * 2**20 >= memory_budget(runs)(r, 1) for r in runs)
    # GPUs of unknown memory: a whole one each
    assert plan_resources(study_from_dict(detect), runs, _GpuCluster({"CPU": 16, "GPU": 8})).gpus(student) == 1.0
    # the study's own figure wins: a GPU with room for exactly 3 students gives each half of it
    need = memory_budget(runs)(student, 1)
    told = study_from_dict({**raw, "resources": {"gpu_memory_mb": 3 * need / 2**20, "detect_gpu_memory": True}})
    assert plan_resources(told, runs, _GpuCluster(h100)).gpus(student) == 0.5
    # a run no detected GPU can hold says where the figure came from
    with pytest.raises(StudyError) as info:
        gpu_share(1.0, lambda workers: need, 0.5 * need / 2**20, 8, "detected: H100")
    assert info.value.key == "resources.gpu_memory_mb" and "(detected: H100)" in str(info.value)


def test_a_run_one_gpu_cannot_hold_gets_data_parallel_workers(tmp_path: Path) -> None:
    from orchestrator.cluster import check_feasible, gpu_share
    from orchestrator.study import gpu_request, memory_budget, memory_request, worker_request

    raw = _distill_study()
    runs = expand(study_from_dict(raw))
    student = next(r for r in runs if r.stage == "main")
    budget = memory_budget(runs)
    assert budget(student, 2) < budget(student, 1)  # each worker holds half the activations
    # a GPU between the two: the student trains on two GPUs, one worker each
    gpu_mb = (budget(student, 1) + budget(student, 2)) / 2 / 2**20
    study = study_from_dict({**raw, "resources": {"gpu_memory_mb": gpu_mb}})
    gpus = gpu_request(study, runs, 1.0)
    workers = worker_request(study, gpus)
    request = memory_request(study, runs, workers)
    assert gpus(student) == 2.0 and workers(student) == 2
    assert request(student) == budget(student, 2) <= gpu_mb * 2**20
    for run in runs:  # every run, on every worker, fits its GPU (or its share of one)
        assert workers(run) == max(1, int(gpus(run)))
        assert request(run) == budget(run, workers(run)) <= min(1.0, gpus(run)) * gpu_mb * 2**20
    # the scheduler ships it as two workers of one GPU each, and tags the run
    executor, tasks, tracker = FakeTrainingExecutor(), [], MemoryTracker()
    original = executor.submit
    executor.submit = lambda task: (tasks.append(task), original(task))  # type: ignore[method-assign]
    _scheduler(runs, tmp_path, executor, tracker, gpus=gpus, workers=workers, memory=request).run(timeout=0)
    shipped = next(t for t in tasks if t.spec.run_key == student.key)
    assert (shipped.workers, shipped.num_gpus, shipped.memory) == (2, 1.0, request(student))
    assert shipped.storage.endswith("_workers")
    assert next(r for r in tracker.runs.values() if r["run_key"] == student.key)["tags"]["isoflop.workers"] == "2"
    # the worker count must split the batch: 8 sequences go to 2, 4 or 8 GPUs, never 3
    assert gpu_share(1.0, lambda k: 4.0 if k < 4 else 1.0, 3 / 2**20, 8) == 4.0
    # a cluster must hold every worker of the largest run at once
    check_feasible(_Nodes({"CPU": 2, "GPU": 1}, {"CPU": 2, "GPU": 1}), 1, 1, 0, 2)
    with pytest.raises(StudyError) as info:
        check_feasible(_Nodes({"CPU": 2, "GPU": 1}, {"CPU": 2, "GPU": 1}), 1, 1, 0, 4)
    assert info.value.key == "resources.gpus_per_run" and "holds 2" in str(info.value)
    with pytest.raises(StudyError) as info:
        check_feasible(_Nodes({"CPU": 3}), 2, 0, 0, 2)
    assert info.value.key == "resources.workers_per_run"


def test_an_autoscaling_cluster_counts_the_nodes_it_can_add() -> None:
    from orchestrator.cluster import check_feasible, cluster_capacity, cluster_nodes
    from orchestrator.config import NodeTypeConfig

    head = _Nodes({"CPU": 4, "memory": 8 * 2**30})  # the GPU workers are not launched yet
    gpu_nodes = [NodeTypeConfig(cpus=8, gpus=4, memory_mb=64_000, max_nodes=2)]
    with pytest.raises(StudyError) as info:
        check_feasible(head, 1, 1)
    assert info.value.key == "resources.gpus_per_run"
    check_feasible(head, 1, 1, 2**30, autoscale=gpu_nodes)  # fits the nodes it can add
    check_feasible(head, 1, 1, 0, 8, autoscale=gpu_nodes)  # 8 one-GPU workers over 2 nodes
    with pytest.raises(StudyError) as info:
        check_feasible(head, 1, 1, 0, 9, autoscale=gpu_nodes)
    assert "holds 8 (with the node types of cluster.autoscale)" in str(info.value)
    with pytest.raises(StudyError) as info:
        check_feasible(head, 1, 1, 2**37, autoscale=gpu_nodes)
    assert info.value.key == "resources.memory_per_run"
    # runs in flight: what the head holds now plus what the autoscaler may add
    nodes = cluster_nodes(head, gpu_nodes)
    assert cluster_capacity(nodes, 1, 1) == 8 and cluster_capacity(nodes, 1, 0) == 4 + 16
    for bad, key in [({"cpus": 0}, "cpus"), ({"cpus": 4, "gpus": -1}, "gpus"), ({"cpus": 4, "max_nodes": 0}, "max_nodes")]:
        with pytest.raises(StudyError) as info:
            study_from_dict({**_distill_study(), "cluster": {"autoscale": [bad]}})
        assert info.value.key == f"cluster.autoscale[0].{key}"


def test_feasibility_is_judged_run_by_run_not_on_the_largest_of_each_need() -> None:
    """A GPU node with little memory and a CPU node with much: small GPU runs fit the first and a
    large CPU-only run the second, though no node offers both the GPU and the large memory."""
    from orchestrator.cluster import check_runs_feasible

    nodes = _Nodes({"CPU": 4, "GPU": 1, "memory": 2 * 2**30}, {"CPU": 4, "memory": 32 * 2**30})
    needs = [(1.0, 2**30, 1), (0.0, 16 * 2**30, 1), (1.0, 2**30, 1)]
    check_runs_feasible(nodes, 1, needs)
    with pytest.raises(StudyError) as info:  # one run needing both fits nowhere
        check_runs_feasible(nodes, 1, [*needs, (1.0, 16 * 2**30, 1)])
    assert info.value.key == "resources.memory_per_run"


def test_a_simulated_distillation_study_trains_teachers_then_students_on_their_losses(tmp_path: Path) -> None:
    """Simulated teachers (Eq. 1 of Busbridge et al. 2025) leave their final loss next to their
    checkpoint; each simulated student reads its own teacher's, and its L_T input is that loss.
    With no noise the distillation law fitted on the students is the truth at the target."""
    import numpy as np

    from laws.chinchilla import BUSBRIDGE_SUPERVISED_PARAMS
    from laws.distillation import BUSBRIDGE_DISTILLATION_PARAMS

    simulated = {"law": "distillation", "params": BUSBRIDGE_DISTILLATION_PARAMS, "supervised": BUSBRIDGE_SUPERVISED_PARAMS,
                 "noise": 0.0}
    study = study_from_dict({
        "name": "sim-distil",
        "trainer": {"kind": "simulated", "simulated": simulated},
        "grid": {"N": [1e8, 4e8], "tokens_per_param": [5, 20, 80],
                 "teachers": {"N": [1e8, 8e8, 3.2e9], "tokens_per_param": [20]}},
        "laws": [{"family": "chinchilla_gamma", "name": "supervised", "runs": "teacher"}, {"family": "distillation"}],
        "resources": {"checkpoint_dir": str(tmp_path / "ckpt")},
    })
    runs = expand(study)
    assert {r.spec.trainer.simulated.law for r in runs if r.stage == "teacher"} == {"chinchilla_gamma"}
    tracker = MemoryTracker()
    outcome = run_study(study, tracker=tracker, executor=InlineExecutor(), background_refit=False)
    assert outcome.stats.failed == 0 and outcome.stats.finished == 3 + 6 * 3
    finished = tracker.finished_runs()
    for run in runs:
        if run.stage == "main":
            teacher = finished[run.depends_on["teacher"]]
            assert finished[run.key].inputs["L_T"] == teacher.final_loss == finished[run.key].metrics["teacher_eval_loss"]
    fit_ = {o.name: o.fit for o in outcome.laws}["distillation"]
    assert fit_ is not None
    target = {"N": np.array([1e9]), "D": np.array([2e10]), "L_T": np.array([2.0])}
    truth = laws_predict(BUSBRIDGE_DISTILLATION_PARAMS, target)
    assert float(fit_.predict(**target)[0]) == pytest.approx(truth, rel=1e-3)


def laws_predict(params: dict, inputs: dict) -> float:
    import laws

    return float(laws.get_law("distillation").predict(params, **inputs)[0])
