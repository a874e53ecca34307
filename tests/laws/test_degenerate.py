"""Degenerate input: a clear ValueError or a warning in the report, never a silent fit."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import laws
from laws.bootstrap import bootstrap
from laws.chinchilla import HOFFMANN_PARAMS
from laws.objective import Objective
from tests.laws.conftest import nd_design
from trainers.config import REPLICATION_CHINCHILLA

#: a few starts are enough to exercise validation and reporting
FEW = laws.get_law("chinchilla").init_grid()[::50]


def data(k: int = 64):
    n, d = nd_design()
    loss = laws.get_law("chinchilla").predict(HOFFMANN_PARAMS, N=n, D=d)
    return n[:k].copy(), d[:k].copy(), loss[:k].copy()


def test_fewer_points_than_parameters():
    n, d, loss = data(4)
    with pytest.raises(ValueError, match="5 parameters but only 4 data points"):
        laws.fit("chinchilla", {"N": n, "D": d}, loss, init=FEW)


def test_all_runs_at_one_size():
    n, d, loss = data()
    with pytest.raises(ValueError, match="same N"):
        laws.fit("chinchilla", {"N": np.full_like(n, 1e9), "D": d}, loss, init=FEW)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_loss(bad):
    n, d, loss = data()
    loss[3] = bad
    with pytest.raises(ValueError, match=r"loss has non-finite values at \[3\]"):
        laws.fit("chinchilla", {"N": n, "D": d}, loss, init=FEW)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_loss(bad):
    n, d, loss = data()
    loss[5] = bad
    with pytest.raises(ValueError, match=r"loss must be positive.*\[5\]"):
        laws.fit("chinchilla", {"N": n, "D": d}, loss, init=FEW)


def test_non_positive_size():
    n, d, loss = data()
    n[0] = 0.0
    with pytest.raises(ValueError, match="input N must be positive"):
        laws.fit("chinchilla", {"N": n, "D": d}, loss, init=FEW)


def test_mismatched_lengths_and_names():
    n, d, loss = data()
    with pytest.raises(ValueError, match="input D has 63 values but loss has 64"):
        laws.fit("chinchilla", {"N": n, "D": d[:-1]}, loss, init=FEW)
    with pytest.raises(ValueError, match=r"missing \['D'\], unknown \['T'\]"):
        laws.fit("chinchilla", {"N": n, "T": d}, loss, init=FEW)


def test_duplicates_are_reported():
    n, d, loss = data()
    n2, d2, l2 = np.r_[n, n[:3]], np.r_[d, d[:3]], np.r_[loss, loss[:3]]
    fit = laws.fit("chinchilla", {"N": n2, "D": d2}, l2, init=FEW)
    assert any("3 duplicated input points" in w for w in fit.report.warnings)


def test_as_many_points_as_parameters_is_reported():
    n, d, loss = data()
    idx = [0, 9, 18, 27, 36]
    fit = laws.fit("chinchilla", {"N": n[idx], "D": d[idx]}, loss[idx], init=FEW)
    assert any("interpolates" in w for w in fit.report.warnings)


def test_unconverged_fit_is_reported():
    n, d, loss = data()
    fit = laws.fit("chinchilla", {"N": n, "D": d}, loss, init=FEW, options=laws.NewtonOptions(max_iter=2))
    assert not fit.report.converged
    assert any("did not converge" in w for w in fit.report.warnings)


def test_bad_init_shape():
    n, d, loss = data()
    with pytest.raises(ValueError, match=r"init must have shape \[S, 5\]"):
        laws.fit("chinchilla", {"N": n, "D": d}, loss, init=np.zeros((3, 4)))


def test_unknown_law_lists_valid_names():
    with pytest.raises(ValueError, match="valid laws: chinchilla, chinchilla_gamma"):
        laws.get_law("chinchila")


def test_sparsity_outside_the_unit_interval():
    n, d, loss = data()
    with pytest.raises(ValueError, match=r"input S \(sparsity\) must be in \[0, 1\); got S\[2\] = 1.0"):
        laws.fit("sparsity", {"N": n, "D": d, "S": np.where(np.arange(n.size) == 2, 1.0, 0.5)}, loss)


def test_non_finite_input():
    n, d, loss = data()
    d[7] = np.nan
    with pytest.raises(ValueError, match=r"input D has non-finite values at \[7\]=nan"):
        laws.fit("chinchilla", {"N": n, "D": d}, loss, init=FEW)


def test_repeated_points_count_once():
    """Four configurations seen with three seeds each are 12 points but only 4 equations."""
    n, d, loss = data()
    idx = np.repeat([0, 9, 18, 27], 3)
    with pytest.raises(ValueError, match=r"5 parameters but the 12 data points hold only 4 distinct input configurations"):
        laws.fit("chinchilla", {"N": n[idx], "D": d[idx]}, loss[idx], init=FEW)
    # five distinct configurations with seeds: enough to fit, and it interpolates
    idx = np.repeat([0, 9, 18, 27, 36], 3)
    fit = laws.fit("chinchilla", {"N": n[idx], "D": d[idx]}, loss[idx], init=FEW)
    assert any("as many distinct configurations (5) as parameters" in w for w in fit.report.warnings)


def _family_data(name: str):
    from tests.laws.families_truth import CASES

    opts, truth, design = CASES[name]
    law = laws.get_law(name, **opts)
    x = design()
    return law, x, law.predict(truth, **x)


#: a constant input of each family that cannot do without it, and what the error says
CONSTANT_INPUTS = [
    ("sparsity", "S", 0.5, r"same S = 0.5.*lambda and delta"),
    ("distillation", "L_T", 2.5, r"same L_T = 2.5.*confounded with A and B \(c0\)"),
    ("forgetting", "p", 0.0, r"same p = 0.0.*B cannot be identified"),
    ("forgetting_ft", "D_ft", 1e8, r"same D_ft = 100000000.0"),
    ("mixture_additive", "h1", 0.3, r"same h1 = 0.3.*C_i and gamma_i confounded"),
    ("mixture_joint", "h2", 0.7, r"same h1 = 0.3.*C_i and gamma_i confounded"),
]


@pytest.mark.parametrize(("name", "key", "value", "message"), CONSTANT_INPUTS)
def test_constant_input_names_the_input(name, key, value, message):
    law, x, loss = _family_data(name)
    x[key] = np.full_like(x[key], value)
    if key == "h1":
        x["h2"] = 1.0 - x["h1"]
    if key == "h2":
        x["h1"] = 1.0 - x["h2"]
    with pytest.raises(ValueError, match=message):
        laws.fit(law, x, loss, init=law.init_grid()[:2])


def test_constant_offset_input_is_allowed():
    """Forgetting's L_pt0 is a known offset: every run may finetune the same pretrained model."""
    law, x, loss = _family_data("forgetting")
    x["L_pt0"] = np.full_like(x["L_pt0"], 2.5)
    fit = laws.fit(law, x, loss, init=law.init_grid()[:2])
    assert not any("L_pt0" in w for w in fit.report.warnings)


def test_constant_input_of_a_custom_law_is_a_warning():
    law = laws.custom_law({"expression": "E + A / N**alpha + T", "inputs": ["N", "T"],
                           "params": {"E": {"log": True, "init": [0.0]}, "A": {"log": True, "init": [5.0]},
                                      "alpha": [0.3]}})
    n = np.geomspace(1e7, 1e10, 8)
    loss = 1.7 + 300.0 / n**0.3 + 0.1
    fit = laws.fit(law, {"N": n, "T": np.full_like(n, 0.1)}, loss)
    assert any("same T = 0.1" in w for w in fit.report.warnings)


def test_a_best_objective_reached_by_one_start_is_reported():
    """Six runs for five parameters: fittable, but only one of the 4500 starts finds the optimum."""
    n, d, loss = data()
    idx = [0, 9, 18, 27, 36, 45]
    fit = laws.fit("chinchilla", {"N": n[idx], "D": d[idx]}, loss[idx])
    assert fit.report.n_best == 1
    assert any("only 1 of 4500 starts reached the best objective" in w for w in fit.report.warnings)


def test_a_parameter_that_ran_off_is_reported():
    """Six noisy runs at the smallest size: A runs to ~0 (log A = -636) with alpha = -29; the size
    term has vanished."""
    n, d, loss = data()
    noisy = loss * np.exp(np.random.default_rng(0).normal(0, 0.01, loss.size))
    fit = laws.fit("chinchilla", {"N": n[:6], "D": d[:6]}, noisy[:6])
    assert fit.params["A"] < 1e-100
    assert any(w.startswith("parameter A = ") and "ran to ~0, far below its starts (log 0 to 25)" in w
               for w in fit.report.warnings)


def test_an_exponent_at_zero_is_reported():
    """Losses with no dependence on D (beta = 0): B / D**beta is a constant, confounded with E."""
    n, d, _ = data()
    flat = laws.get_law("chinchilla").predict({**HOFFMANN_PARAMS, "beta": 0.0}, N=n, D=d)
    fit = laws.fit("chinchilla", {"N": n, "D": d}, flat, init=FEW)
    assert abs(fit.params["beta"]) < 1e-3
    assert any(w.startswith("exponent beta = ") and "is ~0" in w for w in fit.report.warnings)
    # a well-identified fit of the same runs reports none of these
    good = laws.fit("chinchilla", {"N": n, "D": d}, data()[2], init=FEW)
    assert not [w for w in good.report.warnings if "exponent" in w or "ran " in w or "starts reached" in w]


def _overflow_starts(monkeypatch, which):
    """Make the starts in ``which(objective)`` reach the lowest objective with log A = 800: a
    point where A/N^alpha is finite in log space but A itself overflows float64."""
    module = sys.modules["laws.fit"]
    real = module.run_starts

    def run_starts(*args, **kwargs):
        res, method = real(*args, **kwargs)
        theta, objective = res.theta.clone(), res.objective.clone()
        rows = which(objective)
        theta[rows, laws.get_law("chinchilla").param_names.index("A")] = 800.0  # log A
        objective[rows] = 0.5 * float(objective[torch.isfinite(objective)].min())
        return replace(res, theta=theta, objective=objective), method

    monkeypatch.setattr(module, "run_starts", run_starts)


def test_an_optimum_beyond_float64_is_not_reported(monkeypatch):
    """The lowest objective at log A = 800 has no natural A to report, predict with or export:
    the best start whose parameters are finite is reported, with a warning saying why."""
    n, d, loss = data()
    honest = laws.fit("chinchilla", {"N": n, "D": d}, loss, init=FEW)
    _overflow_starts(monkeypatch, lambda objective: torch.argmin(objective).reshape(1))
    fit = laws.fit("chinchilla", {"N": n, "D": d}, loss, init=FEW)
    assert all(np.isfinite(v) for v in fit.params.values())
    # the honest optimum was replaced; the next start reached the same one
    assert fit.params == pytest.approx(honest.params, rel=1e-6)
    assert fit.objective == pytest.approx(honest.objective, rel=1e-9)
    assert np.isfinite(fit.predict(N=n, D=d)).all()
    assert any("A = exp(800)" in w and "best start with finite parameters is reported" in w
               for w in fit.report.warnings)


def test_every_optimum_beyond_float64_is_an_error(monkeypatch):
    n, d, loss = data()
    _overflow_starts(monkeypatch, lambda objective: torch.arange(objective.shape[0]))
    with pytest.raises(ValueError, match="past exp's float64 range"):
        laws.fit("chinchilla", {"N": n, "D": d}, loss, init=FEW)


def test_bootstrap_refits_beyond_float64_do_not_count_as_converged(monkeypatch):
    n, d, loss = data()
    fit = laws.fit("chinchilla", {"N": n, "D": d}, loss, init=FEW)
    module = sys.modules["laws.bootstrap"]
    real = module.minimise_batched

    def minimise_batched(*args, **kwargs):
        res = real(*args, **kwargs)
        theta = res.theta.clone()
        # log A past float64's range at every start of the first 20 of the 40 resamples
        theta[: theta.shape[0] // 2, laws.get_law("chinchilla").param_names.index("A")] = 800.0
        return replace(res, theta=theta)

    monkeypatch.setattr(module, "minimise_batched", minimise_batched)
    boot = module.bootstrap(fit, {"N": n, "D": d}, loss, n_resamples=40, grid_starts=1)
    assert 0 < boot.n_converged <= 20
    assert np.isfinite(boot.theta_converged).all()


@pytest.mark.parametrize("exponent", ["alpha", "beta"])
def test_a_fit_with_a_negative_exponent_has_no_compute_optimum(exponent):
    """A fit on few runs can put alpha or beta below zero; the closed form then raised a negative
    number to a fractional power, and the complex result was cast to a meaningless real N_opt."""
    import warnings

    from laws.export import law_entry

    report = laws.FitReport(n_points=8, n_starts=1, n_best=1, best_tol=0.0, grad_norm=0.0, converged=True)
    fit_ = laws.LawFit(law="chinchilla", params={**HOFFMANN_PARAMS, exponent: -0.1}, objective=0.0, report=report)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (a,) = laws.compute_optimal(fit_, [1e22])
        entry = law_entry(fit_, budgets=[1e22])
    assert np.isnan(a.N_opt) and np.isnan(a.D_opt) and np.isnan(a.loss)
    assert entry["compute_optimal"] == []
    assert any(w.startswith("no compute-optimal allocation") and f"{exponent} = -0.1" in w for w in entry["report"]["warnings"])


def test_a_cancelled_minimisation_raises_instead_of_returning_a_partial_result() -> None:
    from laws.optimizer import minimise_batched

    law = laws.get_law("chinchilla")
    rng = np.random.default_rng(0)
    x = {"N": 10 ** rng.uniform(7, 9, 20), "D": 10 ** rng.uniform(9, 11, 20)}
    y = law.predict(REPLICATION_CHINCHILLA, **x)
    fit_ = laws.fit(law, x, y)
    asked = []
    with pytest.raises(laws.Cancelled, match="after 2 iterations"):
        bootstrap(fit_, x, y, n_resamples=20, cancel=lambda: asked.append(1) or len(asked) > 2)
    objective = Objective(law, law.prepare_inputs(x), torch.from_numpy(np.asarray(y)))
    result = minimise_batched(objective.jet, objective.value, law.init_grid()[:4], cancel=lambda: False)
    assert result.iterations > 0
