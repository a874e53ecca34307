"""Recipes from the mixture, sparsity and forgetting laws."""

from __future__ import annotations

import pytest
from scipy import optimize

import laws
from laws.optimal import minimal_injection, optimal_mixture, optimal_sparsity
from tests.laws.families_truth import CASES


def law_fit(name: str, params: dict[str, float]) -> laws.LawFit:
    """A LawFit with given parameters (what load_document returns for an exported law)."""
    opts, _, _ = CASES[name]
    law = laws.get_law(name, **opts)
    report = laws.FitReport(n_points=0, n_starts=0, n_best=0, best_tol=0.0, grad_norm=0.0, converged=True)
    return laws.LawFit(law=name, params=dict(params), objective=0.0, report=report, law_spec=law.spec())


def test_optimal_mixture_matches_a_direct_search():
    _, truth, _ = CASES["mixture_additive"]
    fit = law_fit("mixture_additive", truth)
    opt = optimal_mixture([fit], N=1e9, D=2e10)
    assert sum(opt.weights) == pytest.approx(1.0)

    def loss(h1: float) -> float:
        return float(fit.predict(N=1e9, D=2e10, h1=h1, h2=1 - h1))

    ref = optimize.minimize_scalar(loss, bounds=(1e-9, 1 - 1e-9), method="bounded", options={"xatol": 1e-10})
    assert opt.weights[0] == pytest.approx(ref.x, abs=1e-4)
    assert opt.loss == pytest.approx(ref.fun, rel=1e-9)


def test_optimal_mixture_weights_the_targets():
    _, truth, _ = CASES["mixture_additive"]
    a = law_fit("mixture_additive", truth)
    b = law_fit("mixture_additive", {**truth, "C1": truth["C2"], "C2": truth["C1"], "gamma1": truth["gamma2"],
                                     "gamma2": truth["gamma1"]})
    only_a = optimal_mixture([a, b], N=1e9, D=2e10, target_weights=[1.0, 0.0])
    only_b = optimal_mixture([a, b], N=1e9, D=2e10, target_weights=[0.0, 1.0])
    assert only_a.weights[0] == pytest.approx(only_b.weights[1], abs=1e-4)
    with pytest.raises(ValueError, match="non-negative"):
        optimal_mixture([a, b], N=1e9, D=2e10, target_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="mixture laws"):
        optimal_mixture([law_fit("forgetting_ft", CASES["forgetting_ft"][1])], N=1e9, D=2e10)


def test_optimal_sparsity_meets_the_budget_and_beats_dense():
    _, truth, _ = CASES["sparsity"]
    fit = law_fit("sparsity", truth)
    opt = optimal_sparsity(fit, 1e21)
    assert pytest.approx(1e21, rel=1e-9) == 6 * opt.N * (1 - opt.S) * opt.D
    assert 0.0 <= opt.S <= 0.98
    dense = laws.compute_optimal(law_fit("sparsity", truth), [1e21], S=0.0)[0]
    assert opt.loss <= dense.loss + 1e-12
    # a local check: nearby (N, S) on the same budget are no better
    for dn, ds in [(1.2, 0.0), (1 / 1.2, 0.0), (1.0, -0.01)]:
        n, s = opt.N * dn, min(max(opt.S + ds, 0.0), 0.98)
        d = 1e21 / (6 * n * (1 - s))
        assert fit.predict(N=n, D=d, S=s) >= opt.loss - 1e-12


def test_minimal_injection_is_the_smallest_fraction_within_tolerance():
    _, truth, _ = CASES["forgetting"]
    fit = law_fit("forgetting", truth)
    n, d_ft, l0, tol = 3e8, 1e9, 2.5, 0.01
    p = minimal_injection(fit, N=n, D_ft=d_ft, tolerance=tol)
    assert p > 0
    assert fit.predict(N=n, D_ft=d_ft, p=p, L_pt0=l0) == pytest.approx(l0 + tol, rel=1e-12)
    assert fit.predict(N=n, D_ft=d_ft, p=0.9 * p, L_pt0=l0) > l0 + tol
    assert minimal_injection(fit, N=n, D_ft=d_ft, tolerance=10.0) == 0.0
    with pytest.raises(ValueError, match="tolerance must be positive"):
        minimal_injection(fit, N=n, D_ft=d_ft, tolerance=0.0)


def test_optimal_mixture_from_a_given_start():
    _, truth, _ = CASES["mixture_additive"]
    fit = law_fit("mixture_additive", truth)
    ref = optimal_mixture([fit], N=1e9, D=2e10)
    warm = optimal_mixture([fit], N=1e9, D=2e10, init=[0.7, 0.3])
    assert warm.weights[0] == pytest.approx(ref.weights[0], abs=1e-4)
    assert warm.iterations < ref.iterations
    with pytest.raises(ValueError, match="init must be 2 non-negative weights"):
        optimal_mixture([fit], N=1e9, D=2e10, init=[0.5, -0.5])
