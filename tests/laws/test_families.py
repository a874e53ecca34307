"""Contract tests every law family inherits: names, specs, derivatives, recovery of known values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import laws
from laws.objective import Objective
from tests.laws.families_truth import CASES

FAMILIES = sorted(CASES)


def build(name: str) -> laws.ScalingLaw:
    opts, _, _ = CASES[name]
    return laws.get_law(name, **opts)


def test_every_registered_family_has_a_case():
    assert set(laws.LAW_NAMES) == set(CASES)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_contract(name):
    law = build(name)
    assert law.name == name and law.formula
    assert len(set(law.param_names)) == law.n_params
    grid = law.init_grid()
    assert grid.dtype == torch.float64 and grid.shape[1] == law.n_params and grid.shape[0] >= 1
    # the spec rebuilds an identical law
    again = laws.law_from_spec(law.spec())
    assert again.param_names == law.param_names and again.inputs == law.inputs
    torch.testing.assert_close(again.init_grid(), grid)
    # natural <-> fit parameterisation
    _, truth, _ = CASES[name]
    assert law.to_natural(law.from_natural(truth)) == pytest.approx(truth, rel=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_exact_derivatives_match_autodiff(name):
    law = build(name)
    _, truth, design = CASES[name]
    x = design()
    rng = np.random.default_rng(0)
    loss = law.predict(truth, **x) * np.exp(rng.normal(0, 0.01, next(iter(x.values())).size))
    obj = Objective(law, law.prepare_inputs(x), torch.from_numpy(loss))
    gen = torch.Generator().manual_seed(0)
    theta = law.from_natural(truth)[None] + 0.05 * torch.randn(3, law.n_params, dtype=torch.float64, generator=gen)
    value, grad, hess = obj.jet(theta)
    for b in range(theta.shape[0]):
        assert value[b] == pytest.approx(float(obj.scalar(theta[b])), rel=1e-10)
        torch.testing.assert_close(grad[b], torch.func.grad(obj.scalar)(theta[b]), rtol=1e-8, atol=1e-11)
        torch.testing.assert_close(hess[b], torch.func.hessian(obj.scalar)(theta[b]), rtol=1e-7, atol=1e-9)


def test_distillation_published_check_values():
    # Busbridge et al. 2025: student 546M on 10.9B tokens, teachers of loss 2.5149, 2.2509, 2.0036
    from laws.distillation import BUSBRIDGE_DISTILLATION_PARAMS

    law = laws.get_law("distillation")
    pred = law.predict(BUSBRIDGE_DISTILLATION_PARAMS, N=546e6, D=10.9e9, L_T=[2.5149, 2.2509, 2.0036])
    np.testing.assert_allclose(pred, [2.5428, 2.4238, 2.3760], atol=2e-4)


def test_mixture_laws_reject_one_domain():
    with pytest.raises(ValueError, match="k >= 2"):
        laws.get_law("mixture_additive", k=1)


#: family -> constructor options that keep the fast recovery tests quick (seeded start subsets)
QUICK = {
    "forgetting": {},
    "forgetting_ft": {},
    "sparsity": {"max_starts": 1024},
    "mixture_additive": {"k": 2, "max_starts": 16},
}


def recover(name: str, **options):
    _, truth, design = CASES[name]
    opts = {**CASES[name][0], **options}
    law = laws.get_law(name, **opts)
    x = design()
    return law, truth, x, laws.fit(law, x, law.predict(truth, **x))


@pytest.mark.parametrize("name", sorted(QUICK))
def test_exact_recovery(name):
    _, truth, _, fit = recover(name, **QUICK[name])
    assert fit.report.converged
    assert fit.report.n_best > 1
    for k, v in truth.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-5), k


def test_chinchilla_gamma_exact_recovery_on_a_grid_subset():
    law = laws.get_law("chinchilla_gamma")
    _, truth, design = CASES["chinchilla_gamma"]
    x = design()
    fit = laws.fit(law, x, law.predict(truth, **x), init=law.init_grid()[::8])
    for k, v in truth.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-5), k


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixture_joint", "sparsity", "mixture_additive"])
def test_exact_recovery_default_grid(name):
    _, truth, _, fit = recover(name)
    assert fit.report.converged
    for k, v in truth.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-5), k


def test_distillation_exact_recovery():
    """All nine published coefficients (Busbridge et al. 2025, Table 6) from noiseless data, with
    the default 4096-start subset (about 6 s; recovered to ~1e-8)."""
    law, truth, x, fit = recover("distillation")
    assert fit.report.converged
    assert set(fit.params) == set(truth) and len(truth) == 9
    for k, v in truth.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-6), k
    target = {"N": np.array([546e6, 3e9]), "D": np.array([10.9e9, 1e12]), "L_T": np.array([2.2509, 2.0])}
    np.testing.assert_allclose(fit.predict(**target), law.predict(truth, **target), rtol=1e-9)


@pytest.mark.parametrize("name", ["mixture_additive", "mixture_joint"])
def test_mixtures_accept_a_domain_left_out(name):
    """Runs with a zero weight for a domain: finite predictions, objective and derivatives."""
    _, truth, design = CASES[name]
    law = laws.get_law(name, k=2, max_starts=8)
    x = design()
    x["h1"][:5], x["h2"][:5] = 0.0, 1.0
    loss = law.predict(truth, **x)
    assert np.all(np.isfinite(loss))
    obj = Objective(law, law.prepare_inputs(x), torch.from_numpy(loss))
    value, grad, hess = obj.jet(law.from_natural(truth)[None])
    assert torch.isfinite(grad).all() and torch.isfinite(hess).all()
    assert float(value[0]) == pytest.approx(0.0, abs=1e-20)


def test_distillation_grid_leaves_out_f1_zero():
    """The published grid's 216,000 starts less its 54,000 with f1 = 0, where the law divides by
    f1 and the objective is NaN at every start."""
    law = laws.get_law("distillation", max_starts=None)
    grid = law.init_grid()
    assert grid.shape == (162_000, 9)
    f1 = grid[:, law.fit_param_names.index("f1")]
    assert sorted(set(f1.tolist())) == [0.5, 1.0, 1.5]
    assert laws.get_law("distillation").init_grid().shape == (4096, 9)
    _, truth, design = CASES["distillation"]
    x = design()
    obj = Objective(law, law.prepare_inputs(x), torch.from_numpy(law.predict(truth, **x)))
    at_zero = law.from_natural({**truth, "f1": 0.0})[None]
    assert not torch.isfinite(obj.value(at_zero)).any()


def test_value_screen_reaches_the_replication_optimum(replication, replication_fit):
    """Screen(iterations=0) ranks starts by their objective alone, then continues the best."""
    inputs, loss = replication
    fit = laws.fit("chinchilla", inputs, loss, screen=laws.Screen(iterations=0, keep=64))
    assert "ranked by their objective, the best 64" in fit.report.method
    assert fit.objective == pytest.approx(replication_fit.objective, rel=1e-9)
