"""Study figures: each axis of a study gets its figure, and only when the runs have that axis."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator import plots
from orchestrator.tracking import FinishedRun


def _run(i: int, loss: float, **inputs: float) -> FinishedRun:
    metrics = {k: v for k, v in inputs.items() if k.startswith("eval_loss/")}
    law_inputs = {k: v for k, v in inputs.items() if not k.startswith("eval_loss/")}
    return FinishedRun(run_key=f"r{i}", run_id=f"id{i}", inputs={"C": 1e10 * (i + 1), **law_inputs}, final_loss=loss, metrics=metrics)


def _names(runs) -> set[str]:
    figures = plots.study_figures(runs, {})
    try:
        return set(figures)
    finally:
        plots.close(figures)


def test_plain_runs_get_only_the_general_figures() -> None:
    runs = [_run(i, 3.0 - 0.1 * i, N=1e4 * (i + 1), D=1e5) for i in range(4)]
    assert _names(runs) == {"loss_vs_compute.png", "isoflop_curves.png"}


def test_mixture_sparsity_and_distillation_runs_get_their_figures() -> None:
    rng = np.random.default_rng(0)
    mixture = []
    for i, h in enumerate((0.2, 0.5, 0.8)):
        mixture.append(_run(i, 3.0, N=1e4, D=1e5, h1=h, h2=1 - h, **{"eval_loss/code": 3 - h, "eval_loss/prose": 2 + h}))
    assert "domain_losses.png" in _names(mixture)
    figures = plots.study_figures(mixture, {})
    try:
        axes = figures["domain_losses.png"].axes
        assert [ax.get_title() for ax in axes] == ["code", "prose"]
        # the code panel plots the code loss against h1
        x, y = axes[0].collections[0].get_offsets().T
        assert list(x) == [0.2, 0.5, 0.8] and np.allclose(y, [2.8, 2.5, 2.2])
    finally:
        plots.close(figures)
    sparse = [_run(i, 3.0 - s, N=1e4, D=1e5, S=s) for i, s in enumerate((0.0, 0.5, 0.75))]
    assert "loss_vs_sparsity.png" in _names(sparse)
    dense = [_run(i, 3.0, N=1e4, D=1e5, S=0.0) for i in range(3)]
    assert "loss_vs_sparsity.png" not in _names(dense)
    students = [_run(i, 3.0 + rng.normal(), N=1e4, D=1e5, L_T=2.5 + 0.1 * i) for i in range(3)]
    assert "student_vs_teacher.png" in _names(students)


def test_trajectories_come_from_every_logged_fit_with_their_intervals() -> None:
    from orchestrator.tracking import MemoryTracker

    tracker = MemoryTracker()
    for step, alpha in ((6, 0.5), (9, 0.4), (12, 0.35)):
        doc = {"params": {"E": 1.8, "alpha": alpha}, "intervals": {"E": [1.7, 1.9], "alpha": [alpha - 0.1, alpha + 0.1]}}
        tracker.log_fit("chinchilla", doc, step=step)
    history = tracker.fit_history("chinchilla")
    assert sorted(history) == [6, 9, 12] and history[9]["law.chinchilla.alpha.lo"] == 0.4 - 0.1
    fig = plots.parameter_trajectories("chinchilla", history)
    try:
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in axes] == ["E", "alpha"]
        x, y = axes[1].lines[0].get_data()
        assert list(x) == [6, 9, 12] and np.allclose(y, [0.5, 0.4, 0.35])
        band = axes[1].collections[0].get_paths()[0].vertices[:, 1]  # the interval is drawn
        assert np.isclose(band.min(), 0.25) and np.isclose(band.max(), 0.6)
    finally:
        plots.close({"t": fig})


def test_loss_against_compute_draws_the_law_along_each_size_and_the_frontier() -> None:
    import laws

    truth = laws.get_law("chinchilla")
    params = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37}
    runs = []
    for i, (n, d) in enumerate((n, d) for n in (1e7, 1e8) for d in (1e9, 1e10, 1e11)):
        runs.append(_run(i, float(truth.predict(params, N=n, D=d)), N=n, D=d))
    # FLOPs under a convention other than 6ND (attention included): the curves follow the runs
    runs = [FinishedRun(run_key=r.run_key, run_id=r.run_id, inputs={**r.inputs, "C": 7.5 * r.inputs["N"] * r.inputs["D"]},
                        final_loss=r.final_loss) for r in runs]
    fit_ = laws.fit(truth, {"N": _col(runs, "N"), "D": _col(runs, "D")}, np.array([r.final_loss for r in runs]))
    fig = plots.loss_vs_compute(runs, fit_, budgets=[1e22])
    try:
        ax = fig.axes[0]
        assert len(ax.lines) == 2 + 1 + 1  # one curve per size, the frontier, the budget's star
        x, y = ax.lines[0].get_data()  # the smallest size's curve passes through its runs
        for r in runs[:3]:
            assert np.interp(np.log(r.inputs["C"]), np.log(x), y) == pytest.approx(r.final_loss, rel=1e-3)
    finally:
        plots.close({"f": fig})


def _col(runs, key: str) -> np.ndarray:  # noqa: ANN001
    return np.array([r.inputs[key] for r in runs])


def _runs_at_budgets(per_token: float) -> list[FinishedRun]:
    """Runs along three isoFLOP budgets whose FLOPs count ``per_token`` * N per token, with the
    losses of a known Chinchilla law."""
    import laws

    truth = laws.get_law("chinchilla")
    params = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37}
    runs = []
    for budget in (1e18, 1e19, 1e20):
        for n in np.logspace(np.log10(budget) / 2 - 2.5, np.log10(budget) / 2 - 0.5, 5):
            d = budget / (per_token * n)
            loss = float(truth.predict(params, N=n, D=d))
            runs.append(FinishedRun(run_key=f"r{len(runs)}", run_id=f"id{len(runs)}",
                                    inputs={"N": n, "D": d, "C": budget}, final_loss=loss))
    return runs


def test_isoflop_curves_follow_runs_that_count_more_than_6n_flops_per_token() -> None:
    import laws

    runs = _runs_at_budgets(per_token=8.0)  # attention included: more than 6 N per token
    fit_ = laws.fit(laws.get_law("chinchilla"), {"N": _col(runs, "N"), "D": _col(runs, "D")},
                    np.array([r.final_loss for r in runs]))
    fig = plots.isoflop_curves(runs, fit_)
    try:
        ax = fig.axes[0]
        assert len(ax.lines) == 3
        for line, budget in zip(ax.lines, (1e18, 1e19, 1e20), strict=True):
            x, y = line.get_data()
            at = [r for r in runs if r.inputs["C"] == budget]
            # the law passes through every run of its budget (at D = C / 6N it would not: each
            # run would be drawn with a third more tokens, so a lower loss, than it trained on)
            for r in at:
                assert np.interp(np.log(r.inputs["N"]), np.log(x), y) == pytest.approx(r.final_loss, rel=1e-3)
            # and its minimum sits among the runs' sizes, where the runs' own minimum is
            best = min(at, key=lambda r: r.final_loss).inputs["N"]
            assert abs(np.log(x[np.argmin(y)] / best)) < np.log(10) / 4
    finally:
        plots.close({"f": fig})


def test_flops_per_token_follows_each_size_and_holds_beyond_them() -> None:
    runs = [_run(0, 3.0, N=1e6, D=1e8), _run(1, 3.0, N=1e8, D=1e8)]
    runs = [FinishedRun(run_key=r.run_key, run_id=r.run_id, inputs={**r.inputs, "C": k * r.inputs["N"] * 1e8},
                        final_loss=3.0) for r, k in zip(runs, (8.0, 6.5), strict=True)]
    per_token = plots.flops_per_token(runs)
    assert per_token(np.array([1e6, 1e8])) == pytest.approx([8.0e6, 6.5e8])
    assert per_token(np.array([1e7]))[0] / 1e7 == pytest.approx(7.25)  # halfway in log N
    assert per_token(np.array([1e4, 1e10])) == pytest.approx([8.0e4, 6.5e10])
    assert plots.flops_per_token([])(np.array([2e6])) == pytest.approx([1.2e7])


def test_trajectories_of_parameters_spanning_decades_are_drawn_on_a_log_axis() -> None:
    history = {
        step: {
            "law.c.A": a, "law.c.A.lo": a / 20, "law.c.A.hi": a * 20,
            "law.c.alpha": 0.34, "law.c.alpha.lo": 0.3, "law.c.alpha.hi": 0.38,
            "law.c.shift": 0.1, "law.c.shift.lo": -0.5, "law.c.shift.hi": 2.0,
        }
        for step, a in ((5, 90.0), (10, 400.0), (15, 480.0))
    }
    fig = plots.parameter_trajectories("c", history)
    try:
        scales = {ax.get_title(): ax.get_yscale() for ax in fig.axes if ax.get_visible()}
        assert scales == {"A": "log", "alpha": "linear", "shift": "linear"}
    finally:
        plots.close({"t": fig})


def test_an_unbounded_interval_does_not_break_a_trajectory_or_the_study() -> None:
    """An early fit whose interval has no upper end (inf) on a log axis broke the tick labels
    when the figure was saved, and the study with it (the example study of 300 runs failed)."""
    import io

    from orchestrator.study import FigureLogger

    history = {
        step: {"law.c.A": a, "law.c.A.lo": a / 20, "law.c.A.hi": hi, "law.c.alpha": 0.34, "law.c.alpha.lo": 0.3,
               "law.c.alpha.hi": 0.38}
        for step, a, hi in ((5, 90.0, float("inf")), (10, 400.0, 8000.0), (15, 480.0, 1e308))
    }
    fig = plots.parameter_trajectories("c", history)
    try:
        fig.savefig(io.BytesIO(), format="png")
    finally:
        plots.close({"t": fig})

    class Broken:
        def fit_history(self, name):  # noqa: ANN001, ANN202
            return {}

        def log_figures(self, figures):  # noqa: ANN001, ANN202
            raise OverflowError("cannot convert float infinity to integer")

    class Refitter:
        updates, laws = 1, {}
        runs = [_run(i, 3.0 - 0.1 * i, N=1e6 * (i + 1), D=1e8) for i in range(4)]

    with pytest.warns(RuntimeWarning, match="the study's figures were not drawn \\(OverflowError"):
        FigureLogger(Broken(), Refitter(), budgets=[]).log({})  # type: ignore[arg-type]
