"""The exported document round trip, and compute-optimal recipes (closed form vs numeric)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

import laws
from laws.chinchilla import HOFFMANN_PARAMS
from laws.recipes import chinchilla_optimum, numeric_optimum

BUDGETS = [1e21, 5.76e23, 1e25]


def test_round_trip_json_and_yaml(replication_fit):
    doc = laws.export_document([replication_fit], budgets=BUDGETS)
    for text, load in ((json.dumps(doc), json.loads), (yaml.safe_dump(doc), yaml.safe_load)):
        (back,) = laws.load_document(load(text))
        assert back == replication_fit
        assert back.predict(N=7e10, D=1.4e12) == pytest.approx(replication_fit.predict(N=7e10, D=1.4e12), rel=1e-12)
        assert back.get_law().name == "chinchilla"


def test_document_contract_keys(replication_fit):
    doc = laws.export_document([replication_fit], budgets=BUDGETS)
    assert doc["schema_version"] == laws.SCHEMA_VERSION
    assert doc["budgets"] == BUDGETS
    (entry,) = doc["laws"]
    for key in ("law", "formula", "inputs", "params", "intervals", "interval_method", "level", "objective",
                "report", "covariance", "law_spec", "compute_optimal"):
        assert key in entry, key
    assert entry["inputs"] == ["N", "D"]
    for name, (lo, hi) in entry["intervals"].items():
        assert lo < entry["params"][name] < hi, name
    assert [a["C"] for a in entry["compute_optimal"]] == BUDGETS
    for a in entry["compute_optimal"]:
        assert 6 * a["N_opt"] * a["D_opt"] == pytest.approx(a["C"], rel=1e-9)


def test_load_rejects_other_schema_versions(replication_fit):
    doc = laws.export_document([replication_fit])
    doc["schema_version"] = 99
    with pytest.raises(ValueError, match="schema_version: expected 1, got 99"):
        laws.load_document(doc)


def test_export_rejects_bad_budgets(replication_fit):
    with pytest.raises(ValueError, match="budgets must be positive"):
        laws.export_document([replication_fit], budgets=[-1.0])


def test_closed_form_check_values():
    # Hoffmann et al. 2022 (rounded parameters) give N* = 3.22e10, D* = 2.98e12 at C = 5.76e23
    rounded = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    n, d = chinchilla_optimum(rounded, 5.76e23)
    assert n == pytest.approx(3.22e10, rel=0.01)
    assert d == pytest.approx(2.98e12, rel=0.01)


@pytest.mark.parametrize("name", ["chinchilla", "chinchilla_gamma"])
@pytest.mark.parametrize("budget", BUDGETS)
def test_closed_form_agrees_with_numeric(name, budget):
    law = laws.get_law(name)
    params = dict(HOFFMANN_PARAMS, gamma=0.8) if name == "chinchilla_gamma" else HOFFMANN_PARAMS
    n_closed, _ = chinchilla_optimum(params, budget)
    n_num, d_num = numeric_optimum(law, params, budget)
    assert n_num == pytest.approx(float(n_closed), rel=1e-5)
    assert 6 * n_num * d_num == pytest.approx(budget, rel=1e-12)


def test_compute_optimal_loss_is_the_minimum_on_the_isoflop(replication_fit):
    (alloc,) = laws.compute_optimal(replication_fit, [1e23])
    n = alloc.N_opt * np.array([0.5, 0.9, 1.1, 2.0])
    losses = replication_fit.predict(N=n, D=1e23 / (6 * n))
    assert np.all(losses > alloc.loss)


def test_isoflop_minima_recover_the_optimum():
    """Approach 2 on noiseless isoFLOP profiles agrees with the closed form."""
    law = laws.get_law("chinchilla")
    budgets = np.array([1e19, 1e20, 1e21])
    n_star, _ = chinchilla_optimum(HOFFMANN_PARAMS, budgets)
    n = (n_star[:, None] * np.geomspace(0.7, 1.4, 9)[None]).ravel()
    c = np.repeat(budgets, 9)
    loss = law.predict(HOFFMANN_PARAMS, N=n, D=c / (6 * n))
    minima = laws.isoflop_minima(n, c, loss)
    assert [m.C for m in minima] == pytest.approx(list(budgets))
    assert [m.N_opt for m in minima] == pytest.approx(list(n_star), rel=0.02)


def test_parametric_allocation_intervals_agree_with_the_bootstrap(replication, replication_fit):
    from laws.bootstrap import bootstrap
    from laws.recipes import allocation_intervals

    (iv,) = allocation_intervals(replication_fit, [5.76e23])
    (alloc,) = laws.compute_optimal(replication_fit, [5.76e23])
    assert iv["N_opt"][0] < alloc.N_opt < iv["N_opt"][1]
    assert iv["D_opt"][0] < alloc.D_opt < iv["D_opt"][1]
    inputs, loss = replication
    boot = bootstrap(replication_fit, inputs, loss, n_resamples=100, seed=0, grid_starts=0)
    lo, hi = boot.optimum_interval(5.76e23)["N_opt"]
    # same order of magnitude of width in log space
    ratio = np.log(iv["N_opt"][1] / iv["N_opt"][0]) / np.log(hi / lo)
    assert 0.5 < ratio < 2.0
    entry = laws.export_document([replication_fit], budgets=[5.76e23])["laws"][0]["compute_optimal"][0]
    assert entry["N_opt_interval"] == pytest.approx(list(iv["N_opt"]))
    assert entry["D_opt_interval"] == pytest.approx(list(iv["D_opt"]))


# -- delta-method intervals through the numeric optimum ------------------------------------------
CHINCHILLA_AS_CUSTOM = {
    "name": "my_chinchilla",
    "expression": "E + A / N**alpha + B / D**beta",
    "inputs": ["N", "D"],
    "params": {"E": {"log": True, "init": [-1.0, -0.5, 0.0, 0.5, 1.0]}, "A": {"log": True, "init": [0.0, 10.0, 20.0]},
               "B": {"log": True, "init": [0.0, 10.0, 20.0]}, "alpha": [0.0, 0.5, 1.0], "beta": [0.0, 0.5, 1.0]},
}


def test_numeric_allocation_intervals_match_the_closed_form(replication, replication_fit):
    """A custom law written as the Chinchilla expression has no closed form in the recipes: its
    intervals go through the numeric optimum (implicit function theorem) and must equal the closed
    form's on the same data."""
    from laws.recipes import allocation_intervals

    inputs, loss = replication
    custom = laws.fit(laws.custom_law(CHINCHILLA_AS_CUSTOM), inputs, loss)
    assert custom.objective == pytest.approx(replication_fit.objective, rel=1e-9)
    closed = allocation_intervals(replication_fit, BUDGETS)
    numeric = allocation_intervals(custom, BUDGETS)
    for c, a, b in zip(BUDGETS, closed, numeric, strict=True):
        for key in ("N_opt", "D_opt"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (c, key)
    rows = laws.export_document([custom], budgets=BUDGETS)["laws"][0]["compute_optimal"]
    for row, iv in zip(rows, numeric, strict=True):
        assert row["N_opt_interval"] == pytest.approx(list(iv["N_opt"]))
        assert row["N_opt_interval"][0] < row["N_opt"] < row["N_opt_interval"][1]


def test_numeric_allocation_interval_of_a_sparsity_law_at_fixed_sparsity():
    """Any law with N and D: a sparsity law at S = 0.5 gets a finite interval whose width is the
    delta method's, checked against finite differences of the numeric optimum."""
    from scipy import stats

    from laws.recipes import allocation_intervals, numeric_optimum
    from tests.laws.families_truth import CASES

    _, truth, design = CASES["sparsity"]
    law = laws.get_law("sparsity", max_starts=256)
    x = design()
    loss = law.predict(truth, **x) * np.exp(np.random.default_rng(1).normal(0, 0.001, x["N"].size))
    fit = laws.fit(law, x, loss)
    assert fit.covariance is not None
    (iv,) = allocation_intervals(fit, [1e21], S=0.5)
    (alloc,) = laws.compute_optimal(fit, [1e21], S=0.5)
    assert 0 < iv["N_opt"][0] < alloc.N_opt < iv["N_opt"][1] < np.inf
    assert iv["D_opt"][0] < alloc.D_opt < iv["D_opt"][1]
    # d log N_opt / d theta by central differences of the numeric optimum
    theta, h = fit.theta, 1e-3
    grad = np.zeros(theta.size)
    for i in range(theta.size):
        ends = []
        for s in (1, -1):
            t = theta.copy()
            t[i] += s * h
            ends.append(np.log(numeric_optimum(law, law.to_natural(t), 1e21, S=0.5)[0]))
        grad[i] = (ends[0] - ends[1]) / (2 * h)
    half = stats.norm.ppf(0.975) * np.sqrt(grad @ fit.covariance_matrix @ grad)
    assert np.log(iv["N_opt"][1] / alloc.N_opt) == pytest.approx(half, rel=5e-3)  # finite-difference error ~1e-3
