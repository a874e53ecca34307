"""Bootstrap over configurations: seeded, batched, with intervals on parameters and recipes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import laws
from laws.bootstrap import bootstrap, resample_weights, unbounded_percentile


@pytest.fixture(scope="module")
def boot(replication, replication_fit):
    inputs, loss = replication
    return bootstrap(replication_fit, inputs, loss, n_resamples=200, seed=0)


def test_resampling_draws_whole_configurations():
    groups = np.array([0, 0, 1, 1, 1, 2])
    w = resample_weights(groups, 50, seed=3)
    assert w.shape == (50, 6)
    # points of one configuration always share their multiplicity
    assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 2] == w[:, 4])
    # each resample draws 3 configurations
    assert np.all(w[:, [0, 2, 5]].sum(1) == 3)
    np.testing.assert_array_equal(w, resample_weights(groups, 50, seed=3))
    assert not np.array_equal(w, resample_weights(groups, 50, seed=4))


def test_bayesian_resampling_weighs_every_configuration():
    """Rubin's Bayesian bootstrap: a flat Dirichlet over the configurations, scaled to their
    number; no configuration is ever left out (a multinomial resample leaves out 37 % of them)."""
    groups = np.array([0, 0, 1, 1, 1, 2, 3, 4])
    w = resample_weights(groups, 4000, seed=3, scheme="bayesian")
    assert w.shape == (4000, 8) and np.all(w > 0)
    assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 2] == w[:, 4])
    np.testing.assert_allclose(w[:, [0, 2, 5, 6, 7]].sum(1), 5.0)
    # each configuration's weight is 5 x Beta(1, 4): mean 1, variance 25 * 4 / (25 * 6) = 2/3
    assert w[:, 0].mean() == pytest.approx(1.0, abs=0.05) and w[:, 0].var() == pytest.approx(2 / 3, rel=0.1)
    counts = resample_weights(groups, 4000, seed=3)
    assert (counts[:, 0] == 0).mean() == pytest.approx((4 / 5) ** 5, abs=0.03)
    np.testing.assert_array_equal(w, resample_weights(groups, 4000, seed=3, scheme="bayesian"))
    with pytest.raises(ValueError, match="unknown resampling scheme 'jackknife'"):
        resample_weights(groups, 10, seed=0, scheme="jackknife")


def test_seeded_and_reproducible(replication, replication_fit, boot):
    inputs, loss = replication
    again = bootstrap(replication_fit, inputs, loss, n_resamples=20, seed=0)
    np.testing.assert_allclose(again.theta, boot.theta[:20], rtol=1e-9)
    other = bootstrap(replication_fit, inputs, loss, n_resamples=20, seed=1)
    assert not np.allclose(other.theta, boot.theta[:20])


def test_every_resample_converged(boot):
    assert boot.n_resamples == 200
    assert boot.converged.all()
    assert boot.n_groups == 240


def test_standard_errors_match_published(boot):
    # Besiroglu et al. 2024 (4000 resamples): SE of E 0.03, alpha 0.02, beta 0.02
    assert np.std(boot.samples("E"), ddof=1) == pytest.approx(0.03, rel=0.5)
    assert np.std(boot.samples("alpha"), ddof=1) == pytest.approx(0.02, rel=0.5)
    assert np.std(boot.samples("beta"), ddof=1) == pytest.approx(0.02, rel=0.5)


def test_intervals_bracket_the_estimates(replication_fit, boot):
    intervals = boot.intervals()
    for name, value in replication_fit.params.items():
        lo, hi = intervals[name]
        assert lo < value < hi, name
    lo, hi = boot.prediction_interval(N=[7e10, 1e9], D=[1.4e12, 2e10])
    pred = replication_fit.predict(N=np.array([7e10, 1e9]), D=np.array([1.4e12, 2e10]))
    assert np.all(lo < pred) and np.all(pred < hi)
    (alloc,) = laws.compute_optimal(replication_fit, [5.76e23])
    opt = boot.optimum_interval(5.76e23)
    assert opt["N_opt"][0] < alloc.N_opt < opt["N_opt"][1]
    assert opt["D_opt"][0] < alloc.D_opt < opt["D_opt"][1]


def test_unknown_parameter_and_bad_level(boot):
    with pytest.raises(ValueError, match="unknown parameter 'C'"):
        boot.samples("C")
    with pytest.raises(ValueError, match="level must be in"):
        boot.interval("E", level=95)


def test_bootstrap_in_the_export(replication_fit, boot):
    doc = laws.export_document([replication_fit], budgets=[5.76e23], bootstrap=[boot])
    entry = doc["laws"][0]["bootstrap"]
    assert entry["n_resamples"] == 200 and entry["seed"] == 0
    assert set(entry["intervals"]) == set(replication_fit.params)
    (opt,) = entry["compute_optimal"]
    assert opt["C"] == 5.76e23 and opt["N_opt"][0] < opt["N_opt"][1]
    # without bootstrap the document has no such key (the default stays cheap)
    assert "bootstrap" not in laws.export_document([replication_fit])["laws"][0]
    (back,) = laws.load_document(doc)
    assert back == replication_fit


def test_derived_quantities(replication_fit, boot):
    fits = boot.fits()
    assert len(fits) == boot.n_resamples
    assert fits[0].params["E"] == pytest.approx(boot.samples("E")[0])
    lo, hi = boot.derived_interval(lambda f: f.params["alpha"] / (f.params["alpha"] + f.params["beta"]))
    p = replication_fit.params
    assert lo < p["alpha"] / (p["alpha"] + p["beta"]) < hi
    # the same as the dedicated N_opt interval
    n_lo, n_hi = boot.derived_interval(lambda f: laws.compute_optimal(f, [5.76e23])[0].N_opt)
    assert (n_lo, n_hi) == pytest.approx(boot.optimum_interval(5.76e23)["N_opt"], rel=1e-9)


def test_intervals_use_converged_resamples_only(boot):
    """Resamples whose refit did not converge are left out of every interval."""
    from dataclasses import replace

    conv = boot.converged.copy()
    conv[:15] = False  # 185 of 200 converged: above the 90 % warning threshold
    theta = boot.theta.copy()
    theta[:15] = 50.0  # nonsense parameters that would dominate the intervals
    partial = replace(boot, converged=conv, theta=theta)
    assert partial.n_converged == 185 and partial.has_intervals
    assert partial.samples("E").size == 185
    clean = replace(boot, converged=conv[15:], theta=boot.theta[15:], objective=boot.objective[15:])
    assert partial.intervals() == clean.intervals()
    assert partial.optimum_interval(5.76e23) == clean.optimum_interval(5.76e23)
    lo, hi = partial.prediction_interval(N=7e10, D=1.4e12)
    assert hi[0] < 3.0  # exp(50) would be the upper end with the unconverged rows
    assert len(partial.fits()) == 185


def test_too_few_converged_gives_no_interval(boot):
    from dataclasses import replace

    from laws.bootstrap import convergence_warnings

    conv = np.zeros(boot.n_resamples, dtype=bool)
    conv[:60] = True  # 30 %
    few = replace(boot, converged=conv)
    assert not few.has_intervals
    assert few.interval("E") is None and set(few.intervals().values()) == {None}
    assert few.prediction_interval(N=7e10, D=1.4e12) is None
    assert few.optimum_interval(5.76e23) == {"N_opt": None, "D_opt": None}
    assert few.derived_interval(lambda f: f.params["alpha"]) is None
    assert convergence_warnings(200, 200) == ()
    (warn,) = convergence_warnings(170, 200)
    assert "only 170 of 200 bootstrap resamples converged" in warn and "converged ones only" in warn
    (warn,) = convergence_warnings(60, 200)
    assert "no bootstrap intervals given" in warn
    # an absolute floor too: 9 of 9 is not enough for a 95 % percentile interval
    assert not replace(boot, converged=conv[:9], theta=boot.theta[:9]).has_intervals
    # ... and the warnings say so (they said nothing, and every interval was null)
    (warn,) = convergence_warnings(9, 9)
    assert "9 bootstrap resamples are too few for intervals (at least 10)" in warn


@pytest.fixture(scope="module")
def noisy_sparsity():
    from tests.laws.families_truth import CASES

    _, truth, design = CASES["sparsity"]
    law = laws.get_law("sparsity", max_starts=1024)
    x = design()
    loss = law.predict(truth, **x) * np.exp(np.random.default_rng(0).normal(0.0, 0.005, x["N"].size))
    return law, x, loss


def test_unconverged_bootstrap_warns_in_the_report(noisy_sparsity, monkeypatch):
    """The audit's case: a noisy sparsity fit stopped before converging (here by disabling the
    fitter's polish), so its resamples, which start from it, do not converge either."""
    import sys

    law, x, loss = noisy_sparsity
    monkeypatch.setattr(sys.modules["laws.fit"], "POLISH_FACTOR", 0)
    fit = laws.fit(law, x, loss)
    assert not fit.report.converged
    b = bootstrap(fit, x, loss, n_resamples=30, seed=0)
    assert b.n_converged < 0.5 * b.n_resamples
    assert b.intervals()["alpha"] is None
    assert any("did not converge" in w for w in b.warnings)
    assert any("no bootstrap intervals given" in w for w in b.warnings)
    entry = laws.export_document([fit], bootstrap=[b])["laws"][0]
    assert entry["bootstrap"]["n_converged"] == b.n_converged
    assert entry["bootstrap"]["intervals"]["alpha"] is None
    assert any(w.startswith("bootstrap: only") for w in entry["report"]["warnings"])


def test_converged_fit_bootstraps_cleanly(noisy_sparsity):
    law, x, loss = noisy_sparsity
    fit = laws.fit(law, x, loss)
    assert fit.report.converged
    b = bootstrap(fit, x, loss, n_resamples=30, seed=0)
    assert b.n_converged >= 0.9 * b.n_resamples and b.warnings == ()
    lo, hi = b.interval("alpha")
    assert lo < fit.params["alpha"] < hi


def test_resamples_without_an_optimum_widen_the_interval_instead_of_vanishing():
    """A resample whose law has no compute optimum (NaN N_opt) is unbounded: dropping it, as
    before, narrowed the interval to the resamples that happened to have one."""
    v = np.arange(1.0, 201.0)  # 200 resamples
    assert unbounded_percentile(v, 0.95) == pytest.approx(tuple(np.quantile(v, [0.025, 0.975])))
    with_nan = v.copy()
    with_nan[:4] = np.nan  # 2 % unbounded: counted at both ends
    lo, hi = unbounded_percentile(with_nan, 0.95)
    finite = np.sort(with_nan[np.isfinite(with_nan)])
    assert lo < np.nanquantile(with_nan, 0.025) and hi > np.nanquantile(with_nan, 0.975)
    assert lo == pytest.approx(np.quantile(finite, (5 - 4) / 196)) and hi == pytest.approx(np.quantile(finite, 195 / 196))
    with_nan[:6] = np.nan  # 3 %: more than a tail, no interval
    assert unbounded_percentile(with_nan, 0.95) is None
    assert unbounded_percentile(np.full(10, np.nan), 0.95) is None


def test_the_optimum_interval_is_none_when_too_many_resamples_have_no_optimum(boot):
    """Resamples with beta below zero have no compute optimum; past a tail's share, no interval."""
    assert boot.optimum_interval(1e22)["N_opt"] is not None
    beta = boot.get_law().param_names.index("beta")
    theta = boot.theta.copy()
    theta[: len(theta) // 10, beta] = -0.1  # 10 % of the resamples
    broken = dataclasses.replace(boot, theta=theta)
    assert broken.optimum_interval(1e22) == {"N_opt": None, "D_opt": None}
