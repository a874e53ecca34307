"""The Chinchilla replication (Besiroglu et al. 2024): the batched fit reaches the reference optimum."""

from __future__ import annotations

import numpy as np
import pytest

import laws
from tests.laws import reference

#: published refit of the 240 points with the Hoffmann recipe (Besiroglu et al. 2024)
PUBLISHED = {"E": 1.8172, "A": 477.8, "B": 2143.0, "alpha": 0.3473, "beta": 0.3672}
#: the published summed-Huber objective, 0.00101827, is the 6-significant-figure rounding of the
#: optimum; SciPy L-BFGS-B and the batched fitter both reach 1.018274017800e-03 (agreeing to 1e-17),
#: whose 11-decimal value is this one
PUBLISHED_OBJECTIVE = 0.00101827
OPTIMUM_OBJECTIVE = 0.00101827402


def test_data_is_the_240_points(replication):
    inputs, loss = replication
    assert loss.size == 240
    assert set(inputs) == {"N", "D"}
    assert np.all(loss <= 3.44)


def test_objective_matches_published(replication_fit):
    """The objective is within 1e-9 of the optimum.

    The replication publishes the objective as 0.00101827, rounded to 6 significant figures: the
    true optimum, 1.018274017800e-03 (SciPy and this fitter agree to
    1e-17), is 4.0e-9 away from it, so a 1e-9 tolerance is only meaningful around the unrounded
    optimum, 0.00101827402. The rounding itself is checked too (half a unit of the 6th figure).
    """
    assert abs(replication_fit.objective - OPTIMUM_OBJECTIVE) <= 1e-9
    assert abs(replication_fit.objective - PUBLISHED_OBJECTIVE) <= 5e-9


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameters_match_published(replication_fit, name):
    assert replication_fit.params[name] == pytest.approx(PUBLISHED[name], rel=5e-3)


def test_report_says_the_optimum_is_well_supported(replication_fit):
    report = replication_fit.report
    assert report.converged
    assert report.grad_norm < 1e-8
    assert report.n_best >= 10  # many starts reach the same optimum
    assert report.n_starts == 4500
    assert report.n_points == 240
    assert report.warnings == ()


def test_objective_agrees_with_independent_implementation(replication, replication_fit):
    inputs, loss = replication
    theta = replication_fit.theta
    value, grad = reference.objective(theta, np.log(inputs["N"]), np.log(inputs["D"]), np.log(loss))
    assert value == pytest.approx(replication_fit.objective, rel=1e-12)
    assert np.abs(grad).max() < 1e-8


def test_scipy_reference_finds_nothing_lower(replication, replication_fit):
    """L-BFGS-B from the batched optimum and from a seeded sample of grid starts."""
    inputs, loss = replication
    n, d = inputs["N"], inputs["D"]
    _, polished = reference.lbfgs(replication_fit.theta, n, d, loss)
    assert polished >= replication_fit.objective - 1e-12
    grid = laws.get_law("chinchilla").init_grid().numpy()
    rng = np.random.default_rng(0)
    best = min(reference.lbfgs(x0, n, d, loss)[1] for x0 in grid[rng.choice(len(grid), 10, replace=False)])
    assert best >= replication_fit.objective - 1e-12


def test_scipy_from_grid_starts_reaches_the_batched_optimum(replication, replication_fit):
    """The other direction: SciPy L-BFGS-B (run to full precision) from fixed grid starts
    (e = 0, alpha = beta = 0.5, a = b in {5, 10, 15, 20}) reaches the batched optimum: the same
    objective within 1e-11 and the same parameters within 1e-4 (relative)."""
    inputs, loss = replication
    n, d = inputs["N"], inputs["D"]
    law = laws.get_law("chinchilla")
    grid = law.init_grid().numpy()  # columns e, a, b, alpha, beta
    starts = grid[(grid[:, 0] == 0) & (grid[:, 1] == grid[:, 2]) & np.isin(grid[:, 1], [5, 10, 15, 20])
                  & (grid[:, 3] == 0.5) & (grid[:, 4] == 0.5)]
    assert len(starts) == 4
    runs = [reference.lbfgs(x0, n, d, loss, options=reference.TIGHT) for x0 in starts]
    theta, best = min(runs, key=lambda r: r[1])
    assert abs(best - replication_fit.objective) <= 1e-11
    assert sum(abs(f - replication_fit.objective) <= 1e-11 for _, f in runs) >= 3  # not one lucky start
    for name, value in law.to_natural(theta).items():
        assert value == pytest.approx(replication_fit.params[name], rel=1e-4), name


def test_compute_optimal_at_chinchilla_budget(replication_fit):
    # Besiroglu et al. 2024: the replication's parameters give N* = 7.2e10, D* = 1.33e12 at C = 5.76e23
    (alloc,) = laws.compute_optimal(replication_fit, [5.76e23])
    assert alloc.N_opt == pytest.approx(7.2e10, rel=0.02)
    assert alloc.D_opt == pytest.approx(1.33e12, rel=0.02)
    assert alloc.tokens_per_param == pytest.approx(18.5, abs=1.0)
