"""Degenerate input: a clear ValueError or a warning in the report, never a silent fit."""

from __future__ import annotations

import numpy as np
import pytest

import laws
from laws.chinchilla import HOFFMANN_PARAMS
from tests.laws.conftest import nd_design

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
