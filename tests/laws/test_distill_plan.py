"""Distil or train supervised (Busbridge et al. 2025): the paper's findings, reproduced
with its published coefficients."""

from __future__ import annotations

import pytest
from scipy import optimize

import laws
from laws.chinchilla import BUSBRIDGE_SUPERVISED_PARAMS as SUPERVISED
from laws.chinchilla import HOFFMANN_PARAMS
from laws.distill_plan import PAPER_RANGE, SCENARIOS, FittedRange, plan_distillation, recorded_range
from laws.distillation import BUSBRIDGE_DISTILLATION_PARAMS as DISTILLATION
from laws.distillation import Distillation


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


# -- compute split ------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_compute_split_is_eq9_term_by_term(scenario):
    """Busbridge et al. 2025, Eq. 9 with F(N) = 2N: 3F(N_S)D_S + F(N_T)(dL D_S + dP 3 D_T)."""
    p = plan(scenario, budget=1e21)
    d_l, d_p = SCENARIOS[scenario]
    split = p.compute_split
    assert split["student"]["flops"] == pytest.approx(3 * 2 * p.N_S * p.D_S, rel=1e-12)
    n_t = p.N_T or 0.0
    assert split["teacher_inference"]["flops"] == pytest.approx(d_l * 2 * n_t * p.D_S, rel=1e-12, abs=0)
    assert split["teacher_pretraining"]["flops"] == pytest.approx(d_p * 3 * 2 * n_t * (p.D_T or 0.0), rel=1e-12, abs=0)
    assert sum(v["flops"] for v in split.values()) == pytest.approx(p.C, rel=1e-9)
    assert sum(v["share"] for v in split.values()) == pytest.approx(1.0, rel=1e-9)
    if d_p:  # a teacher worth distilling from costs a real part of the budget
        assert 0.05 < split["teacher_pretraining"]["share"] < 0.95
    doc = p.to_dict()
    assert doc["decision"] == ("distil" if p.distil else "supervised")
    assert doc["compute_split"] == split


# -- the paper's findings over a range of students and budgets ---------------------------------
STUDENTS = (143e6, 546e6, 1.82e9, 7.75e9, 12.6e9)
BUDGETS = tuple(10.0 ** (k / 2) for k in range(36, 49))  # 1e18 to 1e24, half-decades


def in_range(p) -> bool:
    return not [w for w in p.warnings if "although the teacher must be trained" not in w]


def test_supervised_wins_with_a_teacher_to_train_wherever_the_law_is_not_extrapolated():
    """Busbridge et al. 2025: with one student whose teacher must be trained (and run on the
    student's tokens), supervised training is at least as good. The published law agrees everywhere
    inside the range of the paper's runs; where it predicts otherwise, the plan says that it
    extrapolates."""
    inside = dict.fromkeys(STUDENTS, 0)
    for n_s in STUDENTS:
        for c in BUDGETS:
            p = plan("teacher_pretraining_inference", n_s=n_s, budget=c)
            if in_range(p):
                inside[n_s] += 1
                assert not p.distil and not p.warnings, (n_s, c)
            elif p.distil:
                assert any("the law is extrapolated" in w or "than any run the law was fitted to" in w
                           for w in p.warnings)
                assert any("although the teacher must be trained" in w for w in p.warnings)
    assert min(inside.values()) >= 2, inside  # every student size has budgets inside the range


def test_with_free_teacher_inference_a_trained_teacher_gains_little_inside_the_range():
    """dL = 0, dP = 1: inside the range the law's gain from distillation stays below 0.01 nats
    (0.007 at 143M, C = 3e20), and the plan reports it."""
    for n_s in STUDENTS:
        for c in BUDGETS:
            p = plan("teacher_pretraining", n_s=n_s, budget=c)
            if in_range(p):
                assert p.student_loss > p.supervised_loss - 0.01, (n_s, c)
                assert p.distil == bool(p.warnings)
    p = plan("teacher_pretraining", n_s=143e6, budget=10**20.5)
    assert p.distil and in_range(p)
    assert any("distillation wins by 0.007 nats" in w for w in p.warnings)


def test_extrapolated_plans_that_prefer_distillation_say_why():
    # 143M at 1e22: trillions of tokens, beyond the paper's 512B
    p = plan("teacher_pretraining_inference", n_s=143e6, budget=1e22)
    assert p.distil and p.D_S > 512e9 and p.supervised_D > 512e9
    assert any(w.startswith("the student (D_S) trains on 4.91T tokens, more than any run the law was fitted to "
                            "(at most 512B)") for w in p.warnings)
    # 1.82B at 1e19: the supervised student sees half a token per parameter, 6x the optimal size
    p = plan("teacher_pretraining_inference", n_s=1.82e9, budget=1e19)
    assert p.distil
    assert p.supervised_D / p.N_S == pytest.approx(0.5, rel=0.01)
    assert any(w.startswith("the supervised baseline trains on 0.5 tokens per parameter, fewer than 1 (N = 1.82B")
               for w in p.warnings)
    assert not plan("teacher_pretraining_inference", n_s=1.82e9, budget=1e21).warnings
    assert ("the student size N_S = 50M is outside the range of students the law was fitted to (143M to 12.6B "
            "parameters)") in plan("best_case", n_s=50e6, budget=1e20).warnings


def crossover(n_s: float) -> float:
    """log10 of the budget above which a free teacher no longer helps a student of ``n_s``."""
    def gap(log_c: float) -> float:
        p = plan("best_case", n_s=n_s, budget=10.0**log_c)
        return p.student_loss - p.supervised_loss

    return optimize.brentq(gap, 19.0, 25.0, xtol=1e-3)


def test_the_free_teacher_threshold_grows_with_the_student():
    """A second student size (7.75B): distillation from an existing teacher wins at budgets where
    the 546M student no longer gains, and the threshold grows with N_S (Busbridge et al. 2025)."""
    assert plan("best_case", n_s=7.75e9, budget=1e22).distil
    assert not plan("best_case", n_s=546e6, budget=1e23).distil
    assert not plan("best_case", n_s=7.75e9, budget=1e24).distil
    small, large = crossover(546e6), crossover(7.75e9)
    assert 22.0 < small < large < 24.0


# -- fitted and exported laws -------------------------------------------------------------------
def law_fit(name: str, params: dict[str, float], spec: dict | None = None) -> laws.LawFit:
    report = laws.FitReport(n_points=100, n_starts=1, n_best=1, best_tol=1e-6, grad_norm=0.0, converged=True)
    return laws.LawFit(law=name, params=dict(params), objective=0.0, report=report,
                       law_spec=spec or {"name": name})


def test_fits_entries_and_documents_give_the_same_plan():
    ref = plan("teacher_pretraining_inference", budget=1e21)
    dist = law_fit("distillation", DISTILLATION, Distillation(supervised=SUPERVISED).spec())
    sup = law_fit("chinchilla_gamma", SUPERVISED)
    document = laws.export_document([sup, dist])
    for distillation, supervised in [(dist, sup), (dist, None), (document["laws"][1], None), (document, document)]:
        p = laws.plan_distillation(distillation, supervised, N_S=546e6, budget=1e21,
                                   scenario="teacher_pretraining_inference")
        assert p.student_loss == pytest.approx(ref.student_loss, rel=1e-12)
        assert abs(p.N_T / ref.N_T - 1) < 1e-9
    # the default is the published law
    assert laws.plan_distillation(N_S=546e6, budget=1e21, scenario="teacher_pretraining_inference") == ref


def test_a_chinchilla_supervised_law_has_gamma_one():
    p = laws.plan_distillation(DISTILLATION, law_fit("chinchilla", HOFFMANN_PARAMS), N_S=546e6, budget=1e21,
                               scenario="best_case")
    expected = laws.get_law("chinchilla").predict(HOFFMANN_PARAMS, N=546e6, D=1e21 / (6 * 546e6))
    assert p.supervised_loss == pytest.approx(float(expected), rel=1e-12)
    with pytest.raises(ValueError, match="expected a distillation law, got 'chinchilla'"):
        laws.plan_distillation(law_fit("chinchilla", HOFFMANN_PARAMS), N_S=1e9, budget=1e21, scenario="best_case")
    with pytest.raises(ValueError, match="holds no distillation law"):
        laws.plan_distillation(laws.export_document([law_fit("chinchilla", HOFFMANN_PARAMS)]), N_S=1e9,
                               budget=1e21, scenario="best_case")


@pytest.mark.parametrize(("law", "message"), [
    ({"laws": [{"law": "distillation", "params": {**DISTILLATION, "A": None}}]}, r"laws\[0\]\.params\.A: expected a number, got None"),
    ({"laws": ["chinchilla"]}, r"laws\[0\]: expected a law entry .* got 'chinchilla'"),
    ({"laws": "distillation"}, "laws: expected a list of law entries, got 'distillation'"),
    ({"law": "distillation", "params": [1, 2]}, r"params: expected a mapping of parameter names to numbers, got \[1, 2\]"),
    ({"law": "distillation", "params": {**DISTILLATION, "c0": "abc"}}, "params.c0: expected a number, got 'abc'"),
    ({"law": "distillation", "params": {**DISTILLATION, "c0": float("nan")}}, "params.c0: expected a finite number"),
    ({"law": "distillation", "params": {"A": 1.0}}, r"params: missing distillation parameters \['B', "),
    ({"law": "distillation", "params": DISTILLATION, "law_spec": "distillation"}, "law_spec: expected a mapping"),
    ({"law": "distillation", "params": DISTILLATION, "law_spec": {"name": "distillation", "supervised": [1]}},
     "law_spec.supervised: expected a mapping of parameter names to numbers"),
    ({"laws": [{"law": "distillation", "params": {**DISTILLATION, "d1": 1.2}}], "runs": [{"N": 1e8, "D": "many"}]},
     r"runs\[0\]\.D: expected a number, got 'many'"),
])
def test_a_malformed_law_is_a_value_error_naming_the_key(law, message):
    with pytest.raises(ValueError, match=message):
        laws.plan_distillation(law, N_S=1e9, budget=1e21, scenario="best_case")


# -- the range the law was fitted to ------------------------------------------------------------
OWN = {**DISTILLATION, "d1": 1.2}  # a law other than the published one


def own_document(runs: list[dict] | None) -> dict:
    """An exported document of a distillation law fitted by the user, with ``runs`` as
    ``isoflop export`` writes them (students 1M-100M on up to 2B tokens, teachers up to 300M)."""
    dist = law_fit("distillation", OWN, Distillation(supervised=SUPERVISED).spec())
    document = laws.export_document([law_fit("chinchilla_gamma", SUPERVISED), dist])
    if runs is not None:
        document["runs"] = runs
    return document


OWN_RUNS = [
    *({"run_key": f"s{i}", "run_id": f"s{i}", "N": n, "D": 20 * n, "C": 120 * n * n, "L_T": lt, "loss": 4.0}
      for i, (n, lt) in enumerate([(1e6, 4.0), (1e7, 3.5), (1e8, 3.2)])),
    {"run_key": "t0", "run_id": "t0", "N": 3e8, "D": 6e9, "C": 1.08e19, "loss": 3.2},
]


def test_a_users_law_is_checked_against_the_runs_its_document_records():
    document = own_document(OWN_RUNS)
    assert recorded_range(document) == FittedRange(student_min=1e6, student_max=1e8, teacher_max=3e8,
                                                   tokens_max=6e9, teacher_loss_min=3.2, student_tokens_max=2e9)
    # inside its own runs (and outside the paper's): no warning about the student's size
    inside = laws.plan_distillation(document, N_S=1e7, budget=1e17, scenario="teacher_inference")
    assert not [w for w in inside.warnings if "N_S" in w or "unknown" in w]
    assert laws.plan_distillation(OWN, N_S=1e7, budget=1e17, scenario="teacher_inference",
                                  fitted_range=PAPER_RANGE).warnings[0].startswith("the student size N_S = 10M")
    # beyond them: the student, the teacher and the tokens, against its range
    beyond = laws.plan_distillation(document, N_S=1e9, budget=1e21, scenario="teacher_pretraining_inference")
    assert ("the student size N_S = 1B is outside the range of students the law was fitted to (1M to 100M "
            "parameters)") in beyond.warnings
    assert beyond.N_T > 3e8 and any(w.startswith("the teacher size N_T") and "(300M parameters)" in w
                                    for w in beyond.warnings)
    assert any(w.startswith("the supervised baseline (D) trains on 167B tokens, more than any run the law was "
                            "fitted to (at most 6B)") for w in beyond.warnings)
    # a student trained on more tokens than any student saw is extrapolated, even where a teacher
    # saw more (students up to 2B tokens, the teacher 6B: the student's limit is its own)
    long = laws.plan_distillation(document, N_S=1e8, budget=2.4e18, scenario="best_case")
    assert 2e9 < long.D_S <= 6e9
    assert any(w.startswith("the student (D_S) trains on ") and "more than any student the law was fitted to "
               "(at most 2B)" in w for w in long.warnings), long.warnings
    free = laws.plan_distillation(document, N_S=1e7, budget=1e17, scenario="best_case")
    assert (free.teacher_loss < 3.2) == any("below the lowest teacher loss the law was fitted to (3.2)" in w
                                            for w in free.warnings)


def test_a_users_law_without_recorded_runs_says_its_range_is_unknown():
    for law in (own_document(None), own_document(None)["laws"][1], OWN,
                law_fit("distillation", OWN, Distillation(supervised=SUPERVISED).spec()),
                own_document([{"run_key": "t0", "run_id": "t0", "N": 3e8, "D": 6e9, "loss": 3.2}])):  # no students
        assert recorded_range(law) is None
        p = laws.plan_distillation(law, N_S=50e6, budget=1e20, scenario="teacher_pretraining_inference")
        assert p.warnings[0].startswith("the range of the runs this distillation law was fitted to is unknown")
        assert not [w for w in p.warnings if "N_S" in w or "than any run" in w]  # no paper's range for it
    # the published coefficients, however given, are checked against the paper's runs
    assert recorded_range(None) == recorded_range(DISTILLATION) == PAPER_RANGE
    # no range: no range warnings at all
    p = laws.plan_distillation(OWN, N_S=50e6, budget=1e20, scenario="best_case", fitted_range=None)
    assert not p.warnings


def test_a_teacher_loss_below_the_fitted_ones_is_reported():
    own = FittedRange(student_min=1e8, student_max=1e10, teacher_max=None, tokens_max=1e13, teacher_loss_min=2.5)
    p = laws.plan_distillation(N_S=546e6, budget=1e20, scenario="teacher_inference", fitted_range=own)
    assert p.teacher_loss < 2.5
    assert p.warnings == (f"the teacher's loss L_T = {p.teacher_loss:.4g} is below the lowest teacher loss the law "
                          "was fitted to (2.5)",)


# -- optima on a bound of the search -------------------------------------------------------------
def test_an_optimum_on_a_search_bound_is_reported():
    for scenario in ("teacher_pretraining", "teacher_pretraining_inference"):
        p = laws.plan_distillation(N_S=1e5, budget=1e15, scenario=scenario)
        assert abs(p.N_T / 1e7 - 1) < 1e-9
        assert ("the teacher size N_T = 10M is at the lower bound of its search range (10M to 10T parameters): "
                "a smaller teacher may be best") in p.warnings
    interior = laws.plan_distillation(N_S=1e5, budget=1e15, scenario="teacher_inference")
    assert interior.N_T > 1.1e7 and not [w for w in interior.warnings if "bound" in w]
    assert not [w for w in plan("teacher_pretraining_inference", budget=1e21).warnings if "bound" in w]
    # a free teacher as good as the supervised law allows: its loss at E, the bound of the search
    p = laws.plan_distillation(N_S=1e12, budget=1e24, scenario="best_case")
    assert p.teacher_loss == pytest.approx(SUPERVISED["E"] * 1.0001, rel=1e-6)
    assert (f"the teacher's loss L_T = {p.teacher_loss:.5g} is at the lower bound of its search range, just above the "
            f"supervised law's irreducible loss E = {SUPERVISED['E']:.5g}: the law prefers the best teacher there can "
            "be, one of unlimited size and data") in p.warnings



def test_a_teacher_pretraining_share_on_a_search_bound_is_reported():
    from dataclasses import replace

    import numpy as np

    from laws.distill_plan import STUDENT_SHARES, TEACHER_SIZES, _bound_warnings

    p = plan("teacher_pretraining_inference", budget=1e21)
    bounds = [(float(np.log(TEACHER_SIZES[0])), float(np.log(TEACHER_SIZES[1]))), STUDENT_SHARES]
    most = replace(p, flops_teacher_pretraining=p.C * (1 - STUDENT_SHARES[0]))
    assert _bound_warnings(most, np.array([np.log(p.N_T), STUDENT_SHARES[0]]), bounds, SUPERVISED["E"]) == [
        "teacher pretraining's share of the budget (99.99%) is at the upper bound of its search range "
        "(0.01% to 99.99%): giving it more may be best"]
    assert _bound_warnings(p, np.array([np.log(p.N_T), 0.5]), bounds, SUPERVISED["E"]) == []
