"""Plain progress lines for ``isoflop run`` (one line per event, safe for logs and pipes)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from orchestrator.refit import RefitState, fit_summary
from orchestrator.scheduler import Event


class Progress:
    """Prints one line per scheduler event: ``[done/total] what  N=.. D=.. loss=..``."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stdout
        self.started: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        plan = event.run.plan
        key = event.run.spec.run_key
        where = f"N={plan.n_params:.3g} D={plan.tokens:.3g} C={plan.flops:.3g}"
        if event.kind == "start":
            self.started[key] = time.monotonic()
            attempt = f" (attempt {event.attempt})" if event.attempt > 1 else ""
            line = f"start     {where}{attempt}"
        elif event.kind in ("finish", "skip"):
            self.done += 1
            loss = event.finished.final_loss if event.finished else float("nan")
            took = time.monotonic() - self.started.pop(key, time.monotonic())
            verb = "finished" if event.kind == "finish" else "skipped "
            line = f"{verb}  {where} loss={loss:.4f}" + (f" in {took:.1f}s" if event.kind == "finish" else " (already done)")
        elif event.kind == "retry":
            line = f"retrying  {where}: {_first_line(event.error)}"
        elif event.kind == "pending":
            line = f"PENDING   {where}: {_first_line(event.error)}"
        else:
            self.done += 1
            line = f"FAILED    {where}: {_first_line(event.error)}"
        print(f"[{self.done:>{len(str(self.total))}}/{self.total}] {line}  ({key[:8]})", file=self.stream, flush=True)


def _first_line(text: str | None) -> str:
    return (text or "unknown error").strip().splitlines()[0][:200]


class FitPrinter:
    """Prints the online fit of each law at most every ``every_s`` seconds."""

    def __init__(self, every_s: float = 10.0, stream: TextIO | None = None) -> None:
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self._last: dict[str, float] = {}

    def __call__(self, state: RefitState) -> None:
        now = time.monotonic()
        if state.fit is None or now - self._last.get(state.law, -1e9) < self.every_s:
            return
        self._last[state.law] = now
        print(f"          {fit_summary(state)}", file=self.stream, flush=True)
