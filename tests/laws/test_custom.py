"""Custom laws from a YAML expression: safe parsing, exact derivatives, same optimum as built-ins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import laws
from laws.chinchilla import HOFFMANN_PARAMS
from laws.objective import Objective
from tests.laws.conftest import nd_design

ISSUE_EXAMPLE = """
name: epochs
expression: "L_inf + B / (N**alpha * E**beta)"
inputs: [N, E]
params: {L_inf: [1, 2, 3], B: {log: true, init: [0, 5, 10]}, alpha: [0, 0.5, 1], beta: [0, 0.5]}
"""

CHINCHILLA = {
    "name": "my_chinchilla",
    "expression": "E + A / N**alpha + B / D**beta",
    "inputs": ["N", "D"],
    "params": {
        "E": {"log": True, "init": [-1.0, 0.0, 1.0]},
        "A": {"log": True, "init": [0.0, 5.0, 10.0]},
        "B": {"log": True, "init": [0.0, 5.0, 10.0]},
        "alpha": [0.0, 0.5, 1.0],
        "beta": [0.0, 0.5, 1.0],
    },
}


def test_issue_example_recovers_its_parameters():
    law = laws.custom_law(yaml.safe_load(ISSUE_EXAMPLE))
    assert law.inputs == ("N", "E") and law.param_names == ("L_inf", "B", "alpha", "beta")
    assert law.init_grid().shape == (3 * 3 * 3 * 2, 4)
    n, e = [a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e10, 6), np.array([1.0, 2.0, 4.0, 8.0, 16.0]))]
    truth = {"L_inf": 1.9, "B": 300.0, "alpha": 0.3, "beta": 0.15}
    fit = laws.fit(law, {"N": n, "E": e}, law.predict(truth, N=n, E=e))
    for k, v in truth.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-5), k
    assert fit.law == "epochs"
    # exported and loaded back without the YAML
    (back,) = laws.load_document(laws.export_document([fit]))
    assert back.predict(N=3e9, E=4.0) == pytest.approx(float(fit.predict(N=3e9, E=4.0)), rel=1e-12)


def test_same_optimum_as_the_builtin(replication):
    inputs, loss = replication
    custom = laws.custom_law(CHINCHILLA)
    builtin = laws.get_law("chinchilla")
    init = custom.init_grid()[::8]  # 31 starts keep the test quick; both laws get the same
    a = laws.fit(custom, inputs, loss, init=init)
    b = laws.fit(builtin, inputs, loss, init=init)
    assert a.objective == pytest.approx(b.objective, rel=1e-9)
    for k in HOFFMANN_PARAMS:
        assert a.params[k] == pytest.approx(b.params[k], rel=1e-5)


def test_derivatives_match_autodiff():
    law = laws.custom_law({**CHINCHILLA, "expression": "E + sqrt(A) / N**alpha + exp(log(B)) / D**(beta * 1.0) - 0 * N"})
    n, d = nd_design()
    loss = laws.get_law("chinchilla").predict(HOFFMANN_PARAMS, N=n, D=d)
    obj = Objective(law, law.prepare_inputs({"N": n, "D": d}), torch.from_numpy(loss))
    theta = law.init_grid()[::40]
    _, grad, hess = obj.jet(theta)
    for b in range(theta.shape[0]):
        torch.testing.assert_close(grad[b], torch.func.grad(obj.scalar)(theta[b]), rtol=1e-8, atol=1e-11)
        torch.testing.assert_close(hess[b], torch.func.hessian(obj.scalar)(theta[b]), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('true')", "only the functions"),
        ("N.__class__", "is not allowed"),
        ("(lambda: 1)()", "only the functions"),
        ("[A for A in N]", "is not allowed"),
        ("N[0] + A", "is not allowed"),
        ("A if N else 1", "is not allowed"),
        ("'A' + N", "only numbers"),
        ("A + M", "unknown name 'M'"),
        ("exp(A, N)", "exactly one positional argument"),
        ("A +", "not a valid formula"),
        ("A < N", "is not allowed"),
        ("A @ N", "is not allowed"),
    ],
)
def test_unsafe_or_invalid_expressions_are_rejected(expression, message):
    spec = {"expression": expression, "inputs": ["N"], "params": {"A": [1.0]}}
    with pytest.raises(laws.CustomLawError, match=message):
        laws.custom_law(spec)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"params": {"A": {"log": "yes", "init": [1]}}}, r"params.A.log: expected true or false"),
        ({"params": {"A": {"init": []}}}, r"params.A.init: expected a non-empty list"),
        ({"params": {"A": {"start": [1]}}}, r"params.A: unknown keys \['start'\]"),
        ({"params": {"A": [1], "C": [2]}}, r"params: \['C'\] do not appear"),
        ({"inputs": "N"}, "inputs: expected a non-empty list"),
        ({"delta": -1}, "delta: expected a positive number"),
        ({"residual": "abs"}, "residual: expected 'log' or 'raw'"),
        ({"colour": 1}, r"unknown keys \['colour'\]"),
        ({"inputs": ["N", "exp"]}, "shadow a function"),
    ],
)
def test_bad_specs_name_the_key(change, message):
    spec = {"expression": "A / N", "inputs": ["N"], "params": {"A": [1.0]}, **change}
    with pytest.raises(laws.CustomLawError, match=message):
        laws.custom_law(spec)


def test_get_law_points_to_custom_law():
    with pytest.raises(ValueError, match="custom_law"):
        laws.get_law("custom")


def test_power_law_sums_take_the_builtin_closed_form_path(replication):
    """E + A/N**alpha + B/D**beta (log E, A, B) is a log-sum-exp of linear terms: the custom law
    gets the built-in's design, so the same objective, derivatives and optimum."""
    from laws.custom import LinearCustomLaw

    custom = laws.custom_law(CHINCHILLA)
    assert isinstance(custom, LinearCustomLaw) and isinstance(custom, laws.LinearLSELaw)
    builtin = laws.get_law("chinchilla")
    inputs, loss = replication
    x = builtin.prepare_inputs(inputs)
    theta = custom.init_grid()[::7]
    a = Objective(custom, x, torch.from_numpy(loss)).jet(theta)
    b = Objective(builtin, x, torch.from_numpy(loss)).jet(theta)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-14)
    # the formula path of the same expression agrees too
    formula = laws.CustomLaw(CHINCHILLA)
    torch.testing.assert_close(Objective(formula, x, torch.from_numpy(loss)).jet(theta)[2], a[2], rtol=1e-9, atol=1e-12)
    # and it round-trips through its spec
    assert isinstance(laws.law_from_spec(custom.spec()), LinearCustomLaw)


@pytest.mark.parametrize(
    ("expression", "linear"),
    [
        ("E + A * N**(-alpha) + B / D**(2 * beta - 0.1)", True),
        ("E + (A / N**alpha + B / D**beta)", True),
        ("2 * (E + A / N**alpha) + sqrt(B) / D**beta", True),
        ("E + A / N**alpha - B / D**beta", False),  # a difference is no log-sum-exp
        ("E + (A / N**alpha + B / D**beta)**alpha", False),  # a sum to a parameter power
        ("E + A * exp(alpha) / N**alpha + B / D**beta", False),  # calls stay on the formula path
        ("E + alpha * A / N**alpha + B / D**beta", False),  # a plain parameter as a factor
    ],
)
def test_which_expressions_are_power_law_sums(expression, linear):
    from laws.custom import LinearCustomLaw

    law = laws.custom_law({**CHINCHILLA, "expression": expression})
    assert isinstance(law, LinearCustomLaw) is linear
    # either way the derivatives are exact
    n, d = nd_design()
    loss = laws.get_law("chinchilla").predict(HOFFMANN_PARAMS, N=n, D=d)
    obj = Objective(law, law.prepare_inputs({"N": n, "D": d}), torch.from_numpy(loss))
    theta = law.from_natural({**HOFFMANN_PARAMS, "alpha": 0.3})[None]
    _, grad, hess = obj.jet(theta)
    torch.testing.assert_close(grad[0], torch.func.grad(obj.scalar)(theta[0]), rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(hess[0], torch.func.hessian(obj.scalar)(theta[0]), rtol=1e-7, atol=1e-9)


def test_power_law_sum_needs_positive_inputs():
    law = laws.custom_law(CHINCHILLA)
    n, d = nd_design()
    loss = laws.get_law("chinchilla").predict(HOFFMANN_PARAMS, N=n, D=d)
    n = n.copy()
    n[3] = -1.0
    with pytest.raises(ValueError, match=r"input N must be positive"):
        laws.fit(law, {"N": n, "D": d}, loss, init=law.init_grid()[:2])


@pytest.mark.parametrize(
    ("expression", "log_form"),
    [
        ("E + (A / N**alpha + B / D**beta)**alpha", True),
        ("E + A * exp(alpha) / N**alpha + sqrt(B) / D**beta", True),
        ("E + A / N**alpha - B / D**beta", False),
        ("E + A / N**alpha + B / D**beta + alpha", False),  # a plain parameter: its sign is unknown
    ],
)
def test_formula_path_computes_in_log_space_where_exact(expression, log_form):
    """Positive sums and products are compiled as the built-ins are written (LSE of logs);
    predictions agree with the expression evaluated directly."""
    law = laws.CustomLaw({**CHINCHILLA, "expression": expression})
    assert (law._log_expr is not None) is log_form
    n, d = nd_design()
    params = {**HOFFMANN_PARAMS, "alpha": 0.3}
    direct = law._expr({"N": torch.from_numpy(n), "D": torch.from_numpy(d),
                        **{k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}})
    np.testing.assert_allclose(law.predict(params, N=n, D=d), direct.numpy(), rtol=1e-12)


def test_a_custom_law_of_an_input_that_may_be_zero_fits_dense_runs() -> None:
    """A term in the sparsity S (zero for dense runs) keeps the formula path: its logarithm would
    be -inf on the closed-form path."""
    import numpy as np

    import laws
    from laws.custom import custom_law

    spec = {"expression": "E + A / N**alpha + B / D**beta + C * S", "inputs": ["N", "D", "S"],
            "params": {"E": [1, 2], "A": {"log": True, "init": [5]}, "B": {"log": True, "init": [5]},
                       "alpha": [0.3], "beta": [0.3], "C": [0.0, 0.5]}}
    law = custom_law(spec)
    n, d, s = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e9, 4), np.geomspace(1e9, 1e11, 4), [0.0, 0.5, 0.75]))
    truth = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37, "C": 0.2}
    fit = laws.fit(law, {"N": n, "D": d, "S": s}, law.predict(truth, N=n, D=d, S=s))
    assert fit.params == pytest.approx(truth, rel=1e-4)
