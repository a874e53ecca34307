"""The fitter converges on noisy data whose optimum is approached along a weakly identified
direction (the noisy sparsity fit that stopped with a gradient of 1e-4 after 403 iterations)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import laws
from tests.laws.families_truth import CASES

FIT_MODULE = sys.modules["laws.fit"]


@pytest.fixture(scope="module")
def noisy_sparsity():
    _, truth, design = CASES["sparsity"]
    law = laws.get_law("sparsity", max_starts=1024)
    x = design()
    rng = np.random.default_rng(0)
    loss = law.predict(truth, **x) * np.exp(rng.normal(0.0, 0.005, x["N"].size))
    return law, x, loss


def test_noisy_sparsity_fit_converges(noisy_sparsity):
    law, x, loss = noisy_sparsity
    fit = laws.fit(law, x, loss)
    assert fit.report.converged, fit.report.warnings
    assert fit.report.grad_norm < 1e-9
    assert "polished" in fit.report.method
    assert not any("did not converge" in w for w in fit.report.warnings)


def test_without_the_polish_the_same_fit_stops_early(noisy_sparsity, monkeypatch):
    """The cause: 200 iterations are not enough for the best start (see laws.fit.POLISH_FACTOR)."""
    law, x, loss = noisy_sparsity
    monkeypatch.setattr(FIT_MODULE, "POLISH_FACTOR", 0)
    fit = laws.fit(law, x, loss)
    assert not fit.report.converged
    assert any("did not converge" in w for w in fit.report.warnings)


def test_a_fit_can_bound_its_polish(noisy_sparsity):
    """``polish=`` caps the rounds (a warm refit gives 2): none stops where the iterations left
    the best start, as a default fit with no polish would."""
    law, x, loss = noisy_sparsity
    unpolished = laws.fit(law, x, loss, polish=0)
    assert not unpolished.report.converged and "polished" not in unpolished.report.method
    one = laws.fit(law, x, loss, polish=1)
    assert "polished (200 more iterations)" in one.report.method
    assert one.objective <= unpolished.objective
