"""Running a whole study: expand, connect, track, schedule, fit."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

import laws
from laws.export import law_entry
from orchestrator.cluster import (
    check_runs_feasible,
    cluster_capacity,
    cluster_nodes,
    connect,
    detected_gpu_memory_mb,
    gpu_share,
    gpus_per_run,
    sigint_deferred,
)
from orchestrator.config import StudyConfig
from orchestrator.errors import StudyError
from orchestrator.executors import Executor, RayExecutor
from orchestrator.fitting import LawOutcome, fit_laws, study_laws
from orchestrator.grid import PlannedRun, expand
from orchestrator.live import grid_flops_of
from orchestrator.loading import to_yaml
from orchestrator.mlflow_tracker import MlflowTracker, check_not_running, tracking_uri
from orchestrator.refit import OnlineRefitter, RefitState, fit_summary
from orchestrator.scheduler import CheckpointPolicy, Event, Scheduler, SchedulerStats
from orchestrator.secrets import redact_text
from orchestrator.selection import Selector, check_selection_budget, journal_storage
from orchestrator.selection.selector import TOLERANCE_METRICS, SelectionView
from orchestrator.tracking import (
    GRID_FLOPS_TAG,
    GRID_RUNS_TAG,
    HEARTBEAT_S,
    HEARTBEAT_TAG,
    NEXT_TAG,
    NOTE_TAG,
    STOPPED_TAG,
    FinishedRun,
    Tracker,
)
from trainers.memory import estimate_memory


@dataclass(frozen=True, kw_only=True)
class StudyOutcome:
    """What a study invocation did."""

    parent_run_id: str
    stats: SchedulerStats
    laws: list[LawOutcome]
    stopped: str | None = None  # why a budgeted selection stopped proposing runs


def open_tracker(study: StudyConfig) -> MlflowTracker:
    """The tracker a study's YAML names (the embedded sqlite store by default)."""
    return MlflowTracker(
        tracking_uri(study), study.tracking.experiment or study.name, flush_every_s=study.tracking.flush_every_s
    )


def check_tracking_reachable(study: StudyConfig, timeout_s: float = 10.0) -> None:
    """A tracking server (``http(s)://``) must answer before anything starts: MLflow's client
    retries a dead address with backoff for minutes, silently. Any HTTP answer counts (an
    authentication error is MLflow's to report); no answer raises a StudyError naming
    ``tracking.uri``."""
    import urllib.error
    import urllib.parse
    import urllib.request

    uri = tracking_uri(study)
    if not uri.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    # credentials in the URI are MLflow's to send; any answer, 401 included, will do here
    probe = parts._replace(netloc=parts.netloc.rpartition("@")[2], path=parts.path.rstrip("/") + "/health")
    try:
        urllib.request.urlopen(urllib.parse.urlunsplit(probe), timeout=timeout_s).close()  # noqa: S310 - http(s) only
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StudyError("tracking.uri", f"no tracking server answers at {redact_text(uri)} ({reason})") from None


def check_stored(study: StudyConfig, runs: list[PlannedRun], tracker: Tracker) -> None:
    """What the store holds of the study, checked before anything is written: no other driver
    is running it (:func:`~orchestrator.mlflow_tracker.check_not_running`; ``open_study`` checks
    again, at the time), and a replayed study's table still answers its finished runs
    (:func:`check_replayed_answers`). Nothing to check for a study not in the store yet."""
    if isinstance(tracker, MlflowTracker):
        try:
            parent = tracker.attach(study.name)
        except LookupError:
            return
        check_not_running(tracker.client.get_run(parent), study.name)
    if study.trainer.kind == "replay":
        check_replayed_answers(study, runs, tracker.finished_runs())


def check_replayed_answers(study: StudyConfig, runs: list[PlannedRun], finished: Mapping[str, FinishedRun]) -> None:
    """A replayed study's ``finished`` runs must still be what its table answers: a run key names
    a row's point, not its losses, so a table edited since would mix the old answers with new
    ones (resumed, the finished runs kept their old losses, without a word)."""
    from trainers.replay import ReplayTrainer

    trainer = ReplayTrainer(study.trainer)
    changed = []
    for run in runs:
        done = finished.get(run.spec.run_key)
        if done is None:
            continue
        row = trainer.row(run.spec.point, run.spec.seed)
        answers = {} if row is None else {"final_loss": row.loss, **{f"eval_loss/{k}": v for k, v in row.losses}}
        stored = {"final_loss": done.final_loss, **done.metrics}
        differ = [k for k, v in answers.items() if k not in stored or not np.isclose(v, stored[k], rtol=1e-12, atol=0.0)]
        if row is None or differ:
            what = differ[0] if differ else "final_loss"
            changed.append((run, what, stored.get(what, float("nan")), answers.get(what, float("nan"))))
    if changed:
        run, what, then, now = changed[0]
        column = "loss" if what == "final_loss" else what.removeprefix("eval_loss/")
        raise StudyError(
            "trainer.replay.path",
            f"{len(changed)} finished runs of study {study.name!r} have other losses in the table now (N={run.plan.n_params:.4g}, "
            f"D={run.plan.tokens:.4g}, column {column!r}: {then:.6g} when it ran, {now:.6g} now): the table changed since; "
            "restore it, or run the edited table as a new study (name=...)",
        )


def selection_journal(study: StudyConfig) -> Path:
    """Where a budgeted selection keeps its Optuna journal: next to the embedded store, or under
    ``.isoflop/`` in the working directory for a remote tracking server."""
    uri = tracking_uri(study)
    root = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else Path(".isoflop")
    return root / "optuna" / f"{study.name}.journal"


def checkpoint_policy(study: StudyConfig) -> CheckpointPolicy:
    """Where the study's runs keep checkpoints (``resources.checkpoint_dir``)."""
    res = study.resources
    root = Path(res.checkpoint_dir) if res.checkpoint_dir else Path(".isoflop") / "checkpoints"
    return CheckpointPolicy(root=root.resolve(), all_runs=res.checkpoint_all, every=res.checkpoint_every)


def memory_budget(runs: list[PlannedRun]) -> Callable[[PlannedRun, int], float]:
    """Bytes each run's training needs on each of its ``workers`` data-parallel workers
    (``trainers.memory``, a student's teacher weights included)."""
    by_key = {r.key: r for r in runs}

    def budget(run: PlannedRun, workers: int = 1) -> float:
        teacher = by_key.get(run.depends_on.get("teacher", ""))
        estimate = estimate_memory(
            run.plan, run.spec.trainer, teacher_params=teacher.plan.n_params if teacher else 0, workers=workers
        )
        return float(estimate.budget)

    return budget


def gpu_request(
    study: StudyConfig, runs: list[PlannedRun], whole: float, detected: tuple[float, str] = (0.0, "")
) -> Callable[[PlannedRun], float]:
    """GPUs each run asks Ray for: ``whole`` (see :func:`~orchestrator.cluster.gpus_per_run`),
    or under ``gpus_per_run: auto`` with the memory of one GPU known (``resources.gpu_memory_mb``,
    else ``detected``: (MB, how) from the cluster's accelerator types, which :func:`plan_resources`
    passes under ``resources.detect_gpu_memory``), the share of a GPU its memory budget needs (a
    student's teacher weights included), or several whole GPUs when one cannot hold it
    (:func:`~orchestrator.cluster.gpu_share`)."""
    memory_mb, source = study.resources.gpu_memory_mb, ""
    if memory_mb <= 0 and detected[0] > 0:
        memory_mb, source = detected[0], f"detected: {detected[1]}"
    if study.resources.gpus_per_run != "auto" or whole <= 0 or memory_mb <= 0:
        return lambda run: whole
    budget = memory_budget(runs)
    return lambda run: gpu_share(whole, lambda k: budget(run, k), memory_mb, run.spec.trainer.batch_size, source)


def worker_request(study: StudyConfig, gpus: Callable[[PlannedRun], float]) -> Callable[[PlannedRun], int]:
    """Data-parallel workers of each run (``resources.workers_per_run``; auto: one per GPU when a
    run has more than one)."""
    setting = study.resources.workers_per_run
    if setting != "auto":
        fixed = int(setting)
        return lambda run: fixed
    return lambda run: int(gpus(run)) if gpus(run) > 1 else 1


def memory_request(
    study: StudyConfig, runs: list[PlannedRun], workers: Callable[[PlannedRun], int] | None = None
) -> Callable[[PlannedRun], float]:
    """Bytes each run reserves on its node, or each of its ``workers`` on theirs
    (``resources.memory_per_run``)."""
    setting = study.resources.memory_per_run
    if setting != "auto":
        fixed = float(setting) * 2**20
        return lambda run: fixed
    budget = memory_budget(runs)
    count = workers or (lambda run: 1)
    return lambda run: budget(run, count(run))


@dataclass(frozen=True)
class ResourcePlan:
    """What each run of a study asks Ray for, checked against a cluster."""

    gpus: Callable[[PlannedRun], float]
    workers: Callable[[PlannedRun], int]
    memory: Callable[[PlannedRun], float]
    #: the median run's GPUs and CPUs (all its workers), which size the concurrency cap
    num_gpus: float
    cap_cpus: float


def plan_resources(study: StudyConfig, runs: list[PlannedRun], ray: object) -> ResourcePlan:
    """Resolve every run's GPUs, workers and memory on the cluster ``ray`` sees (the ``ray``
    module, or anything with its ``nodes()`` and ``cluster_resources()``) and fail, naming the
    key, if some run could never start there (:func:`~orchestrator.cluster.check_runs_feasible`)."""
    num_cpus = study.resources.cpus_per_run
    autoscale = study.cluster.autoscale
    gpu_nodes = max((kind.gpus for kind in autoscale), default=0.0)  # GPUs an autoscaler can add
    cluster_gpus = ray.cluster_resources().get("GPU", 0)  # type: ignore[attr-defined]
    whole = gpus_per_run(study.resources, study.trainer, max(cluster_gpus, gpu_nodes))
    # resources.detect_gpu_memory: GPU shares follow the GPUs Ray detected (the nodes alive now;
    # an autoscaler's node types name no accelerator, so those keep whole GPUs)
    detected = detected_gpu_memory_mb(cluster_nodes(ray, autoscale)) if study.resources.detect_gpu_memory else (0.0, "")
    gpus = gpu_request(study, runs, whole, detected)
    workers = worker_request(study, gpus)
    request = memory_request(study, runs, workers)
    shares = [gpus(r) for r in runs] or [whole]
    counts = [workers(r) for r in runs] or [1]
    needs = [(gpus(r) / workers(r), request(r), workers(r)) for r in runs] or [(whole, 0.0, 1)]
    check_runs_feasible(ray, num_cpus, needs, autoscale=autoscale)
    return ResourcePlan(
        gpus=gpus,
        workers=workers,
        memory=request,
        num_gpus=float(np.median(shares)),
        cap_cpus=num_cpus * float(np.median(counts)),
    )


def adopted_runs(study: StudyConfig) -> dict[str, FinishedRun]:
    """Finished runs of the studies ``grid.teachers.from_studies`` names (same tracking store),
    by run key: the scheduler reads a teacher from them instead of training it again."""
    teachers = study.grid.teachers
    adopted: dict[str, FinishedRun] = {}
    for name in teachers.from_studies if teachers is not None else []:
        from orchestrator.store import load_stored_study

        try:
            other = load_stored_study(name, tracking_uri(study))
            tracker = MlflowTracker(tracking_uri(study), other.tracking.experiment or other.name)
            tracker.attach(name)
        except LookupError as exc:
            raise StudyError("grid.teachers.from_studies", str(exc)) from None
        adopted.update(tracker.finished_runs())
    return adopted


def run_study(
    study: StudyConfig,
    *,
    tracker: Tracker | None = None,
    executor: Executor | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_fit: Callable[[RefitState], None] | None = None,
    on_selection: Callable[[SelectionView], None] | None = None,
    runs: list[PlannedRun] | None = None,
    optuna_storage: optuna.storages.BaseStorage | None = None,
    background_refit: bool = True,
) -> StudyOutcome:
    """Run the study's runs not already finished in its store, refitting its laws as they finish.

    In grid mode every run of the grid is trained; otherwise the grid is the candidate pool of a
    budgeted selection (:class:`~orchestrator.selection.Selector`). Everything that can reject
    the study (expansion, budget, cluster feasibility) happens before the tracking store is
    touched, so a rejected study leaves nothing behind.
    """
    candidates = runs if runs is not None else expand(study)
    check_selection_budget(study, candidates)
    if tracker is None:  # the study's own store: a server must answer before Ray starts
        check_tracking_reachable(study)
    uri = tracking_uri(study)
    # (an embedded store not made yet holds no study, and a tracker on it would make its folder)
    if tracker is not None or not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file():
        check_stored(study, candidates, tracker or open_tracker(study))
    adopted = adopted_runs(study)
    num_cpus = study.resources.cpus_per_run
    capacity: int | None = None
    if executor is None:
        ray = connect(study.cluster)
        plan = plan_resources(study, candidates, ray)
        gpus, workers, request = plan.gpus, plan.workers, plan.memory
        num_gpus, cap_cpus = plan.num_gpus, plan.cap_cpus
        executor = RayExecutor(ray)
        autoscale = study.cluster.autoscale
        if autoscale:  # the nodes the autoscaler may add count as well
            capacity = cluster_capacity(cluster_nodes(ray, autoscale), cap_cpus, num_gpus)
    else:
        num_gpus = 0.0 if study.resources.gpus_per_run == "auto" else float(study.resources.gpus_per_run)
        gpus = lambda run: num_gpus  # noqa: E731
        workers = worker_request(study, gpus)
        request = memory_request(study, candidates, workers)
        cap_cpus = num_cpus
    if capacity is None:
        capacity = executor.capacity(cap_cpus, num_gpus)
    fitted = study_laws(study)
    refitter = OnlineRefitter(
        fitted,
        budgets=study.export.budgets,
        full_every=study.selection.refit_every,
        seed=study.seed,
        background=background_refit,
        on_fit=on_fit,
    )
    selector = None
    if study.selection.mode != "grid":
        selector = Selector(
            study,
            candidates,
            fit_provider=refitter.current,
            refit_behind=refitter.behind,
            answered=refitter.answered,
            submitted=lambda: refitter.submitted,
            storage=optuna_storage or (lambda: journal_storage(selection_journal(study))),
        )
    tracker = tracker or open_tracker(study)
    refitter.tracker = tracker
    log_selection: Callable[[int], None] = lambda n: None  # noqa: E731 - grid mode: nothing to log
    if selector is not None:
        refitter.widths = selector.stop_widths
        refitter.on_fit, refitter.on_widths, log_selection = _selection_hooks(selector, tracker, refitter.on_fit, on_selection)
    parent = tracker.open_study(study.name, redact_text(to_yaml(study)))
    tracker.log_study_tags(
        {NOTE_TAG: study_note(study, candidates), GRID_RUNS_TAG: str(len(candidates)), GRID_FLOPS_TAG: f"{grid_flops_of(candidates):.6g}"}
    )
    scheduler = Scheduler(
        candidates if selector is None else [],
        executor=executor,
        tracker=tracker,
        max_concurrent=study.resources.max_concurrent or capacity,
        max_retries=study.resources.max_retries,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        on_event=_with_skipped_runs(refitter, on_event),
        on_finished=refitter.submit,
        proposer=selector,
        checkpoints=checkpoint_policy(study),
        memory=request,
        gpus=gpus,
        workers=workers,
        pending_warn_s=study.resources.pending_warn_s,
        adopted=adopted,
    )
    figures = FigureLogger(tracker, refitter, budgets=study.export.budgets, every_s=study.tracking.figures_every_s)
    heartbeat = Heartbeat(tracker)
    try:
        while scheduler.step(study.resources.wait_timeout_s):
            refitter.poll()
            figures.maybe_log()
            heartbeat.maybe_beat()
        heartbeat.beat()  # the final fits below may take a while
        refitter.drain()
    except BaseException as exc:
        # a second Ctrl-C is held until the study is closed (a third stops at once)
        with sigint_deferred():
            executor.shutdown()
            if selector is not None:
                selector.close()
            refitter.close()
            # what the selection has committed (the runs in flight included) and why it stopped:
            # logged only with fits, it lagged behind the runs done
            with contextlib.suppress(Exception):
                log_selection(len(scheduler.finished))
            tracker.close_study(failed=True, interrupted=isinstance(exc, KeyboardInterrupt))
        raise
    if selector is not None:
        selector.close()
    refitter.close()
    log_selection(len(scheduler.finished))  # a resume that proposed nothing logged no stop reason (status lost it)
    # the final word: a full multi-start fit of every law on every finished run
    outcomes = fit_laws(fitted, scheduler.finished.values(), seed=study.seed)
    for outcome in outcomes:
        if outcome.fit is not None:
            tracker.log_fit(outcome.name, law_entry(outcome.fit, budgets=study.export.budgets), step=len(scheduler.finished))
    figures.log({o.name: o.fit for o in outcomes if o.fit is not None})
    tracker.log_study_tags({NOTE_TAG: study_note(study, candidates, outcomes)})
    tracker.close_study(failed=scheduler.stats.failed > 0)
    return StudyOutcome(
        parent_run_id=parent,
        stats=scheduler.stats,
        laws=outcomes,
        stopped=selector.stopped if selector is not None else None,
    )



def study_note(study: StudyConfig, runs: list[PlannedRun], outcomes: list[LawOutcome] | None = None) -> str:
    """The parent run's description: what the study is, where its fits and figures are, and
    (once it has ended) the final fit of every law."""
    sel = study.selection
    what = f"{len(runs)} runs" if sel.mode == "grid" else f"{sel.mode} selection from {len(runs)} candidate runs"
    lines = [
        f"**Scaling-law study `{study.name}`**: {what} ({study.trainer.kind} trainer), laws "
        + ", ".join(f"`{law.name}`" for law in study_laws(study)) + ".",
        "",
        "Each training is a child run. Law fits are the `law.<law>.<param>` metrics (with `.lo` / `.hi` "
        "95 % interval ends; the step is the number of finished runs), fit documents are under "
        "`fits/`, figures under `plots/`, and the resolved study under `study/`.",
    ]
    for outcome in outcomes or []:
        if outcome.fit is not None:
            lines += ["", "Final fit: " + fit_summary(RefitState(law=outcome.name, fit=outcome.fit, n_runs=outcome.n_points))]
        else:
            lines += ["", f"Law {outcome.name}: not fitted ({outcome.error})"]
    return "\n".join(lines)


def _selection_hooks(
    selector: Selector,
    tracker: Tracker,
    then: Callable[[RefitState], None],
    show: Callable[[SelectionView], None] | None,
) -> tuple[Callable[[RefitState], None], Callable[[RefitState], None], Callable[[int], None]]:
    """The refitter's ``on_fit`` and ``on_widths`` for a budgeted selection (both run on the
    driver thread, where the refitter reports). After each refit of the selection's law: ``then``,
    then log what the selection believes and show it. When the stopping widths of one of its fits
    are in (later, from their own thread): apply the stopping rule and log its interval
    (``selection.widest_interval_runs`` says which fit's) at the latest step logged, not that
    fit's: a newer fit has logged the interval it knew at a higher step, and the latest value of
    a metric is the one at the highest step (status showed the older interval after a stop).
    The third hook logs the selection as it is now (at the study's end, with n runs finished),
    at that step or n if higher."""
    show = show or (lambda view: None)
    latest = [0]  # the highest step logged

    def report(state: RefitState, metrics: Callable[[Mapping[str, float]], Mapping[str, float]]) -> None:
        view = selector.view()
        latest[0] = max(latest[0], state.n_runs)
        tracker.log_study_metrics(metrics(view.metrics), step=latest[0])
        # what it would propose next, for ``isoflop status`` (run keys of the pool)
        tracker.log_study_tags({NEXT_TAG: ",".join(r.spec.run_key for r in view.next_runs), STOPPED_TAG: view.stopped or ""})
        show(view)

    def on_fit(state: RefitState) -> None:
        then(state)
        if state.law == selector.law_name:
            selector.check_stop(state.widths, state.n_runs)
            report(state, lambda m: m)

    def on_widths(state: RefitState) -> None:
        if state.law == selector.law_name:
            selector.check_stop(state.widths, state.n_runs)
            report(state, lambda m: {k: v for k, v in m.items() if k in TOLERANCE_METRICS})

    def final(n: int) -> None:
        view = selector.view()
        latest[0] = max(latest[0], n)
        tracker.log_study_metrics(view.metrics, step=latest[0])
        tracker.log_study_tags({NEXT_TAG: ",".join(r.spec.run_key for r in view.next_runs), STOPPED_TAG: view.stopped or ""})

    return on_fit, on_widths, final


class Heartbeat:
    """Tells the store the driver is alive: the parent run's :data:`HEARTBEAT_TAG` is set to the
    time now, at most every ``every_s`` seconds. ``isoflop status`` reads it: a study whose parent
    run says RUNNING but whose driver has been silent for :data:`~orchestrator.tracking.SILENT_S`
    has stopped without ending its run (killed, out of memory, its machine or Ray lost)."""

    def __init__(self, tracker: Tracker, every_s: float = HEARTBEAT_S) -> None:
        self.tracker = tracker
        self.every_s = every_s
        self._last = -float("inf")

    def maybe_beat(self) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self.beat()

    def beat(self) -> None:
        self._last = time.monotonic()
        self.tracker.log_study_tags({HEARTBEAT_TAG: f"{time.time():.0f}"})


class FigureLogger:
    """Refreshes the study's figures on the parent run, at most every ``every_s`` seconds."""

    def __init__(self, tracker: Tracker, refitter: OnlineRefitter, *, budgets: list[float], every_s: float = 30.0) -> None:
        self.tracker = tracker
        self.refitter = refitter
        self.budgets = budgets
        self.every_s = every_s
        self._last = time.monotonic()
        self._drawn_at = 0  # the refitter's update count when the figures were last drawn

    def maybe_log(self) -> None:
        """Redraw when a refit landed since the last drawing (inline or in the background) and
        ``every_s`` has passed."""
        if self.refitter.updates != self._drawn_at and time.monotonic() - self._last >= self.every_s:
            fits = {name: s.fit for name, s in self.refitter.states.items() if s.fit is not None}
            self.log(fits)

    def log(self, fits: dict[str, laws.LawFit]) -> None:
        from orchestrator import plots

        self._last = time.monotonic()
        self._drawn_at = self.refitter.updates
        runs = self.refitter.runs
        if not runs:
            return
        figures: dict = {}
        try:
            history = {name: self.tracker.fit_history(name) for name in fits}
            figures = plots.study_figures(runs, fits, budgets=self.budgets, history=history, study_laws=self.refitter.laws)
            self.tracker.log_figures(figures)
        except Exception as exc:  # noqa: BLE001 - figures are for watching: one that fails must not end the study
            warnings.warn(f"the study's figures were not drawn ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=2)
        finally:
            plots.close(figures)


def _with_skipped_runs(refitter: OnlineRefitter, on_event: Callable[[Event], None] | None) -> Callable[[Event], None]:
    """Runs finished by an earlier invocation count for the fits too."""

    def handle(event: Event) -> None:
        if event.kind == "skip" and event.finished is not None:
            refitter.submit([event.finished])
        if on_event is not None:
            on_event(event)

    return handle
