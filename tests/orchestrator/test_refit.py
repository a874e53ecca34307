"""The online refitter: warm starts, coalesced background refits, degenerate fits."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import laws
from orchestrator.refit import OnlineRefitter, RefitState
from orchestrator.tracking import FinishedRun, MemoryTracker
from trainers.config import REPLICATION_CHINCHILLA


def _runs(n: int, seed: int = 0) -> list[FinishedRun]:
    rng = np.random.default_rng(seed)
    law = laws.get_law("chinchilla")
    out = []
    for i in range(n):
        size, tokens = 10 ** rng.uniform(7, 9), 10 ** rng.uniform(9, 11)
        loss = float(law.predict(REPLICATION_CHINCHILLA, N=size, D=tokens)) * float(np.exp(0.01 * rng.normal()))
        out.append(FinishedRun(run_key=f"r{i}", run_id=f"id{i}", inputs={"N": size, "D": tokens, "C": 6 * size * tokens},
                               final_loss=loss))
    return out


def test_background_refits_coalesce_and_drain_sees_every_run() -> None:
    tracker = MemoryTracker()
    refit = OnlineRefitter(["chinchilla"], tracker=tracker, min_interval_s=0.0)
    runs = _runs(40)
    for i in range(0, 40, 4):
        refit.submit(runs[i : i + 4])
        refit.poll()
    states = refit.drain()
    refit.close()
    assert states["chinchilla"].n_runs == 40
    steps = [step for _, step, _ in tracker.fits]
    assert steps == sorted(steps) and steps[-1] == 40
    assert len(steps) < 10, "updates that arrive while a refit runs are coalesced"
    assert states["chinchilla"].fit.params["alpha"] == pytest.approx(0.3473, rel=0.1)


def test_a_degenerate_previous_fit_is_not_used_as_a_warm_start() -> None:
    refit = OnlineRefitter(["chinchilla"], background=False)
    report = laws.FitReport(n_points=5, n_starts=1, n_best=1, best_tol=0.0, grad_norm=0.0, converged=False)
    bad = laws.LawFit(law="chinchilla", params={**REPLICATION_CHINCHILLA, "B": float("inf")}, objective=0.0, report=report)
    refit.states["chinchilla"] = RefitState(law="chinchilla", fit=bad, n_runs=5)
    refit.submit(_runs(12))  # must not raise on the infinite B
    fit = refit.current("chinchilla")
    assert fit is not None and all(np.isfinite(v) for v in fit.params.values())


def test_the_widths_hook_runs_on_each_new_fit_with_its_table() -> None:
    seen = []

    def widths(law, fit_, inputs, loss, groups):  # noqa: ANN001, ANN202 - the refitter's hook
        assert groups is None  # simulated runs have no groups: configurations are resampled
        seen.append((law, len(loss), sorted(inputs)))
        return {"loss@N=1e9": float(len(loss))}

    refit = OnlineRefitter(["chinchilla"], background=False, widths=widths)
    runs = _runs(12)
    refit.submit(runs[:10])
    refit.submit(runs[10:])
    assert seen == [("chinchilla", 10, ["D", "N"]), ("chinchilla", 12, ["D", "N"])]
    assert refit.states["chinchilla"].widths == {"loss@N=1e9": 12.0}


def test_a_fit_summary_counts_the_runs_the_law_is_fitted_to() -> None:
    """A distillation study's supervised law is fitted to its teachers: the live view said
    "law supervised on 24 runs" (every finished run) where the final line said 8."""
    from orchestrator.refit import fit_summary

    runs = _runs(8)
    fit_ = laws.fit("chinchilla", {"N": np.array([r.inputs["N"] for r in runs]), "D": np.array([r.inputs["D"] for r in runs])},
                    np.array([r.final_loss for r in runs]))
    assert fit_summary(RefitState(law="supervised", fit=fit_, n_runs=24)).startswith("law supervised on 8 runs: ")


def test_a_slow_widths_hook_does_not_hold_up_the_fits() -> None:
    """The stopping bootstrap of a mixture law takes 20 s and more: it ran on the refit thread
    before the fit was published, so the criterion waiting for that fit waited for it too. The
    fits come out at once; widths follow from their own thread, coalesced to the latest fit."""
    release, started = threading.Event(), threading.Event()
    asked: list[int] = []
    reported: list[tuple[int, dict]] = []

    def widths(law, fit_, inputs, loss, groups):  # noqa: ANN001, ANN202 - the refitter's hook
        asked.append(len(loss))
        started.set()
        assert release.wait(30)
        return {"loss@N=1e9": float(len(loss))}

    refit = OnlineRefitter(["chinchilla"], min_interval_s=0.0, widths=widths,
                           on_widths=lambda state: reported.append((state.n_runs, dict(state.widths))))
    runs = _runs(30)
    try:
        for n in (10, 20, 30):
            refit.submit(runs[n - 10 : n])
            states = refit.drain()  # every fit, while the first widths are still being computed
            assert states["chinchilla"].n_runs == n and states["chinchilla"].fit is not None
            assert states["chinchilla"].widths is None
        assert started.wait(30) and asked == [10]
        assert refit.submitted == 30 and not refit.answered("chinchilla", 10)
        release.set()
        deadline = time.monotonic() + 30
        while not refit.answered("chinchilla", 30) and time.monotonic() < deadline:
            refit.poll()
            time.sleep(0.01)
    finally:
        release.set()
        refit.close()
    # the fit on 20 runs was superseded before its widths could start: only 10 and 30 are asked
    assert asked == [10, 30]
    assert reported == [(10, {"loss@N=1e9": 10.0}), (30, {"loss@N=1e9": 30.0})]
    assert refit.states["chinchilla"].widths == {"loss@N=1e9": 30.0}
    assert refit.answered("chinchilla", 30) and not refit.answered("chinchilla", 31)


def test_a_law_that_cannot_be_fitted_yet_is_answered_for_without_widths() -> None:
    """A selection with a tolerance waits for the widths of a fit of the runs finished when it
    last proposed: a law with too few runs to fit has no fit and no widths, and must not leave
    it waiting."""
    refit = OnlineRefitter(["chinchilla"], background=False, widths=lambda *args: {"x": 1.0})
    refit.submit(_runs(2))
    assert refit.states["chinchilla"].fit is None and refit.answered("chinchilla", 2)


def test_the_widths_hook_gets_the_runs_groups() -> None:
    """Runs with resampling groups (a replayed table's group column): the stopping rule's
    bootstrap resamples the groups, as the exported one does."""
    from dataclasses import replace

    seen = []

    def widths(law, fit_, inputs, loss, groups):  # noqa: ANN001, ANN202 - the refitter's hook
        seen.append(groups)
        return {"x": 1.0}

    runs = [replace(r, group=f"family-{i % 3}") for i, r in enumerate(_runs(12))]
    refit = OnlineRefitter(["chinchilla"], background=False, widths=widths)
    refit.submit(runs)
    refit.poll()
    (groups,) = seen
    assert sorted(set(groups)) == ["family-0", "family-1", "family-2"] and len(groups) == 12


def test_warm_refits_bound_their_polish_and_full_refits_do_not(monkeypatch) -> None:
    """A warm refit gives its unconverged best starts WARM_POLISH rounds (the default 10 made a
    distillation update on 300 runs take 2.3 s); the first fit and the periodic full refits keep
    the whole polish, so the online fit cannot stay stuck short of an optimum."""
    import orchestrator.refit as refit_module

    calls = []
    fit = laws.fit

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append((kwargs.get("init") is not None, kwargs.get("polish")))
        return fit(*args, **kwargs)

    monkeypatch.setattr(refit_module.laws, "fit", recording)
    refit = OnlineRefitter(["chinchilla"], background=False, full_every=3)
    runs = _runs(16)
    for i in range(12, 16):
        refit.submit(runs[: i + 1])
    # update 0: cold (no init), 1 and 2: warm, 3: full (cold fit, then warm from its optimum)
    assert calls == [(False, None), (True, refit_module.WARM_POLISH), (True, refit_module.WARM_POLISH),
                     (False, None), (True, refit_module.WARM_POLISH)]
    import sys

    assert refit_module.WARM_POLISH < sys.modules["laws.fit"].POLISH_FACTOR  # bounded below a full fit's
