"""A live status block for ``isoflop run`` on a terminal.

:class:`LiveView` keeps counts of the study's runs (pending, running, done, failed), the FLOPs
spent (against the selection budget when the study selects its runs under a budget), the current
fit of every law with its intervals, the time elapsed and an estimate of the time left, and
redraws them in place with plain ANSI escape codes, at most a few times per second. Failures and
retries are also printed as permanent lines above the block, so they stay in the scrollback.

:func:`make_progress` picks the live view on a terminal and :class:`PlainProgress` otherwise
(pipes, CI logs, ``ISOFLOP_PLAIN=1``): the one-line-per-event
:class:`~orchestrator.progress.Progress` printer, with the FLOPs spent and the time left every
few seconds. Both count from the same :class:`RunTally`.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from orchestrator.grid import PlannedRun
from orchestrator.progress import FitPrinter, Progress
from orchestrator.refit import RefitState, fit_summary
from orchestrator.scheduler import Event
from orchestrator.selection.selector import SelectionView

PLAIN_ENV = "ISOFLOP_PLAIN"

# Cursor to the start of the line n lines up; erase the whole line; erase to the end of the screen.
_UP = "\x1b[{n}F"
_ERASE_LINE = "\x1b[2K"
_ERASE_DOWN = "\x1b[J"


@dataclass(frozen=True)
class Snapshot:
    """What the block shows, computed from the events seen so far."""

    total: int  # runs of the grid (grid mode) or candidates in the pool (budgeted selection)
    pending: int
    running: int
    done: int  # finished here plus already finished in the store
    skipped: int  # of ``done``: already finished in the store before this invocation
    failed: int  # failed after every retry
    retries: int
    flops_done: float
    budget_flops: float | None
    elapsed_s: float
    mean_run_s: float | None
    eta_s: float | None
    grid_flops: float | None = None  # FLOPs of every run of the grid (grid mode), to show progress against
    #: of ``flops_done``: runs of the pool finished before the selection took the study over (a
    #: grid phase), which its budget does not pay for
    flops_before: float = 0.0

    @property
    def budget_fraction(self) -> float | None:
        """FLOPs the selection spent as a fraction of its budget (None in grid mode)."""
        if self.budget_flops is None or self.budget_flops <= 0:
            return None
        return (self.flops_done - self.flops_before) / self.budget_flops


def selection_budget_of(study: object, runs: Sequence[PlannedRun]) -> float | None:
    """The FLOPs a budgeted selection may spend: ``selection.budget_flops``, or
    ``selection.budget_fraction`` times the FLOPs the whole grid trains (each teacher or trunk
    once, a cooldown branch its cooldown), as the selector counts them; None in grid mode."""
    sel = study.selection  # type: ignore[attr-defined]
    if sel.mode == "grid":
        return None
    from orchestrator.selection.selector import selection_budget

    return selection_budget(sel, grid_flops_of(runs))


def grid_flops_of(runs: Sequence[PlannedRun]) -> float:
    """The FLOPs of training every run (a cooldown branch pays for its cooldown only)."""
    from orchestrator.grid import trained_flops

    return float(sum(trained_flops(r) for r in runs))


class RunTally:
    """The counts, FLOPs and run times of a study, from its scheduler events: what both the live
    block and the plain lines report (``clock`` is injectable for tests)."""

    def __init__(
        self,
        total: int,
        *,
        budget_flops: float | None = None,
        grid_flops: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.budget_flops = budget_flops
        self.grid_flops = grid_flops
        self.clock = clock
        self.last_error: str | None = None
        self._t0 = clock()
        self._started: dict[str, float] = {}  # run key -> start time of its current attempt
        self._durations: list[float] = []
        self._max_running = 0
        self._done = self._skipped = self._failed = self._retries = 0
        self._flops = 0.0
        self.flops_before = 0.0  # set from the selection's ``selection.prior_flops``

    def record(self, event: Event) -> None:
        """Count one scheduler event."""
        key = event.run.spec.run_key
        now = self.clock()
        if event.kind == "start":
            self._started[key] = now
            self._max_running = max(self._max_running, len(self._started))
        elif event.kind == "finish":
            started = self._started.pop(key, None)
            if started is not None:
                self._durations.append(now - started)
            self._done += 1
            self._flops += event.run.plan.flops
        elif event.kind == "skip":
            self._done += 1
            self._skipped += 1
            self._flops += event.run.plan.flops
        elif event.kind == "fail":
            self._started.pop(key, None)
            self._failed += 1
            self.last_error = _first_line(event.error)
        elif event.kind == "retry":
            self._started.pop(key, None)
            self._retries += 1

    def snapshot(self) -> Snapshot:
        """The counts, FLOPs and times as of now."""
        now = self.clock()
        running = len(self._started)
        pending = max(self.total - self._done - self._failed - running, 0)
        mean = sum(self._durations) / len(self._durations) if self._durations else None
        return Snapshot(
            total=self.total,
            pending=pending,
            running=running,
            done=self._done,
            skipped=self._skipped,
            failed=self._failed,
            retries=self._retries,
            flops_done=self._flops,
            budget_flops=self.budget_flops,
            elapsed_s=now - self._t0,
            mean_run_s=mean,
            eta_s=estimate_eta(
                mean,
                pending,
                [now - t for t in self._started.values()],
                parallel=self._max_running,
                budget_flops=self.budget_flops,
                flops_done=self._flops - self.flops_before,
                done=self._done,
                done_here=self._done - self._skipped,
            ),
            grid_flops=self.grid_flops,
            flops_before=self.flops_before,
        )


class LiveView:
    """Scheduler-event and refit callback that redraws a status block in place.

    Use it as ``on_event`` (``view(event)``) and ``on_fit`` (``view.on_fit(state)``) of
    :func:`orchestrator.study.run_study`, then call :meth:`close` once to draw the final state.
    Redraws happen at most once per ``min_interval_s`` (pass ``tick_s`` to also redraw on a timer
    so that the clock moves while long runs train), and only from the first event on, so that
    the start-up messages of Ray and Optuna are printed before the block rather than through it;
    ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        runs: Sequence[PlannedRun],
        *,
        title: str = "",
        budget_flops: float | None = None,
        grid_flops: float | None = None,
        stream: TextIO | None = None,
        min_interval_s: float = 0.25,
        tick_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
    ) -> None:
        self.total = len(runs)
        self.title = title
        self.tally = RunTally(self.total, budget_flops=budget_flops, grid_flops=grid_flops, clock=clock)
        self.stream = stream or sys.stdout
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.width = width
        self.fits: dict[str, RefitState] = {}
        self.selection: SelectionView | None = None
        self.redraws = 0
        self._last_draw = -float("inf")
        self._drawn_lines = 0
        self._lock = threading.RLock()
        self._closed = False
        self._active = False  # nothing is drawn before the first event (start-up logs go first)
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if tick_s is not None:
            self._ticker = threading.Thread(
                target=self._tick, args=(tick_s,), name="isoflop-live", daemon=True
            )
            self._ticker.start()

    # -- callbacks -------------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """Record one scheduler event and redraw if the last redraw is old enough."""
        with self._lock:
            self._active = True
            key = event.run.spec.run_key
            self.tally.record(event)
            if event.kind == "pending":
                plan = event.run.plan
                self._print_above(f"PENDING  N={plan.n_params:.3g} D={plan.tokens:.3g} ({key[:8]}): {_first_line(event.error)}")
            elif event.kind in ("fail", "retry"):
                error = _first_line(event.error)
                verb = "FAILED  " if event.kind == "fail" else "retrying"
                plan = event.run.plan
                self._print_above(
                    f"{verb} N={plan.n_params:.3g} D={plan.tokens:.3g} (attempt {event.attempt}, {key[:8]}): {error}"
                )
            self._maybe_draw(self.clock())

    def on_fit(self, state: RefitState) -> None:
        """Record the latest fit of one law and redraw if the last redraw is old enough."""
        with self._lock:
            self._active = True
            self.fits[state.law] = state
            self._maybe_draw(self.clock())

    def on_selection(self, view: SelectionView) -> None:
        """Record the budgeted selection's state (spent, estimates, next choices) and redraw."""
        with self._lock:
            self._active = True
            self.selection = view
            self.tally.flops_before = view.metrics.get("selection.prior_flops", 0.0)
            self._maybe_draw(self.clock())

    def close(self) -> None:
        """Stop the timer and draw the final state (left on screen)."""
        with self._lock:
            self._closed = True
            self._draw(self.clock())
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2.0)

    # -- state -----------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The counts, FLOPs and times as of now."""
        with self._lock:
            return self.tally.snapshot()

    # -- drawing ---------------------------------------------------------------------------------

    def lines(self) -> list[str]:
        """The block's lines for the current state."""
        return block_lines(
            self.title,
            self.snapshot(),
            fits=[fit_summary(state) for _, state in sorted(self.fits.items())],
            selection=self.selection.summary() if self.selection is not None else None,
            last_error=self.tally.last_error,
            final=self._closed,
        )

    def _maybe_draw(self, now: float) -> None:
        if self._active and not self._closed and now - self._last_draw >= self.min_interval_s:
            self._draw(now)

    def _draw(self, now: float) -> None:
        width = self.width or shutil.get_terminal_size((120, 24)).columns
        text = [piece for line in self.lines() for piece in _wrap(line, width)]
        self._write(self._erase() + "".join(f"{_ERASE_LINE}{line}\n" for line in text))
        self._drawn_lines = len(text)
        self._last_draw = now
        self.redraws += 1

    def _erase(self) -> str:
        return (_UP.format(n=self._drawn_lines) if self._drawn_lines else "") + _ERASE_DOWN

    def _print_above(self, line: str) -> None:
        """A permanent line in the scrollback; the block is redrawn below it at once."""
        self._write(self._erase() + line + "\n")
        self._drawn_lines = 0
        self._last_draw = -float("inf")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _tick(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            with self._lock:
                if self._closed:
                    return
                self._maybe_draw(self.clock())


def estimate_eta(
    mean: float | None,
    pending: int,
    running_for: Sequence[float],
    *,
    parallel: int,
    budget_flops: float | None = None,
    flops_done: float = 0.0,
    done: int = 0,
    done_here: int = 0,
) -> float | None:
    """Seconds left: the runs left, each taking the mean run time, ``parallel`` at a time.

    Runs in flight (``running_for``: how long each has run) count as having their mean duration
    minus what they already ran. Under a budget the runs left are estimated from the FLOPs left
    and the mean FLOPs of a done run (once runs of this invocation, ``done_here``, finished).
    """
    if mean is None:
        return None
    left = pending
    if budget_flops is not None:
        per_run = flops_done / done if done else None
        if per_run and done_here:
            in_flight_flops = per_run * len(running_for)
            left = min(pending, max(int(round((budget_flops - flops_done - in_flight_flops) / per_run)), 0))
    in_flight = max((max(mean - t, 0.0) for t in running_for), default=0.0)
    return in_flight + mean * left / max(parallel, 1)


def block_lines(
    title: str,
    s: Snapshot,
    *,
    fits: Sequence[str] = (),
    selection: str | None = None,
    last_error: str | None = None,
    final: bool = False,
) -> list[str]:
    """The status block: runs by state, FLOPs (against the budget), times, one line per law fit
    and the selection's state. The live view draws it; ``isoflop status`` prints it from the store."""
    head = f"isoflop: {title}  " if title else "isoflop: "
    waiting = f"{s.pending} candidates left" if s.budget_flops is not None else f"{s.pending} pending"
    runs = (
        f"{head}runs {s.done + s.failed}/{s.total}: {waiting}, {s.running} running, "
        f"{s.done} done"
        + (f" ({s.skipped} already)" if s.skipped else "")
        + f", {s.failed} failed"
        + (f", {s.retries} retried" if s.retries else "")
    )
    out = [runs, f"  {spend_line(s, final=final)}"]
    out += [f"  {line}" for line in fits]
    if selection:
        out.append(f"  {selection}")
    if last_error and s.failed:
        out.append(f"  last failure: {last_error}")
    return out


def spend_line(s: Snapshot, *, final: bool = False) -> str:
    """FLOPs spent (against the budget, or the grid's FLOPs), time elapsed, the mean run time and,
    unless ``final``, the estimated time left."""
    flops = f"FLOPs {s.flops_done:.3g}"
    if s.budget_fraction is not None:
        before = f", {s.flops_before:.3g} of them before the selection" if s.flops_before > 0 else ""
        flops += f" of budget {s.budget_flops:.3g} ({100 * s.budget_fraction:.1f}%{before})"
    elif s.grid_flops:
        flops += f" of {s.grid_flops:.3g} for the grid ({100 * s.flops_done / s.grid_flops:.1f}%)"
    timing = f"  elapsed {duration(s.elapsed_s)}"
    if s.mean_run_s is not None:
        timing += f", mean run {s.mean_run_s:.1f}s"
    timing += f", ETA {duration(s.eta_s)}" if s.eta_s is not None and not final else ""
    return flops + timing


class PlainProgress:
    """The plain one-line-per-event output behind the same interface as :class:`LiveView`.

    Besides a line per event, a line with the FLOPs spent and the time left (:func:`spend_line`)
    follows a finished, skipped or failed run at most every ``every_s`` seconds (a log of a long
    study then says how far it is without a line per run to add up), and once more at
    :meth:`close` with the final totals.
    """

    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        *,
        budget_flops: float | None = None,
        grid_flops: float | None = None,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.events = Progress(total=total, stream=stream)
        self.fits = FitPrinter(stream=stream)
        self.tally = RunTally(total, budget_flops=budget_flops, grid_flops=grid_flops, clock=clock)
        self.every_s = every_s
        self.clock = clock
        self._spend_at = -float("inf")
        self._unreported = False  # a run ended since the last spend line
        self._selection_line = ""
        self._selection_at = -float("inf")

    def __call__(self, event: Event) -> None:
        self.events(event)
        self.tally.record(event)
        if event.kind in ("finish", "skip", "fail"):
            self._unreported = True
            if self.clock() - self._spend_at >= self.every_s:
                self._print_spend(final=False)

    def _print_spend(self, *, final: bool) -> None:
        print(f"          {spend_line(self.tally.snapshot(), final=final)}", file=self.events.stream, flush=True)
        self._spend_at, self._unreported = self.clock(), False

    def on_fit(self, state: RefitState) -> None:
        self.fits(state)

    def on_selection(self, view: SelectionView) -> None:
        """A line per change of the selection's plan or estimates, at most every 10 s."""
        self.tally.flops_before = view.metrics.get("selection.prior_flops", 0.0)
        line = view.summary()
        now = time.monotonic()
        if line != self._selection_line and now - self._selection_at >= 10.0:
            print(f"          {line}", file=self.events.stream, flush=True)
            self._selection_line, self._selection_at = line, now

    def close(self) -> None:
        """The final FLOPs and times, unless the last line already gave them."""
        if self._unreported:
            self._print_spend(final=True)


def use_live(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True on a terminal unless ``ISOFLOP_PLAIN`` is set to a non-empty value other than 0."""
    env = os.environ if environ is None else environ
    if env.get(PLAIN_ENV, "") not in ("", "0"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def make_progress(
    study: object,
    runs: Sequence[PlannedRun],
    stream: TextIO | None = None,
    environ: dict[str, str] | None = None,
) -> LiveView | PlainProgress:
    """The live view on a terminal, the plain lines otherwise."""
    out = stream or sys.stdout
    if not use_live(out, environ):
        return PlainProgress(
            total=len(runs),
            stream=out,
            budget_flops=selection_budget_of(study, runs),
            grid_flops=grid_flops_of(runs),
        )
    return LiveView(
        runs,
        title=str(getattr(study, "name", "")),
        budget_flops=selection_budget_of(study, runs),
        grid_flops=grid_flops_of(runs),
        stream=out,
        tick_s=1.0,
    )


def _first_line(text: str | None) -> str:
    return (text or "unknown error").strip().splitlines()[0][:200]


_CONTINUATION = "      "  # the indent of a long line's continuation lines
# before a parameter of a law's fit line ("runs: E=...", "..., alpha=0.34 [0.31, 0.36], beta=..."),
# never inside an interval, so a parameter keeps its value and interval together
_BETWEEN_PARAMS = re.compile(r"(?<=[,:]) (?=[^\s,\[\]]+=)")


def _wrap(line: str, width: int) -> list[str]:
    """A line too long for the terminal, on indented continuation lines rather than cut (a law's
    parameters with their intervals run past 120 columns). Each piece stays shorter than
    ``width``: a line the terminal wrapped itself would take two rows where the redraw counts
    one. Breaks fall between parameters where they can, else at spaces, else anywhere."""
    if len(line) < width:
        return [line]
    limit = max(width - 1, 1)
    indent = _CONTINUATION if limit > 3 * len(_CONTINUATION) else ""
    packed: list[str] = []
    for piece in _BETWEEN_PARAMS.split(line):
        if packed and len(packed[-1]) + 1 + len(piece) <= limit:
            packed[-1] += " " + piece
        else:
            packed.append(indent + piece if packed else piece)
    out: list[str] = []
    for piece in packed:
        if len(piece) <= limit:
            out.append(piece)
        else:  # one parameter (or a title) longer than a line
            out += textwrap.wrap(
                piece, limit, subsequent_indent=indent, break_on_hyphens=False, drop_whitespace=True
            )
    return out


def duration(seconds: float | None) -> str:
    """``seconds`` as m:ss, or h:mm:ss from an hour on ("-" when unknown)."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
