"""Study figures: each axis of a study gets its figure, and only when the runs have that axis."""

from __future__ import annotations

import numpy as np

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
