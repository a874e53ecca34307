"""User-defined laws: an expression over named inputs and parameters, given in YAML.

Example (a study YAML's law entry, or a LAW.yaml file for ``isoflop fit``)::

    name: epochs
    expression: "L_inf + B / (N**alpha * E**beta)"
    inputs: [N, E]
    params: {L_inf: [1, 2, 3], B: {log: true, init: [0, 5, 10]}, alpha: [0, 0.5, 1], beta: [0, 0.5]}
    delta: 1.0e-3        # optional: Huber threshold (default 1e-3)
    residual: log        # optional: log (default) or raw

The expression is parsed with Python's ``ast`` module and checked against a whitelist (numbers,
the declared names, + - * / **, unary minus, and the functions exp, log, sqrt); nothing is ever
passed to ``eval``. An expression that is a sum of power-law terms with log-parameterised
coefficients (e.g. E + A / N**alpha + B / D**beta with E, A, B ``log: true``) is turned into the closed-form log-sum-exp design the built-in
Chinchilla law uses (:mod:`laws.custom_lse`), so it fits as fast as the built-in; any other is
compiled to a tree of closures that run on torch tensors (prediction) or on the fitter's jets
(exact derivatives, :mod:`laws.tape`), the path of the built-in formula laws. Initial values of ``log: true`` parameters are
given for log(value), as for the built-ins' grids.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from laws import jet
from laws.base import FitRecipe, LinearLSELaw, Param, grid
from laws.custom_lse import LSEForm, analyse
from laws.jet import FormulaLaw, Value

#: functions an expression may call
FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "exp": jet.exp,
    "log": jet.log,
    "sqrt": lambda v: jet.power(v, 0.5),
}
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: jet.power(a, float(b)) if isinstance(b, int | float) else a**b,
}
_SPEC_KEYS = {"name", "expression", "inputs", "params", "delta", "residual"}

Env = Mapping[str, Any]
Node = Callable[[Env], Any]


class CustomLawError(ValueError):
    """A custom law spec that cannot be used; the message names the key and the problem."""


def compile_expression(expression: str, names: set[str]) -> Node:
    """Parse ``expression`` and check it against the whitelist; returns a function of an
    environment (name -> value). Raises :class:`CustomLawError` naming what is not allowed."""
    if not isinstance(expression, str) or not expression.strip():
        raise CustomLawError("expression: expected a non-empty string")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise CustomLawError(f"expression: not a valid formula ({exc.msg} at column {exc.offset})") from None
    return _compile(tree.body, names, expression)


def _compile(node: ast.AST, names: set[str], src: str) -> Node:
    where = ast.get_source_segment(src, node) or type(node).__name__
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CustomLawError(f"expression: only numbers may appear as constants, got {where!r}")
        value = float(node.value)
        return lambda env: value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise CustomLawError(
                f"expression: unknown name {node.id!r}; declared inputs and params are {sorted(names)}"
            )
        key = node.id
        return lambda env: env[key]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op = _BINARY[type(node.op)]
        left, right = _compile(node.left, names, src), _compile(node.right, names, src)
        if isinstance(node.op, ast.Pow) and isinstance(node.right, ast.Constant):
            c = float(node.right.value)
            return lambda env: jet.power(left(env), c)
        return lambda env: op(left(env), right(env))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _compile(node.operand, names, src)
        return (lambda env: -inner(env)) if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise CustomLawError(f"expression: only the functions {sorted(FUNCTIONS)} may be called, got {where!r}")
        if node.keywords or len(node.args) != 1:
            raise CustomLawError(f"expression: {node.func.id}() takes exactly one positional argument, got {where!r}")
        fn, arg = FUNCTIONS[node.func.id], _compile(node.args[0], names, src)
        return lambda env: fn(arg(env))
    raise CustomLawError(
        f"expression: {where!r} is not allowed; use numbers, names, + - * / **, unary minus and {sorted(FUNCTIONS)}"
    )


class _Env(dict):
    """Names -> values for a compiled expression, plus ``log:NAME`` -> log(value) for inputs and
    log-parameterised parameters (the fit coordinate itself), computed when first asked for."""

    def __init__(self, law: CustomLaw, p: Mapping[str, Value], x: Mapping[str, Tensor]) -> None:
        super().__init__(x)
        self._law, self._p = law, p

    def __missing__(self, key: str) -> Any:
        if key.startswith("log:"):
            name = key[4:]
            value = self._p[f"log_{name}"] if f"log_{name}" in self._p else torch.log(self[name])
        else:
            prm = next(q for q in self._law.params if q.name == key)
            value = jet.exp(self._p[f"log_{key}"]) if prm.log else self._p[key]
        self[key] = value
        return value


def compile_log(expression: str, inputs: set[str], log_params: set[str], plain: set[str]) -> Node | None:
    """``expression`` compiled in the log domain where that is exact, the way the built-ins are
    written (Hoffmann et al. 2022, App. D.2): log(a + b) = LSE(log a, log b), log(a b) = log a +
    log b, log(a / b), log(a ** e) = e log a, log sqrt(a), log exp(a) = a; a log-parameterised
    parameter enters as its fit coordinate and an input as its log. Only sub-expressions that
    are positive by construction take this form (sums and products of positive parts): anything
    with a difference, a negation, a plain parameter as a factor or a log() call is not, and
    ``None`` (no log form for the whole expression) sends it to log(value). Returns an
    environment -> log value function, or None."""
    tree = ast.parse(expression.strip(), mode="eval").body
    names = inputs | log_params | plain
    return _log_node(tree, inputs, log_params, names, expression)


def _log_node(node: ast.AST, inputs: set[str], logp: set[str], names: set[str], src: str) -> Node | None:
    def rec(n: ast.AST) -> Node | None:
        return _log_node(n, inputs, logp, names, src)

    if isinstance(node, ast.Constant) and not isinstance(node.value, bool) and isinstance(node.value, int | float):
        if not node.value > 0:
            return None
        value = math.log(float(node.value))
        return lambda env: value
    if isinstance(node, ast.Name) and (node.id in inputs or node.id in logp):
        key = "log:" + node.id
        return lambda env: env[key]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult | ast.Div):
        left, right = rec(node.left), rec(node.right)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Add):
            return lambda env: jet.logsumexp([left(env), right(env)])
        if isinstance(node.op, ast.Mult):
            return lambda env: left(env) + right(env)
        return lambda env: left(env) - right(env)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base = rec(node.left)
        if base is None:
            return None
        exponent = _compile(node.right, names, src)
        return lambda env: exponent(env) * base(env)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 1 and not node.keywords:
        if node.func.id == "sqrt":
            inner = rec(node.args[0])
            return None if inner is None else (lambda env: 0.5 * inner(env))
        if node.func.id == "exp":
            return _compile(node.args[0], names, src)
    return None


def _param_spec(name: str, value: Any) -> tuple[Param, list[float]]:
    key = f"params.{name}"
    log = False
    init = value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"log", "init"})
        if unknown:
            raise CustomLawError(f"{key}: unknown keys {unknown}; expected 'log' and 'init'")
        if "init" not in value:
            raise CustomLawError(f"{key}: missing 'init' (the initial values, a list of numbers)")
        log = value.get("log", False)
        if not isinstance(log, bool):
            raise CustomLawError(f"{key}.log: expected true or false, got {log!r}")
        init = value["init"]
        key += ".init"
    if isinstance(init, int | float) and not isinstance(init, bool):
        init = [init]
    if (
        not isinstance(init, list | tuple)
        or not init
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in init)
    ):
        raise CustomLawError(f"{key}: expected a non-empty list of finite numbers, got {init!r}")
    return Param(name=name, log=log), [float(v) for v in init]


class CustomLaw(FormulaLaw):
    """A law compiled from a spec (see the module docstring); build it with :func:`custom_law`.

    An input with one value in every run is reported in the fit's warnings rather than refused:
    whether the expression stays identified depends on how it uses the input.
    """

    varying_inputs: tuple[str, ...] | None = ()

    def __init__(self, spec: Mapping[str, Any]) -> None:
        if not isinstance(spec, Mapping):
            raise CustomLawError(f"custom law: expected a mapping with keys {sorted(_SPEC_KEYS)}, got {type(spec).__name__}")
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            raise CustomLawError(f"custom law: unknown keys {unknown}; expected {sorted(_SPEC_KEYS)}")
        for key in ("expression", "inputs", "params"):
            if key not in spec:
                raise CustomLawError(f"custom law: missing key {key!r}")
        self.name = str(spec.get("name") or "custom")
        inputs = spec["inputs"]
        if not isinstance(inputs, list | tuple) or not inputs or not all(isinstance(i, str) and i.isidentifier() for i in inputs):
            raise CustomLawError(f"inputs: expected a non-empty list of names, got {inputs!r}")
        params = spec["params"]
        if not isinstance(params, Mapping) or not params:
            raise CustomLawError(f"params: expected a mapping of parameter name to initial values, got {params!r}")
        bad = [p for p in params if not (isinstance(p, str) and p.isidentifier())]
        if bad:
            raise CustomLawError(f"params: {bad} are not valid names")
        clash = sorted(set(inputs) & set(params) | (set(inputs) | set(params)) & set(FUNCTIONS))
        if clash:
            raise CustomLawError(f"params/inputs: names {clash} are used twice or shadow a function")
        self.inputs = tuple(inputs)
        parsed = [_param_spec(k, v) for k, v in params.items()]
        self.params = tuple(p for p, _ in parsed)
        self._init = [v for _, v in parsed]
        delta = spec.get("delta", 1e-3)
        if not isinstance(delta, int | float) or isinstance(delta, bool) or not delta > 0:
            raise CustomLawError(f"delta: expected a positive number, got {delta!r}")
        residual = spec.get("residual", "log")
        if residual not in ("log", "raw"):
            raise CustomLawError(f"residual: expected 'log' or 'raw', got {residual!r}")
        self.recipe = FitRecipe(delta=float(delta), residual=residual)
        self.formula = str(spec["expression"]).strip()
        self._expr = compile_expression(self.formula, set(self.inputs) | set(params))
        self._log_expr = compile_log(self.formula, set(self.inputs), {p.name for p in self.params if p.log},
                                     {p.name for p in self.params if not p.log})
        used = {n.id for n in ast.walk(ast.parse(self.formula, mode="eval")) if isinstance(n, ast.Name)}
        unused = [p.name for p in self.params if p.name not in used]
        if unused:
            raise CustomLawError(f"params: {unused} do not appear in the expression")
        self._spec = {
            "name": self.name,
            "expression": self.formula,
            "inputs": list(self.inputs),
            "params": {p.name: {"log": p.log, "init": list(v)} for p, v in parsed},
            "delta": float(delta),
            "residual": residual,
        }

    def log_formula(self, p: Mapping[str, Value], x: Mapping[str, Tensor]) -> Value:
        env = _Env(self, p, x)
        if self._log_expr is not None:
            return self._log_expr(env)
        return jet.log(self._expr(env))

    def init_grid(self) -> Tensor:
        return grid(*self._init)

    def spec(self) -> dict[str, Any]:
        return {**self._spec, "params": {k: dict(v) for k, v in self._spec["params"].items()}}


class LinearCustomLaw(CustomLaw, LinearLSELaw):
    """A custom law whose expression is a sum of power-law terms (:mod:`laws.custom_lse`): fitted
    through the closed-form log-sum-exp path of the built-in Chinchilla law."""

    def __init__(self, spec: Mapping[str, Any], form: LSEForm) -> None:
        super().__init__(spec)
        self._form = form

    def design(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self._form.design(x, self.n_params)

    def log_predict(self, theta_bp: Tensor, x: Mapping[str, Tensor]) -> Tensor:
        return LinearLSELaw.log_predict(self, theta_bp, x)


def custom_law(spec: Mapping[str, Any]) -> CustomLaw:
    """A :class:`CustomLaw` from its spec (a mapping, e.g. loaded from YAML); a
    :class:`LinearCustomLaw` when the expression is a sum of power-law terms."""
    law = CustomLaw(spec)
    form = analyse(law.formula, law.inputs, [p.log for p in law.params], law.param_names)
    return law if form is None else LinearCustomLaw(spec, form)
