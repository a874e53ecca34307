"""Bootstrap over configurations: seeded, batched, with intervals on parameters and recipes."""

from __future__ import annotations

import numpy as np
import pytest

import laws
from laws.bootstrap import bootstrap, resample_weights


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
