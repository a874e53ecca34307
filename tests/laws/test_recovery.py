"""Parameter recovery: simulate losses from known (published) parameters and fit them back."""

from __future__ import annotations

import numpy as np
import pytest

import laws
from laws.chinchilla import BUSBRIDGE_SUPERVISED_PARAMS, HOFFMANN_PARAMS
from tests.laws.conftest import nd_design

#: a target far outside the simulated runs (the Chinchilla model)
TARGET = {"N": 7e10, "D": 1.4e12}


def simulate(law: laws.ScalingLaw, params: dict[str, float], sigma: float, seed: int):
    n, d = nd_design()
    rng = np.random.default_rng(seed)
    loss = law.predict(params, N=n, D=d) * np.exp(rng.normal(0.0, sigma, n.size))
    return {"N": n, "D": d}, loss


def test_chinchilla_exact_recovery():
    law = laws.get_law("chinchilla")
    inputs, loss = simulate(law, HOFFMANN_PARAMS, 0.0, 0)
    fit = laws.fit(law, inputs, loss)
    for k, v in HOFFMANN_PARAMS.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-6), k
    assert fit.report.converged
    assert fit.report.n_best > 1


@pytest.mark.parametrize("seed", [0, 1])
def test_chinchilla_noisy_recovery(seed):
    """0.5 % log-normal noise, the residual scale of the replication data."""
    law = laws.get_law("chinchilla")
    inputs, loss = simulate(law, HOFFMANN_PARAMS, 0.005, seed)
    fit = laws.fit(law, inputs, loss)
    assert fit.params["E"] == pytest.approx(HOFFMANN_PARAMS["E"], rel=0.03)
    assert fit.params["alpha"] == pytest.approx(HOFFMANN_PARAMS["alpha"], abs=0.05)
    assert fit.params["beta"] == pytest.approx(HOFFMANN_PARAMS["beta"], abs=0.05)
    truth = law.predict(HOFFMANN_PARAMS, **TARGET)
    assert fit.predict(**TARGET) == pytest.approx(truth, rel=0.01)
    # the truth lies inside the parametric 95 % intervals of the exponents
    intervals = laws.parametric_intervals(fit)
    for k in ("alpha", "beta", "E"):
        lo, hi = intervals[k]
        assert lo < HOFFMANN_PARAMS[k] < hi, k


def test_chinchilla_gamma_published_check_value():
    # Busbridge et al. 2025: L(546M, 10.9B) = 2.5149 with the Table 6 parameters (rounded)
    law = laws.get_law("chinchilla_gamma")
    assert law.predict(BUSBRIDGE_SUPERVISED_PARAMS, N=546e6, D=10.9e9) == pytest.approx(2.5149, abs=1e-3)


@pytest.mark.slow
def test_chinchilla_gamma_exact_recovery():
    law = laws.get_law("chinchilla_gamma")
    inputs, loss = simulate(law, BUSBRIDGE_SUPERVISED_PARAMS, 0.0, 0)
    fit = laws.fit(law, inputs, loss)
    for k, v in BUSBRIDGE_SUPERVISED_PARAMS.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-4), k


@pytest.mark.slow
def test_chinchilla_gamma_noisy_recovery_full_grid():
    law = laws.get_law("chinchilla_gamma")
    inputs, loss = simulate(law, BUSBRIDGE_SUPERVISED_PARAMS, 0.005, 0)
    fit = laws.fit(law, inputs, loss)
    truth = law.predict(BUSBRIDGE_SUPERVISED_PARAMS, **TARGET)
    assert fit.predict(**TARGET) == pytest.approx(truth, rel=0.01)
    assert fit.params["E"] == pytest.approx(BUSBRIDGE_SUPERVISED_PARAMS["E"], rel=0.1)
