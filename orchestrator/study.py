"""Running a whole study: expand, connect, track, schedule, fit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.cluster import check_feasible, connect, gpus_per_run
from orchestrator.config import StudyConfig
from orchestrator.executors import Executor, RayExecutor
from orchestrator.fitting import LawOutcome, fit_laws
from orchestrator.grid import PlannedRun, expand
from orchestrator.loading import to_yaml
from orchestrator.mlflow_tracker import MlflowTracker, default_tracking_uri
from orchestrator.scheduler import Event, Scheduler, SchedulerStats
from orchestrator.tracking import Tracker


@dataclass(frozen=True, kw_only=True)
class StudyOutcome:
    """What a study invocation did."""

    parent_run_id: str
    stats: SchedulerStats
    laws: list[LawOutcome]


def tracking_uri(study: StudyConfig) -> str:
    return study.tracking.uri or default_tracking_uri()


def open_tracker(study: StudyConfig) -> MlflowTracker:
    """The tracker a study's YAML names (the embedded sqlite store by default)."""
    return MlflowTracker(tracking_uri(study), study.tracking.experiment or study.name)


def run_study(
    study: StudyConfig,
    *,
    tracker: Tracker | None = None,
    executor: Executor | None = None,
    on_event: Callable[[Event], None] | None = None,
    runs: list[PlannedRun] | None = None,
) -> StudyOutcome:
    """Run every run of ``study`` not already finished in its store, then fit its laws.

    Everything that can reject the study (expansion, cluster feasibility) happens before the
    tracking store is touched, so a rejected study leaves nothing behind.
    """
    runs = runs if runs is not None else expand(study)
    num_cpus = study.resources.cpus_per_run
    if executor is None:
        ray = connect(study.cluster)
        num_gpus = gpus_per_run(study.resources, study.trainer, ray.cluster_resources().get("GPU", 0))
        check_feasible(ray, num_cpus, num_gpus)
        executor = RayExecutor(ray)
    else:
        num_gpus = 0.0 if study.resources.gpus_per_run == "auto" else float(study.resources.gpus_per_run)
    tracker = tracker or open_tracker(study)
    parent = tracker.open_study(study.name, to_yaml(study))
    scheduler = Scheduler(
        runs,
        executor=executor,
        tracker=tracker,
        max_concurrent=study.resources.max_concurrent or executor.capacity(num_cpus, num_gpus),
        max_retries=study.resources.max_retries,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        on_event=on_event,
    )
    try:
        stats = scheduler.run(timeout=study.resources.wait_timeout_s)
    except BaseException:
        executor.shutdown()
        tracker.close_study(failed=True)
        raise
    outcomes = fit_laws(study.laws, scheduler.finished.values(), seed=study.seed)
    for outcome in outcomes:
        if outcome.fit is not None:
            tracker.log_fit(outcome.name, outcome.fit.to_dict(), step=len(scheduler.finished))
    tracker.close_study(failed=stats.failed > 0)
    return StudyOutcome(parent_run_id=parent, stats=stats, laws=outcomes)
