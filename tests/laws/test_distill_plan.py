"""Distil or train supervised (Busbridge et al. 2025): the paper's findings, reproduced
with its published coefficients."""

from __future__ import annotations

import pytest

from laws.chinchilla import BUSBRIDGE_SUPERVISED_PARAMS as SUPERVISED
from laws.distill_plan import SCENARIOS, plan_distillation
from laws.distillation import BUSBRIDGE_DISTILLATION_PARAMS as DISTILLATION


def plan(scenario: str, n_s: float = 546e6, budget: float = 1e20):
    return plan_distillation(DISTILLATION, SUPERVISED, N_S=n_s, budget=budget, scenario=scenario)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_budget_is_spent_exactly(scenario):
    p = plan(scenario)
    d_l, d_p = SCENARIOS[scenario]
    assert (p.D_T is None) == (d_p == 0)
    assert (p.N_T is None) == (scenario == "best_case")
    flops = 6 * p.N_S * p.D_S + (2 * p.N_T * (d_l * p.D_S + d_p * 3 * (p.D_T or 0.0)) if p.N_T else 0.0)
    assert flops == pytest.approx(p.C, rel=1e-9)
    assert p.supervised_D == pytest.approx(p.C / (6 * p.N_S))


def test_a_free_teacher_helps_below_a_compute_threshold():
    # "distillation beats supervised training only when a teacher already exists ... and the
    # student's compute is below a threshold"
    assert plan("best_case", budget=1e19).distil
    assert plan("teacher_inference", budget=1e19).distil
    assert not plan("best_case", budget=1e23).distil


def test_supervised_wins_when_the_teacher_must_be_trained():
    # "with one student whose teacher must be trained, supervised training wins"
    for budget in (1e19, 1e21, 1e22):
        assert not plan("teacher_pretraining_inference", budget=budget).distil, budget


def test_costlier_scenarios_are_never_better():
    losses = {s: plan(s).student_loss for s in SCENARIOS}
    assert losses["best_case"] <= losses["teacher_inference"] + 1e-9
    assert losses["teacher_pretraining"] <= losses["teacher_pretraining_inference"] + 1e-9


def test_unknown_scenario():
    with pytest.raises(ValueError, match="valid scenarios: best_case"):
        plan("cheap")
