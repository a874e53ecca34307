"""The live status block of ``isoflop run`` and its plain one-line-per-event fallback."""

from __future__ import annotations

import io
import re
import time
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator import cli
from orchestrator.live import LiveView, PlainProgress, make_progress, selection_budget_of, use_live
from orchestrator.refit import RefitState, fit_summary
from orchestrator.scheduler import Event

ESC = "\x1b"


class TtyStream(io.StringIO):
    """A terminal stand-in: collects what is written and says it is a TTY."""

    def isatty(self) -> bool:
        return True


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fake_run(key: str, flops: float = 10.0) -> SimpleNamespace:
    plan = SimpleNamespace(n_params=1e6, tokens=2e7, flops=flops)
    return SimpleNamespace(plan=plan, spec=SimpleNamespace(run_key=key), budget=None, tags={}, depends_on={})


def ev(kind: str, run: SimpleNamespace, *, attempt: int = 1, error: str | None = None) -> Event:
    finished = SimpleNamespace(final_loss=3.25) if kind in ("finish", "skip") else None
    return Event(kind=kind, run=run, attempt=attempt, finished=finished, error=error)  # type: ignore[arg-type]


def view(runs: list[SimpleNamespace], clock: Clock, **kw: object) -> tuple[LiveView, TtyStream]:
    stream = TtyStream()
    return LiveView(runs, stream=stream, clock=clock, width=200, **kw), stream  # type: ignore[arg-type]


def screen(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: a tiny emulator of the escape codes the view uses."""
    rows: list[str] = [""]
    row = 0
    for token in re.split(rf"({ESC}\[\d*[A-Za-z]|\n)", raw):
        if not token:
            continue
        if token == "\n":
            row += 1
            if row == len(rows):
                rows.append("")
        elif m := re.fullmatch(rf"{ESC}\[(\d*)F", token):
            row = max(row - int(m.group(1) or 1), 0)
        elif token == f"{ESC}[2K":
            rows[row] = ""
        elif token == f"{ESC}[J":
            rows[row] = ""
            del rows[row + 1 :]
        elif token.startswith(ESC):
            raise AssertionError(f"unexpected escape code {token!r}")
        else:
            rows[row] += token
    return [r for r in rows if r]


def test_counts_follow_the_events() -> None:
    clock = Clock()
    runs = [fake_run(k) for k in "abcde"]
    live, _ = view(runs, clock)
    a, b, c, d, _e = runs
    live(ev("skip", d))
    for r in (a, b, c):
        live(ev("start", r))
    s = live.snapshot()
    assert (s.pending, s.running, s.done, s.skipped, s.failed) == (1, 3, 1, 1, 0)
    live(ev("finish", a))
    live(ev("fail", c, error="RuntimeError: out of memory\ntraceback..."))
    live(ev("retry", b, error="WorkerCrashedError"))  # back in the queue
    s = live.snapshot()
    assert (s.total, s.pending, s.running, s.done, s.failed, s.retries) == (5, 2, 0, 2, 1, 1)
    live(ev("start", b, attempt=2))
    live(ev("finish", b, attempt=2))
    s = live.snapshot()
    assert (s.pending, s.running, s.done, s.failed) == (1, 0, 3, 1)
    text = "\n".join(live.lines())
    assert "runs 4/5: 1 pending, 0 running, 3 done (1 already), 1 failed, 1 retried" in text
    assert "last failure: RuntimeError: out of memory" in text


def test_flops_and_budget_fraction() -> None:
    clock = Clock()
    runs = [fake_run(k, flops=f) for k, f in zip("abcd", (1e18, 2e18, 4e18, 8e18), strict=True)]
    live, _ = view(runs, clock, budget_flops=1e19)
    live(ev("skip", runs[0]))
    live(ev("start", runs[1]))
    live(ev("finish", runs[1]))
    live(ev("start", runs[2]))
    live(ev("fail", runs[2], error="boom"))  # a failed run spends no budget here
    s = live.snapshot()
    assert s.flops_done == pytest.approx(3e18)
    assert s.budget_fraction == pytest.approx(0.3)
    text = "\n".join(live.lines())
    assert "FLOPs 3e+18 of budget 1e+19 (30.0%)" in text
    assert "candidates left" in text

    grid, _ = view(runs, clock, grid_flops=1.5e19)
    grid(ev("skip", runs[3]))
    assert grid.snapshot().budget_fraction is None
    # a grid shows its progress against the FLOPs of the whole grid
    assert "FLOPs 8e+18 of 1.5e+19 for the grid (53.3%)" in "\n".join(grid.lines())
    assert "budget" not in "\n".join(grid.lines())


def test_selection_budget_of_the_study() -> None:
    runs = [fake_run(k, flops=f) for k, f in zip("abc", (1e18, 3e18, 6e18), strict=True)]

    def study(
        mode: str, flops: float | None = None, fraction: float | None = None
    ) -> SimpleNamespace:
        return SimpleNamespace(
            selection=SimpleNamespace(mode=mode, budget_flops=flops, budget_fraction=fraction)
        )

    assert selection_budget_of(study("grid"), runs) is None
    assert selection_budget_of(study("active", fraction=0.25), runs) == pytest.approx(2.5e18)
    assert selection_budget_of(study("random", flops=7e17), runs) == pytest.approx(7e17)


def test_eta_from_mean_run_time_and_runs_left() -> None:
    clock = Clock()
    runs = [fake_run(str(i)) for i in range(6)]
    live, _ = view(runs, clock)
    assert live.snapshot().eta_s is None  # no run has finished yet
    live(ev("start", runs[0]))
    live(ev("start", runs[1]))
    clock.t += 8
    live(ev("finish", runs[0]))
    clock.t += 4
    live(ev("finish", runs[1]))
    s = live.snapshot()
    assert s.mean_run_s == pytest.approx(10.0)
    assert s.eta_s == pytest.approx(10.0 * 4 / 2)  # 4 runs left, 2 at a time
    live(ev("start", runs[2]))
    clock.t += 4
    s = live.snapshot()
    assert s.elapsed_s == pytest.approx(16.0)
    assert s.eta_s == pytest.approx((10.0 - 4.0) + 10.0 * 3 / 2)  # the run in flight has 6 s to go
    assert "elapsed 0:16, mean run 10.0s, ETA 0:21" in "\n".join(live.lines())


def test_eta_under_a_budget_counts_the_runs_the_budget_still_pays_for() -> None:
    clock = Clock()
    runs = [fake_run(str(i), flops=10.0) for i in range(20)]
    live, _ = view(runs, clock, budget_flops=100.0)
    for r in runs[:2]:
        live(ev("start", r))
    clock.t += 5
    for r in runs[:2]:
        live(ev("finish", r))
    # 80 FLOPs left at 10 per run: 8 runs, 2 at a time, 5 s each
    assert live.snapshot().eta_s == pytest.approx(20.0)


def fitted_state(law: str, params: dict[str, float], n_runs: int) -> RefitState:
    """A refit result whose fit carries only parameters (intervals come from the patched law API)."""
    fit: Any = SimpleNamespace(params=params, report=SimpleNamespace(n_points=n_runs))
    return RefitState(law=law, fit=fit, n_runs=n_runs)


def test_fit_lines_show_each_law_with_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.refit as refit

    monkeypatch.setattr(refit.laws, "parametric_intervals", lambda fit: {"alpha": (0.31, 0.36)})
    clock = Clock()
    live, _ = view([fake_run("a")], clock)
    fitted = fitted_state("chinchilla", {"E": 1.69, "alpha": 0.34}, n_runs=7)
    pending = RefitState(law="sparsity", fit=None, n_runs=2, error="too few runs")
    live.on_fit(pending)
    live.on_fit(fitted)
    lines = live.lines()
    assert f"  {fit_summary(fitted)}" in lines
    assert f"  {fit_summary(pending)}" in lines
    assert "alpha=0.34 [0.31, 0.36]" in fit_summary(fitted)
    later = fitted_state("chinchilla", {"E": 1.7, "alpha": 0.35}, n_runs=9)
    live.on_fit(later)
    assert sum("law chinchilla" in line for line in live.lines()) == 1  # replaced, not appended
    assert "law chinchilla on 9 runs" in "\n".join(live.lines())


def test_redraws_are_throttled_and_in_place() -> None:
    clock = Clock()
    runs = [fake_run(str(i)) for i in range(30)]
    live, stream = view(runs, clock, min_interval_s=0.25)
    for r in runs[:10]:  # a burst of events at one instant: one redraw
        live(ev("start", r))
    assert live.redraws == 1
    clock.t += 0.1
    live(ev("finish", runs[0]))
    assert live.redraws == 1
    clock.t += 0.2  # 0.3 s after the first redraw
    live(ev("finish", runs[1]))
    assert live.redraws == 2
    assert f"{ESC}[2F" in stream.getvalue()  # the second redraw moved up over the first block
    for r in runs[2:10]:
        clock.t += 0.01
        live(ev("finish", r))
    assert live.redraws == 2
    live.close()  # the final state is drawn even inside the interval
    assert live.redraws == 3
    shown = screen(stream.getvalue())
    assert shown == live.lines(), "the terminal must show exactly one, final, block"
    assert shown[0].startswith("isoflop: runs 10/30: 20 pending, 0 running, 10 done, 0 failed")
    assert "ETA" not in shown[1]  # finished: no estimate left


def test_timer_moves_the_clock_but_only_after_the_first_event() -> None:
    clock = Clock()
    runs = [fake_run("a")]
    live, stream = view(runs, clock, tick_s=0.01)
    time.sleep(0.1)
    assert stream.getvalue() == ""  # start-up messages of other libraries go first
    live(ev("start", runs[0]))
    drawn = live.redraws
    clock.t += 5
    deadline = time.monotonic() + 5
    while live.redraws == drawn and time.monotonic() < deadline:
        time.sleep(0.01)
    live.close()
    assert live.redraws > drawn + 1
    assert "elapsed 0:05" in screen(stream.getvalue())[1]


def test_failures_stay_above_the_block() -> None:
    clock = Clock()
    runs = [fake_run("aaaaaaaaaa"), fake_run("bbbbbbbbbb")]
    live, stream = view(runs, clock, min_interval_s=0.25)
    live(ev("start", runs[0]))
    live(ev("start", runs[1]))
    live(ev("retry", runs[0], error="WorkerCrashedError: worker died"))
    live(ev("start", runs[0], attempt=2))
    live(ev("fail", runs[0], attempt=2, error="ValueError: bad shape"))
    live(ev("finish", runs[1]))
    live.close()
    shown = screen(stream.getvalue())
    assert shown[0].startswith(
        "retrying N=1e+06 D=2e+07 (attempt 1, aaaaaaaa): WorkerCrashedError: worker died"
    )
    assert shown[1].startswith(
        "FAILED   N=1e+06 D=2e+07 (attempt 2, aaaaaaaa): ValueError: bad shape"
    )
    assert shown[2:] == live.lines()


def test_long_lines_are_wrapped_within_the_terminal_width() -> None:
    clock = Clock()
    stream = TtyStream()
    live = LiveView([fake_run("a")], title="x" * 300, stream=stream, clock=clock, width=80)
    live.close()
    shown = screen(stream.getvalue())
    assert all(len(line) < 80 for line in shown)
    assert "".join(shown).count("x") == 300  # nothing cut


def test_fit_lines_wrap_between_parameters_and_keep_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.refit as refit

    params = {"E": 1.837, "A": 535.4, "B": 2357.0, "alpha": 0.3542, "beta": 0.3724}
    intervals = {"E": (1.82, 1.85), "A": (477.0, 601.0), "B": (2090.0, 2660.0), "alpha": (0.347, 0.362), "beta": (0.366, 0.379)}
    monkeypatch.setattr(refit.laws, "parametric_intervals", lambda fit: intervals)
    clock = Clock()
    stream = TtyStream()
    live = LiveView([fake_run("a")], stream=stream, clock=clock, width=120)
    live.on_fit(fitted_state("chinchilla", params, n_runs=300))
    live.on_fit(fitted_state("chinchilla_gamma", {**params, "gamma": 0.5}, n_runs=300))
    live.close()
    shown = screen(stream.getvalue())
    assert all(len(line) < 120 for line in shown)
    start = next(i for i, line in enumerate(shown) if line.startswith("  law chinchilla on"))
    # the first law's line runs past 120 columns: its last parameters go on an indented line
    assert shown[start + 1].startswith("      ") and not shown[start + 1].startswith("  law")
    text = " ".join(line.strip() for line in shown)
    for k in params:  # every parameter with its interval, none cut off, none split from its value
        lo, hi = intervals[k]
        assert f"{k}={params[k]:.4g} [{lo:.3g}, {hi:.3g}]" in text
    assert "gamma=0.5" in text
    assert screen(stream.getvalue()) == shown  # the redraws kept one block: rows counted right


def test_plain_lines_when_not_a_terminal() -> None:
    study = SimpleNamespace(name="s", selection=SimpleNamespace(mode="grid"))
    runs = [fake_run("aaaaaaaaaa"), fake_run("bbbbbbbbbb")]
    pipe = io.StringIO()
    progress = make_progress(study, runs, stream=pipe, environ={})
    assert isinstance(progress, PlainProgress)
    progress(ev("start", runs[0]))
    progress(ev("finish", runs[0]))
    progress(ev("skip", runs[1]))
    progress.close()
    lines = pipe.getvalue().splitlines()
    assert ESC not in pipe.getvalue()
    assert len(lines) == 5
    assert lines[1].startswith("[1/2] finished  N=1e+06 D=2e+07 C=10 loss=3.2500")
    assert lines[2].strip().startswith("FLOPs 10 of 20 for the grid (50.0%)")  # after the first run
    assert lines[3].startswith("[2/2] skipped ")
    assert lines[4].strip().startswith("FLOPs 20 of 20 for the grid (100.0%)")  # the totals at the end
    assert "ETA" not in lines[4]


def test_plain_lines_report_flops_and_time_left_every_few_seconds() -> None:
    clock = Clock()
    runs = [fake_run(str(i), flops=1e18) for i in range(6)]
    pipe = io.StringIO()
    plain = PlainProgress(total=6, stream=pipe, budget_flops=4e18, every_s=10.0, clock=clock)  # type: ignore[arg-type]

    def spend_lines() -> list[str]:
        return [line.strip() for line in pipe.getvalue().splitlines() if line.strip().startswith("FLOPs")]

    plain(ev("start", runs[0]))
    plain(ev("start", runs[1]))
    clock.t += 4
    plain(ev("finish", runs[0]))
    assert spend_lines() == ["FLOPs 1e+18 of budget 4e+18 (25.0%)  elapsed 0:04, mean run 4.0s, ETA 0:04"]  # 2 runs left, 2 at a time
    clock.t += 2
    plain(ev("finish", runs[1]))  # 2 s after the last: not yet
    assert len(spend_lines()) == 1
    plain(ev("start", runs[2]))
    clock.t += 8
    plain(ev("finish", runs[2]))
    assert len(spend_lines()) == 2
    assert spend_lines()[-1] == "FLOPs 3e+18 of budget 4e+18 (75.0%)  elapsed 0:14, mean run 6.0s, ETA 0:03"
    plain.close()  # nothing ended since: no repeat
    assert len(spend_lines()) == 2


def test_runs_done_before_the_selection_are_not_charged_to_its_budget() -> None:
    """A study run as a grid, then as a selection: the grid phase's FLOPs showed as the
    selection's ('FLOPs 1.27e+22 of budget 6.67e+21 (190.0%)', while it had spent 100 %)."""
    from orchestrator.selection.selector import SelectionView

    clock = Clock()
    pipe = io.StringIO()
    plain = PlainProgress(total=6, stream=pipe, budget_flops=4e18, every_s=0.0, clock=clock)  # type: ignore[arg-type]
    prior = [fake_run(f"g{i}", flops=2e18) for i in range(3)]
    for run in prior:
        plain(ev("skip", run))
    plain.on_selection(SelectionView(metrics={"selection.spent_flops": 0.0, "selection.budget_flops": 4e18,
                                              "selection.prior_flops": 6e18}, next_runs=[], stopped=None))
    run = fake_run("a", flops=1e18)
    plain(ev("start", run))
    clock.t += 2
    plain(ev("finish", run))
    line = [x.strip() for x in pipe.getvalue().splitlines() if x.strip().startswith("FLOPs")][-1]
    assert line.startswith("FLOPs 7e+18 of budget 4e+18 (25.0%, 6e+18 of them before the selection)"), line


def test_choice_of_view() -> None:
    study = SimpleNamespace(name="s", selection=SimpleNamespace(mode="grid"))
    tty = TtyStream()
    assert use_live(tty, {}) and not use_live(io.StringIO(), {})
    assert not use_live(tty, {"ISOFLOP_PLAIN": "1"})
    assert use_live(tty, {"ISOFLOP_PLAIN": "0"})
    assert isinstance(
        make_progress(study, [], stream=tty, environ={"ISOFLOP_PLAIN": "1"}), PlainProgress
    )
    live = make_progress(study, [], stream=tty, environ={})
    assert isinstance(live, LiveView)
    live.close()


def _fake_run_study(runs: list[SimpleNamespace]):  # noqa: ANN202
    def run_study(study, *, on_event, on_fit, runs=runs, **kw):  # noqa: ANN001, ANN003, ANN202
        for r in runs:
            on_event(ev("start", r))
            on_event(ev("finish", r))
        on_fit(RefitState(law="chinchilla", fit=None, n_runs=len(runs), error="too few runs"))
        stats = SimpleNamespace(finished=len(runs), skipped=0, failed=0)
        return SimpleNamespace(stats=stats, stopped=None, laws=[])

    return run_study


@pytest.mark.parametrize("tty", [True, False])
def test_isoflop_run_picks_the_view_by_terminal(tty: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.grid
    import orchestrator.study

    runs = [fake_run("aaaaaaaaaa"), fake_run("bbbbbbbbbb")]
    monkeypatch.setattr(orchestrator.grid, "expand", lambda study: runs)
    monkeypatch.setattr(orchestrator.study, "run_study", _fake_run_study(runs))
    monkeypatch.delenv("ISOFLOP_PLAIN", raising=False)
    out = TtyStream() if tty else io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    study = SimpleNamespace(name="wired", selection=SimpleNamespace(mode="grid"))
    assert cli._run(study) == 0
    text = out.getvalue()
    assert ("\x1b[" in text) is tty
    if tty:
        assert "isoflop: wired  runs 2/2: 0 pending, 0 running, 2 done, 0 failed" in screen(text)[1]
    else:
        assert "[2/2] finished" in text
    assert "2 runs finished, 0 already done, 0 failed" in text


def test_a_run_waiting_for_a_node_is_shown_above_the_block_and_changes_no_count() -> None:
    clock = Clock()
    runs = [fake_run("aaaaaaaaaa"), fake_run("bbbbbbbbbb")]
    live, stream = view(runs, clock, min_interval_s=0.25)
    live(ev("start", runs[0]))
    live(ev("start", runs[1]))
    before = live.snapshot()
    live(ev("pending", runs[1], error="not started after 601 s: waiting for a node with 1 CPUs, 1 GPUs free"))
    after = live.snapshot()
    assert (after.pending, after.running, after.done, after.failed) == (before.pending, before.running, 0, 0)
    live.close()
    shown = screen(stream.getvalue())
    assert shown[0].startswith("PENDING  N=1e+06 D=2e+07 (bbbbbbbb): not started after 601 s")


def _selection_view(**metrics: float) -> Any:
    from orchestrator.selection.selector import SelectionView

    base = {"selection.spent_flops": 2.5e19, "selection.budget_flops": 1e20}
    return SelectionView(metrics={**base, **metrics}, next_runs=[fake_run("cccccccc"), fake_run("dddddddd")])


def test_the_selection_line_shows_spend_estimates_and_next_choices() -> None:
    line = _selection_view(**{
        "selection.noise_sd": 0.004, "selection.misfit_sd": 0.021, "selection.cost_exponent": 0.8,
    }).summary()
    assert line == (
        "selection: 2.5e+19 of 1e+20 FLOPs committed (25%), noise 0.4%, misfit 2.1%, cost exponent 0.8; "
        "next N=1e+06 D=2e+07, N=1e+06 D=2e+07"
    )
    # before the criterion takes over there are no estimates; a stopped selection says why
    assert _selection_view().summary().startswith("selection: 2.5e+19 of 1e+20 FLOPs committed (25%); next ")
    assert replace(_selection_view(), stopped="budget spent").summary().endswith("; stopped: budget spent")


def test_the_live_block_and_the_plain_lines_show_the_selection() -> None:
    clock = Clock()
    live, stream = view([fake_run("aaaaaaaa")], clock)
    live.on_selection(_selection_view(**{"selection.cost_exponent": 0.4}))
    assert any(line.strip().startswith("selection: 2.5e+19 of 1e+20") for line in screen(stream.getvalue()))
    pipe = io.StringIO()
    plain = PlainProgress(total=1, stream=pipe)
    plain.on_selection(_selection_view())
    plain.on_selection(_selection_view())  # the same state is not printed twice
    assert pipe.getvalue().count("selection: ") == 1


def test_status_counts_runs_not_attempts() -> None:
    from orchestrator.status import run_states

    attempts = {
        "a": ["FINISHED"],
        "b": ["FAILED", "FINISHED"],  # retried, then done
        "c": ["FAILED", "RUNNING"],  # retrying now
        "d": ["FAILED"],  # one failure, a retry still allowed
        "e": ["FAILED", "FAILED"],  # out of attempts
        "f": ["KILLED"],  # a dead driver's: redone, so pending
    }
    assert run_states(attempts, max_attempts=2, ended=False) == {"done": 2, "running": 1, "failed": 1, "retries": 4}
    # once the study has ended, a run that never finished has failed, and nothing is running
    # (an interrupted driver leaves its attempts RUNNING: status showed "2 running" after Ctrl-C)
    assert run_states(attempts, max_attempts=2, ended=True) == {"done": 2, "running": 0, "failed": 3, "retries": 2}
    assert run_states({"g": ["RUNNING"]}, max_attempts=2, ended=True) == {"done": 0, "running": 0, "failed": 0, "retries": 0}


def test_status_counts_a_replay_grid_whose_table_is_elsewhere_from_the_parent_tags(tmp_path) -> None:
    """Status of a replay study on a machine without its table: the grid's size and FLOPs come
    from what its last run recorded (without them, from the stored runs), and a fraction-of-grid
    budget is a fraction of those FLOPs."""
    from orchestrator.loading import study_from_dict
    from orchestrator.status import grid_view, snapshot_of
    from orchestrator.tracking import GRID_FLOPS_TAG, GRID_RUNS_TAG, StudyStatus

    raw = {"name": "r", "trainer": {"kind": "replay", "replay": {"path": str(tmp_path / "gone.csv")}},
           "selection": {"mode": "random", "budget_fraction": 0.25}}
    study = study_from_dict(raw, stored=True)
    st = StudyStatus(name="r", parent_run_id="p", counts={}, flops_done=3e18, fits={},
                     attempts={"a": ["FINISHED"], "b": ["FINISHED"], "c": ["FAILED"]},
                     tags={GRID_RUNS_TAG: "40", GRID_FLOPS_TAG: "8e+19"}, study_status="FINISHED")
    grid = grid_view(study, st)
    assert (grid.runs, grid.total, grid.flops) == ((), 40, 8e19)
    snap = snapshot_of(st, study, grid)
    assert (snap.total, snap.done, snap.grid_flops, snap.budget_flops) == (40, 2, 8e19, 2e19)
    # a study run before the grid was recorded: its stored runs are all that is known
    older = grid_view(study, replace(st, tags={}))
    assert (older.total, older.flops) == (3, 3e18)


def test_status_shows_the_selections_next_runs_from_the_parent_tags() -> None:
    from orchestrator.grid import expand
    from orchestrator.loading import study_from_dict
    from orchestrator.status import selection_line
    from orchestrator.tracking import NEXT_TAG, StudyStatus

    study = study_from_dict({"name": "s", "trainer": {"kind": "simulated"}, "grid": {"N": [1e6, 1e7], "D": [1e8, 1e9]}})
    runs = expand(study)
    st = StudyStatus(
        name="s", parent_run_id="p", counts={}, flops_done=0.0, fits={},
        selection={"selection.spent_flops": 1e15, "selection.budget_flops": 1e16},
        tags={NEXT_TAG: f"{runs[3].spec.run_key},unknown-key,{runs[0].spec.run_key}"},
    )
    line = selection_line(st, runs, "active")
    p3, p0 = runs[3].plan, runs[0].plan
    assert line.endswith(f"next N={p3.n_params:.2g} D={p3.tokens:.2g}, N={p0.n_params:.2g} D={p0.tokens:.2g}")
    assert "(10%)" in line
    assert selection_line(StudyStatus(name="s", parent_run_id="p", counts={}, flops_done=0, fits={}), runs, "active") is None


def test_status_shows_only_what_the_current_selection_mode_logs() -> None:
    """The parent run keeps the metrics of earlier invocations: a study rerun in grid mode shows
    no selection line, one rerun as a baseline not the active selection's estimates."""
    from orchestrator.status import selection_line
    from orchestrator.tracking import StudyStatus

    st = StudyStatus(
        name="s", parent_run_id="p", counts={}, flops_done=0.0, fits={},
        selection={"selection.spent_flops": 1e15, "selection.budget_flops": 1e16, "selection.noise_sd": 0.01,
                   "selection.misfit_sd": 0.02, "selection.misfit_length": 1.0, "selection.cost_exponent": 0.5},
    )
    assert "noise 1%, misfit 2%" in selection_line(st, [], "active")
    assert selection_line(st, [], "random") == "selection: 1e+15 of 1e+16 FLOPs committed (10%)"
    assert selection_line(st, [], "grid") is None


def test_the_selection_line_shows_the_stopping_rules_widest_interval() -> None:
    from orchestrator.status import selection_line
    from orchestrator.tracking import StudyStatus

    metrics = {"selection.spent_flops": 1e15, "selection.budget_flops": 1e16, "selection.tolerance": 0.05}
    st = StudyStatus(name="s", parent_run_id="p", counts={}, flops_done=0.0, fits={}, selection=metrics)
    assert selection_line(st, [], "random", 0.05).endswith("no bootstrap interval of the targets yet (stop at +-0.05)")
    st = replace(st, selection={**metrics, "selection.widest_interval": 0.0812})
    assert selection_line(st, [], "active", 0.05).endswith("widest target interval +-0.0812 (stop at +-0.05)")
    # the latest bootstrap may be some runs old: the line says which fit it is of
    st2 = replace(st, selection={**st.selection, "selection.widest_interval_runs": 23.0})
    assert selection_line(st2, [], "active", 0.05).endswith("widest target interval +-0.0812 on 23 runs (stop at +-0.05)")
    # rerun without a tolerance: the earlier invocation's stopping metrics are not shown
    assert selection_line(st, [], "active") == "selection: 1e+15 of 1e+16 FLOPs committed (10%)"
