"""The bias-aware criterion: its MSE algebra, the REML split of residuals into noise and misfit,
and that it keeps a misspecified fit close to the full grid's where variance reduction does not."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.selection.criteria import planned_information, target_variances
from orchestrator.selection.discrepancy import (
    Discrepancy,
    bias_aware_plan,
    design_mse,
    estimate_discrepancy,
    floor,
)


def _random_problem(seed: int = 0, n: int = 60, p: int = 4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, p)), rng.uniform(1, 10, size=n), rng.normal(size=(2, p)), rng.normal(size=(n, 2))


def test_planned_mse_matches_the_direct_formula() -> None:
    # the rank-one updates of every pick agree with the MSE recomputed from scratch
    j, cost, g, z = _random_problem()
    disc = Discrepancy(noise=1e-4, scale=5e-4, length=0.8)
    done = np.array([0, 5, 9, 13, 21])
    plan = bias_aware_plan(j, cost, done, g, z, disc, budget_left=40.0)
    assert plan is not None and plan.picks and not set(plan.picks) & set(done.tolist())
    assert float(cost[plan.picks].sum()) <= 40.0
    before = design_mse(j, done, g, z, disc)
    after = design_mse(j, np.concatenate([done, plan.picks]), g, z, disc)
    np.testing.assert_allclose(plan.relative_mse, after / before, rtol=1e-8)
    np.testing.assert_allclose(sum(plan.gains), float((1 - after / before).sum()), rtol=1e-8)


def test_without_a_misfit_the_mse_is_the_target_variance() -> None:
    j, cost, g, z = _random_problem(1)
    design = np.arange(12)
    sigma2, ridge = 2e-4, 1e-6
    mse = design_mse(j, design, g, z, Discrepancy(noise=sigma2), ridge=ridge)
    np.testing.assert_allclose(mse, target_variances(j[design], g, sigma2=sigma2, prior_precision=ridge / sigma2), rtol=1e-8)
    # and the plan then is the variance plan, for each cost exponent
    done = np.arange(6)
    allowed = np.ones(len(cost), dtype=bool)
    allowed[done] = False
    for exponent in (0.0, 0.4, 1.0):
        var_plan = planned_information(
            j, cost, j[done], g, sigma2=sigma2, budget_left=30.0, prior_precision=ridge / sigma2, allowed=allowed,
            exponents=(exponent,),
        )
        mse_plan = bias_aware_plan(
            j, cost, done, g, z, Discrepancy(noise=sigma2), budget_left=30.0, ridge=ridge, exponents=(exponent,)
        )
        assert mse_plan.picks == var_plan.picks
        np.testing.assert_allclose(mse_plan.relative_mse, var_plan.relative_variance, rtol=1e-8)


def _smooth_field(z: np.ndarray, rng: np.random.Generator, length: float) -> np.ndarray:
    k = np.exp(-0.5 * np.sum((z[:, None] - z[None]) ** 2, -1) / length**2)
    return np.linalg.cholesky(k + 1e-8 * np.eye(len(z))) @ rng.normal(size=len(z))


def test_reml_tells_noise_from_a_smooth_misfit() -> None:
    rng = np.random.default_rng(3)
    z = np.column_stack([np.linspace(-2, 2, 80), rng.uniform(-2, 2, 80)])
    jac = np.column_stack([np.ones(80), z[:, 0]])  # a straight-line law
    project = np.eye(80) - jac @ np.linalg.pinv(jac)
    noise_only = project @ (0.01 * rng.normal(size=80))
    found = estimate_discrepancy(z, noise_only, jac)
    assert found.scale < 0.5 * found.noise
    assert found.noise == pytest.approx(1e-4, rel=0.5)
    misfit = project @ (0.05 * _smooth_field(z, rng, 1.0) + 0.002 * rng.normal(size=80))
    found = estimate_discrepancy(z, misfit, jac)
    assert found.scale > 20 * found.noise
    assert 0.5 <= found.length <= 2.0


def test_a_law_the_runs_do_not_identify_yet_is_estimated_on_the_directions_they_do() -> None:
    """A rank-deficient Jacobian (two parameters the runs cannot tell apart, as a mixture law's
    are early on) gives the estimate of the identified law, not a singular-matrix error."""
    rng = np.random.default_rng(5)
    z = np.column_stack([np.linspace(-2, 2, 60), rng.uniform(-2, 2, 60)])
    jac = np.column_stack([np.ones(60), z[:, 0]])
    project = np.eye(60) - jac @ np.linalg.pinv(jac)
    residuals = project @ (0.05 * _smooth_field(z, rng, 1.0) + 0.002 * rng.normal(size=60))
    identified = estimate_discrepancy(z, residuals, jac)
    redundant = np.column_stack([jac, 2.0 * jac[:, 1], np.zeros(60)])  # a copy and a dead column
    found = estimate_discrepancy(z, residuals, redundant)
    assert found.length == identified.length
    assert found.scale == pytest.approx(identified.scale, rel=1e-6)
    assert found.noise == pytest.approx(identified.noise, rel=1e-6)


def test_too_few_residuals_count_as_noise() -> None:
    found = estimate_discrepancy(np.zeros((4, 1)), np.full(4, 0.01), np.ones((4, 2)))
    assert found.scale == 0.0 and found.noise > 0


def test_a_misfit_keeps_the_fit_near_the_full_grids_where_variance_reduction_does_not() -> None:
    # Truth: a straight line in x plus a curvature the line cannot follow, little noise. Target:
    # the line's prediction at x = 3, far beyond the pool on [-1, 1], as the whole pool's fit gives
    # it. Variance reduction piles runs at the ends (most leverage), where the curvature biases
    # the slope; the bias-aware plan spreads them so the fit matches the pool's.
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 41)
    jac = np.column_stack([np.ones_like(x), x])
    z = x[:, None] / x.std()
    truth = 0.3 * x**3 - 0.4 * x + 0.05 * np.sin(4 * x)
    g = np.array([[1.0, 3.0]])
    cost = np.ones_like(x)
    pool_fit = np.linalg.lstsq(jac, truth, rcond=None)[0]
    errors = {"variance": [], "bias_aware": []}
    for seed in range(20):
        rng = np.random.default_rng(seed)
        y = truth + 0.002 * rng.normal(size=x.size)
        start = np.array(sorted(rng.choice(x.size, size=8, replace=False)))
        fit0 = np.linalg.lstsq(jac[start], y[start], rcond=None)[0]
        residuals = y[start] - jac[start] @ fit0
        disc = estimate_discrepancy(z[start], residuals, jac[start])
        var_plan = planned_information(jac, cost, jac[start], g, sigma2=disc.noise + disc.scale, budget_left=8.0)
        mse_plan = bias_aware_plan(jac, cost, start, g, z, disc, budget_left=8.0)
        for name, picks in (("variance", var_plan.picks), ("bias_aware", mse_plan.picks)):
            design = np.concatenate([start, picks])
            fit_ = np.linalg.lstsq(jac[design], y[design], rcond=None)[0]
            errors[name].append(float(abs(g[0] @ (fit_ - pool_fit))))
    assert np.mean(errors["bias_aware"]) < 0.5 * np.mean(errors["variance"]), errors


def test_the_assumed_misfit_applies_only_where_the_residuals_show_less() -> None:
    small = Discrepancy(noise=1e-5, scale=1e-6, length=0.5)
    assumed = floor(small, 0.02)
    assert assumed.scale == pytest.approx(4e-4) and assumed.noise == small.noise
    large = Discrepancy(noise=1e-5, scale=1e-3, length=0.5)
    assert floor(large, 0.02) == large
    assert floor(small, 0.0) == small


def test_the_pool_terms_are_built_from_kernel_rows_without_an_n_by_n_matrix() -> None:
    from orchestrator.selection.discrepancy import reference_terms

    j, _, g, z = _random_problem(2, n=50)
    disc = Discrepancy(noise=1e-4, scale=3e-4, length=0.7)
    r, const = reference_terms(j, g, z, disc, ridge=1e-6, chunk=7)  # uneven chunks
    b = j @ np.linalg.pinv(j.T @ j + 1e-6 * np.eye(j.shape[1])) @ g.T
    dense = disc.rows(z, z)
    np.testing.assert_allclose(r, dense @ b, rtol=1e-10)
    np.testing.assert_allclose(const, np.einsum("nt,nm,mt->t", b, dense, b), rtol=1e-10)
    assert np.allclose(np.diag(dense), disc.scale)
