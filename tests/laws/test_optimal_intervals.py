"""Intervals on the recipes' optima (optimal sparsity, optimal mixture): parametric (delta method
through the optimum) and bootstrap, on data simulated from known parameters: the interval covers
the true optimum and shrinks with more data (each configuration run with more seeds)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import laws
from laws.bootstrap import bootstrap, joint_bootstrap
from laws.optimal import optimal_mixture, optimal_sparsity
from laws.optimal_intervals import (
    bootstrap_optimal_mixture,
    bootstrap_optimal_sparsity,
    optimal_mixture_intervals,
    optimal_sparsity_intervals,
    sparsity_optimum_jacobian,
)
from tests.laws.families_truth import CASES
from tests.laws.test_optimal import law_fit

SPARSITY = CASES["sparsity"][1]
BUDGET = 1e20
#: two target domains' additive mixture laws (plausible values; Shukor et al. publish none) with
#: an interior optimum: about 0.1 nats between the best mixture and the edges of the design
DOMAIN_A = {"E": 1.6, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28, "C1": 1.0, "C2": 0.8, "gamma1": 0.5,
            "gamma2": 0.7}
DOMAIN_B = {"E": 1.8, "A": 300.0, "B": 500.0, "alpha": 0.32, "beta": 0.3, "C1": 0.6, "C2": 1.0, "gamma1": 0.8,
            "gamma2": 0.5}
AT = {"N": 1e9, "D": 2e10}


def _mesh(*axes: np.ndarray) -> list[np.ndarray]:
    return [a.ravel() for a in np.meshgrid(*axes, indexing="ij")]


def sparsity_runs(seeds: int, seed: int = 2):
    """6 sizes x 5 token counts x 6 sparsities (to S = 0.97), each run with ``seeds`` seeds,
    0.5 % log-normal noise."""
    n, d, s = _mesh(np.geomspace(1e8, 3e10, 6), np.geomspace(2e9, 6e11, 5),
                    np.array([0.0, 0.5, 0.75, 0.875, 0.9375, 0.97]))
    x = {"N": np.tile(n, seeds), "D": np.tile(d, seeds), "S": np.tile(s, seeds)}
    law = laws.get_law("sparsity", max_starts=1024)
    loss = law.predict(SPARSITY, **x) * np.exp(np.random.default_rng(seed).normal(0.0, 0.005, x["N"].size))
    return law, x, loss


def mixture_runs(seeds: int, truths=(DOMAIN_A,), seed: int = 0):
    """4 sizes x 4 token counts x 9 mixtures h1 in 0.1..0.9, ``seeds`` seeds, one loss per
    target domain (0.5 % log-normal noise)."""
    n, d, h = _mesh(np.geomspace(1e8, 1e10, 4), np.geomspace(2e9, 2e11, 4), np.linspace(0.1, 0.9, 9))
    x = {"N": np.tile(n, seeds), "D": np.tile(d, seeds), "h1": np.tile(h, seeds), "h2": 1.0 - np.tile(h, seeds)}
    law = laws.get_law("mixture_additive", k=2, max_starts=64)
    rng = np.random.default_rng(seed)
    losses = [law.predict(t, **x) * np.exp(rng.normal(0.0, 0.005, x["N"].size)) for t in truths]
    return law, x, losses


@functools.cache
def mixture_fits(seeds: int) -> tuple[laws.ScalingLaw, dict, list[np.ndarray], list[laws.LawFit]]:
    """Both domains' laws fitted to :func:`mixture_runs` (cached: several tests share them; the
    first domain's losses are those of ``mixture_runs(seeds)``)."""
    law, x, losses = mixture_runs(seeds, truths=(DOMAIN_A, DOMAIN_B))
    return law, x, losses, [laws.fit(law, x, y) for y in losses]


def width(iv: tuple[float, float], log: bool = False) -> float:
    return float(np.log(iv[1] / iv[0]) if log else iv[1] - iv[0])


@pytest.fixture(scope="module")
def sparsity_fits():
    out = {}
    for seeds in (1, 4):
        law, x, loss = sparsity_runs(seeds)
        out[seeds] = (laws.fit(law, x, loss), x, loss)
    return out


def test_sparsity_jacobian_matches_finite_differences():
    fit = law_fit("sparsity", SPARSITY)
    law = fit.get_law()
    opt = optimal_sparsity(fit, BUDGET)
    jac = sparsity_optimum_jacobian(fit, opt)
    theta = law.from_natural(SPARSITY).numpy()

    def derived(t: np.ndarray) -> np.ndarray:
        o = optimal_sparsity(law_fit("sparsity", law.to_natural(t)), BUDGET)
        return np.array([np.log(o.N), o.S, np.log(o.D), np.log(o.loss)])

    for i in (0, 5, 8, 9):  # log a, alpha, lambda, delta
        e = np.zeros_like(theta)
        e[i] = 1e-4
        fd = (derived(theta + e) - derived(theta - e)) / 2e-4
        np.testing.assert_allclose(jac[:, i], fd, rtol=0.03, atol=0.02)


def test_parametric_sparsity_interval_covers_and_shrinks(sparsity_fits):
    truth = optimal_sparsity(law_fit("sparsity", SPARSITY), BUDGET)
    small, large = (optimal_sparsity_intervals(sparsity_fits[k][0], BUDGET) for k in (1, 4))
    for iv in (small, large):
        assert iv.S[0] < truth.S < iv.S[1]
        assert iv.N[0] < truth.N < iv.N[1]
        # the loss there is pinned far more tightly than the argmin; its interval brackets the
        # estimate, which is within the noise of one run (0.5 %) of the truth
        assert iv.loss[0] < iv.optimum.loss < iv.loss[1]
        assert iv.optimum.loss == pytest.approx(truth.loss, rel=5e-3)
        assert pytest.approx(BUDGET, rel=1e-9) == 6 * iv.optimum.N * (1 - iv.optimum.S) * iv.optimum.D
    # four times the runs: about half the width (1/sqrt(4))
    assert width(large.S) < 0.7 * width(small.S)
    assert width(large.N, log=True) < 0.7 * width(small.N, log=True)


def test_bootstrap_sparsity_interval_covers_and_shrinks(sparsity_fits):
    truth = optimal_sparsity(law_fit("sparsity", SPARSITY), BUDGET)
    ivs = []
    for k in (1, 4):
        fit, x, loss = sparsity_fits[k]
        boot = bootstrap(fit, x, loss, n_resamples=30, seed=0)
        iv = bootstrap_optimal_sparsity(boot, fit, BUDGET)
        assert iv.S[0] < truth.S < iv.S[1]
        assert iv.N[0] < truth.N < iv.N[1]
        ivs.append(iv)
    assert width(ivs[1].N, log=True) < width(ivs[0].N, log=True)
    assert width(ivs[1].S) < width(ivs[0].S)


def test_no_covariance_means_no_parametric_interval():
    iv = optimal_sparsity_intervals(law_fit("sparsity", SPARSITY), BUDGET)  # a fit without covariance
    assert iv.S is None and iv.N is None and "no parametric covariance" in iv.warnings[0]
    assert pytest.approx(optimal_sparsity(law_fit("sparsity", SPARSITY), BUDGET).S) == iv.optimum.S


@pytest.mark.slow
def test_parametric_mixture_interval_covers_and_shrinks():
    truth = optimal_mixture([law_fit("mixture_additive", DOMAIN_A)], **AT).weights[0]
    ivs = []
    for seeds in (1, 3):
        fit = mixture_fits(seeds)[3][0]
        iv = optimal_mixture_intervals([fit], **AT)
        lo, hi = iv.weights[0]
        assert lo < truth < hi
        assert iv.weights[1][0] == pytest.approx(1 - hi) and iv.weights[1][1] == pytest.approx(1 - lo)
        ivs.append(iv)
    assert width(ivs[1].weights[0]) < 0.7 * width(ivs[0].weights[0])


@pytest.mark.slow
def test_joint_bootstrap_mixture_interval_covers_and_shrinks():
    """Two target domains' laws fitted to the same runs, bootstrapped jointly.

    The additive law leaves E weakly identified (a shift of E is traded against the scale of the
    mixture term), so resample optima lie far along a flat valley: they need up to ~1000 Newton
    iterations to converge, hence the raised cap.
    """
    truth = optimal_mixture([law_fit("mixture_additive", t) for t in (DOMAIN_A, DOMAIN_B)], **AT).weights[0]
    widths = []
    for seeds in (1, 3):
        _, x, losses, fits = mixture_fits(seeds)
        boots = joint_bootstrap(fits, x, losses, n_resamples=20, seed=0, grid_starts=0,
                                options=laws.NewtonOptions(max_iter=1000))
        iv = bootstrap_optimal_mixture(boots, fits, **AT)
        assert iv.weights is not None, iv.warnings
        assert iv.weights[0][0] < truth < iv.weights[0][1]
        widths.append(width(iv.weights[0]))
    assert widths[1] < widths[0]


def test_joint_bootstrap_resamples_the_same_runs_for_every_law():
    law, x, losses = mixture_runs(1, truths=(DOMAIN_A, DOMAIN_B))
    fits = [law_fit("mixture_additive", t) for t in (DOMAIN_A, DOMAIN_B)]
    boots = joint_bootstrap(fits, x, losses, n_resamples=12, seed=3, grid_starts=0,
                            options=laws.NewtonOptions(max_iter=5))
    assert boots[0].resample_digest == boots[1].resample_digest != ""
    # a separate bootstrap with another seed is not a joint one
    other = bootstrap(fits[1], x, losses[1], n_resamples=12, seed=4, grid_starts=0,
                      options=laws.NewtonOptions(max_iter=5))
    with pytest.raises(ValueError, match="joint bootstrap"):
        bootstrap_optimal_mixture([boots[0], other], fits, **AT)
    with pytest.raises(ValueError, match="one loss per fit"):
        joint_bootstrap(fits, x, losses[:1], n_resamples=2)
    # five iterations converge in no resample: no interval, and a warning saying why
    iv = bootstrap_optimal_mixture(boots, fits, **AT)
    assert iv.weights is None and "joint resamples (all laws)" in iv.warnings[0]


def test_export_has_the_sparsity_recipe_with_intervals(sparsity_fits):
    fit, x, loss = sparsity_fits[1]
    boot = bootstrap(fit, x, loss, n_resamples=20, seed=0)
    doc = laws.export_document([fit], budgets=[BUDGET], bootstrap=[boot])
    (row,) = doc["laws"][0]["optimal_sparsity"]
    iv = optimal_sparsity_intervals(fit, BUDGET)
    assert row["C"] == BUDGET and row["S"] == pytest.approx(iv.optimum.S)
    assert row["S_interval"] == pytest.approx(list(iv.S)) and row["N_interval"][0] < row["N"] < row["N_interval"][1]
    (brow,) = doc["laws"][0]["bootstrap"]["optimal_sparsity"]
    assert brow["S"][0] < row["S"] < brow["S"][1]
    assert doc["schema_version"] == 1 and laws.load_document(doc) == [fit]
    # laws in N and D only have no such section
    assert "optimal_sparsity" not in laws.export_document([law_fit("chinchilla", CASES["chinchilla"][1])],
                                                          budgets=[BUDGET])["laws"][0]


def test_export_has_the_optimal_mixture():
    law, x, losses = mixture_runs(1, truths=(DOMAIN_A, DOMAIN_B))
    fits = [law_fit("mixture_additive", t) for t in (DOMAIN_A, DOMAIN_B)]
    boots = joint_bootstrap(fits, x, losses, n_resamples=12, seed=3, grid_starts=0,
                            options=laws.NewtonOptions(max_iter=5))
    doc = laws.export_document(fits, bootstrap=boots, mixture_at=[AT])
    (row,) = doc["optimal_mixture"]
    assert row["weights"] == pytest.approx(list(optimal_mixture(fits, **AT).weights))
    assert row["laws"] == ["mixture_additive", "mixture_additive"]
    # these fits carry no covariance and their resamples did not converge: no intervals, and why
    assert row["weights_interval"] is None and row["bootstrap_weights_interval"] is None
    assert any("no parametric covariance" in w for w in row["warnings"])
    assert any(w.startswith("bootstrap: only 0 of 12") for w in row["warnings"])
    assert "optimal_mixture" not in laws.export_document(fits)
    with pytest.raises(ValueError, match="mixture_at: each point needs N and D"):
        laws.export_document(fits, mixture_at=[{"N": 1e9}])
    with pytest.raises(ValueError, match="no mixture law"):
        laws.export_document([law_fit("chinchilla", CASES["chinchilla"][1])], mixture_at=[AT])
