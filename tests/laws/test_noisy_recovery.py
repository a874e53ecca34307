"""Recovery from noisy runs, for every family beyond Chinchilla (those are in test_recovery.py).

Losses are simulated from known parameters (published ones where the papers give them) with 0.5 %
log-normal noise, the residual scale of the Chinchilla replication data, one fixed seed each.
What is asserted is what the design identifies: the fit converges, predicts an extrapolated
target within 1 %, and recovers the derived quantities (optimal sparsity, optimal mixture,
N_opt, the smallest injection) and the parameters the runs pin down. Parameters the design leaves
weakly identified are not asserted: in the additive mixture law E trades against the scale of
the mixture term (fits put E anywhere from 0 to 1.7 for a truth of 1.6 at identical predictions),
and at this noise the sparsity law's c/(1-S)^lambda (0.1 to 0.03 nats) is confounded with e.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import laws
from laws.optimal import minimal_injection, optimal_mixture, optimal_sparsity
from tests.laws.families_truth import CASES
from tests.laws.test_custom import ISSUE_EXAMPLE
from tests.laws.test_optimal import law_fit
from tests.laws.test_optimal_intervals import DOMAIN_A, mixture_fits, mixture_runs

SIGMA = 0.005


def noisy(law: laws.ScalingLaw, truth: dict[str, float], x: dict[str, np.ndarray], seed: int = 0) -> np.ndarray:
    size = next(iter(x.values())).size
    return law.predict(truth, **x) * np.exp(np.random.default_rng(seed).normal(0.0, SIGMA, size))


def mesh(*axes: np.ndarray) -> list[np.ndarray]:
    return [a.ravel() for a in np.meshgrid(*axes, indexing="ij")]


def check_prediction(fit: laws.LawFit, law: laws.ScalingLaw, truth: dict[str, float], **target: np.ndarray) -> None:
    np.testing.assert_allclose(fit.predict(**target), law.predict(truth, **target), rtol=0.01)


def test_forgetting():
    _, truth, design = CASES["forgetting"]
    law = laws.get_law("forgetting")
    x = design()
    fit = laws.fit(law, x, noisy(law, truth, x))
    assert fit.report.converged
    for k in ("A", "B"):
        assert fit.params[k] == pytest.approx(truth[k], rel=0.05), k
    for k in ("alpha", "beta"):
        assert fit.params[k] == pytest.approx(truth[k], abs=0.01), k
    # 3x the largest size and 10x the longest finetuning
    check_prediction(fit, law, truth, N=np.array([1e10, 3e9]), D_ft=np.array([3e9, 1e10]), p=np.array([0.02, 0.2]),
                     L_pt0=np.array([2.0, 2.1]))
    # the smallest share of pretraining data keeping forgetting within 1.5 nats (about 6 %)
    args = {"N": 3e8, "D_ft": 1e9, "tolerance": 1.5}
    truth_p = minimal_injection(law_fit("forgetting", truth), **args)
    assert 0.01 < truth_p < 0.2
    assert minimal_injection(fit, **args) == pytest.approx(truth_p, rel=0.1)


def test_forgetting_finetuning_domain():
    """The finetuning-domain law: sizes 1e7..1e10 x finetuning tokens 1e6..1e10."""
    _, truth, _ = CASES["forgetting_ft"]
    law = laws.get_law("forgetting_ft")
    n, d_ft = mesh(np.geomspace(1e7, 1e10, 7), np.geomspace(1e6, 1e10, 7))
    x = {"N": n, "D_ft": d_ft}
    fit = laws.fit(law, x, noisy(law, truth, x))
    assert fit.report.converged
    assert fit.params["E"] == pytest.approx(truth["E"], rel=0.02)
    for k in ("alpha", "beta"):
        assert fit.params[k] == pytest.approx(truth[k], abs=0.03), k
    check_prediction(fit, law, truth, N=np.array([3e10]), D_ft=np.array([3e10]))


def test_sparsity():
    """Sizes 1e8..3e10 x tokens 2e9..6e11 x sparsities to 0.97 (180 runs)."""
    _, truth, _ = CASES["sparsity"]
    law = laws.get_law("sparsity", max_starts=1024)
    n, d, s = mesh(np.geomspace(1e8, 3e10, 6), np.geomspace(2e9, 6e11, 5),
                   np.array([0.0, 0.5, 0.75, 0.875, 0.9375, 0.97]))
    x = {"N": n, "D": d, "S": s}
    fit = laws.fit(law, x, noisy(law, truth, x))
    assert fit.report.converged, fit.report.warnings
    for k in ("alpha", "beta", "gamma"):
        assert fit.params[k] == pytest.approx(truth[k], abs=0.03), k
    check_prediction(fit, law, truth, N=np.array([1e11]), D=np.array([2e12]), S=np.array([0.9]))
    true_fit = law_fit("sparsity", truth)
    s_fit, s_true = optimal_sparsity(fit, 1e20).S, optimal_sparsity(true_fit, 1e20).S
    assert s_fit == pytest.approx(s_true, abs=0.05)
    (alloc,) = laws.compute_optimal(fit, [1e21], S=0.5)
    (ref,) = laws.compute_optimal(true_fit, [1e21], S=0.5)
    assert alloc.N_opt == pytest.approx(ref.N_opt, rel=0.1)


def test_mixture_additive():
    law, _, _, (fit, _) = mixture_fits(1)
    assert fit.report.converged
    for k in ("alpha", "beta"):
        assert fit.params[k] == pytest.approx(DOMAIN_A[k], abs=0.03), k
    check_prediction(fit, law, DOMAIN_A, N=np.array([3e10]), D=np.array([6e11]), h1=np.array([0.5]),
                     h2=np.array([0.5]))
    truth = optimal_mixture([law_fit("mixture_additive", DOMAIN_A)], N=1e9, D=2e10).weights[0]
    assert optimal_mixture([fit], N=1e9, D=2e10).weights[0] == pytest.approx(truth, abs=0.03)


@pytest.mark.slow
def test_mixture_joint():
    """The joint law's optimum moves with scale; the fit follows it (E runs to 0: not asserted)."""
    truth = {"E": 1.6, "alpha": 0.34, "beta": 0.28, "C1": 1.0, "C2": 0.8, "gamma1": 0.5, "gamma2": 0.7,
             "CA1": 300.0, "CA2": 500.0, "CB1": 600.0, "CB2": 200.0, "gamma_A": 1.1, "gamma_B": 0.9}
    law, x, _ = mixture_runs(1)
    law = laws.get_law("mixture_joint", k=2, max_starts=16)
    fit = laws.fit(law, x, noisy(law, truth, x))
    assert fit.report.converged
    check_prediction(fit, law, truth, N=np.array([3e10]), D=np.array([6e11]), h1=np.array([0.5]),
                     h2=np.array([0.5]))
    true_fit = laws.LawFit(law="mixture_joint", params=truth, objective=0.0, report=fit.report, law_spec=law.spec())
    found = []
    for n, d in [(1e9, 2e10), (1e10, 2e11)]:
        h = optimal_mixture([fit], N=n, D=d).weights[0]
        assert h == pytest.approx(optimal_mixture([true_fit], N=n, D=d).weights[0], abs=0.03)
        found.append(h)
    assert found[1] < found[0] - 0.05  # the optimum shifts as the truth's does (0.63 -> 0.55)


@pytest.mark.slow
def test_distillation_published_parameters():
    """Busbridge et al. 2025 (Table 6) on 5 students x 5 token counts x 5 teachers: the student
    losses at their check point and far outside the runs (the capacity-gap parameters c1, f1, d1
    are not identified by 125 noisy runs: not asserted)."""
    _, truth, design = CASES["distillation"]
    law = laws.get_law("distillation", max_starts=1024)
    x = design()
    fit = laws.fit(law, x, noisy(law, truth, x))
    assert fit.report.converged
    check_prediction(fit, law, truth, N=np.array([546e6, 3e9]), D=np.array([10.9e9, 1e12]),
                     L_T=np.array([2.2509, 2.0]))


def test_custom_law():
    law = laws.custom_law(yaml.safe_load(ISSUE_EXAMPLE))
    truth = {"L_inf": 1.9, "B": 300.0, "alpha": 0.3, "beta": 0.15}
    n, e = mesh(np.geomspace(1e7, 1e10, 6), np.array([1.0, 2.0, 4.0, 8.0, 16.0]))
    x = {"N": n, "E": e}
    fit = laws.fit(law, x, noisy(law, truth, x))
    assert fit.report.converged
    assert fit.params["L_inf"] == pytest.approx(truth["L_inf"], rel=0.02)
    for k in ("alpha", "beta"):
        assert fit.params[k] == pytest.approx(truth[k], abs=0.02), k
    check_prediction(fit, law, truth, N=np.array([1e11]), E=np.array([32.0]))
