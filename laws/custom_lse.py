"""Custom expressions that are sums of power-law terms get the built-ins' closed-form path.

A term c * prod_k P_k^(m_k) * prod_j x_j^(e_j) with P_k log-parameterised parameters, x_j inputs,
constant m_k and exponents e_j linear in the plain (not log) parameters, has a logarithm linear
in the fit vector:

    log term = log c + sum_k m_k log P_k + sum_j e_j(theta) log x_j

so an expression that is a sum of such terms is a :class:`laws.base.LinearLSELaw`
(log L = LSE_t(c_t + Z_t . theta), Hoffmann et al. 2022, App. D.2) and the fitter uses the same
exact closed-form derivatives and batched GEMM as for the built-in Chinchilla law. Anything else
(differences, exp/log calls, a plain parameter outside an exponent, a parameter-dependent base
raised to a parameter) returns None from :func:`analyse` and keeps the formula path.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from laws.validate import may_be_nonpositive


class NotLinear(Exception):
    """The expression (or a part of it) is not a sum of log-linear terms."""


@dataclass
class LogLinear:
    """log of one term: c0 + sum_p a[p] theta_p + sum_x (b[x] + sum_p d[x, p] theta_p) log x."""

    c0: float = 0.0
    a: dict[int, float] = field(default_factory=dict)
    b: dict[str, float] = field(default_factory=dict)
    d: dict[tuple[str, int], float] = field(default_factory=dict)

    def times(self, k: float) -> LogLinear:
        """log(term^k)."""
        return LogLinear(self.c0 * k, {p: v * k for p, v in self.a.items()}, {x: v * k for x, v in self.b.items()},
                         {q: v * k for q, v in self.d.items()})

    def plus(self, other: LogLinear) -> LogLinear:
        """log(term x other)."""
        return LogLinear(self.c0 + other.c0, _merge(self.a, other.a), _merge(self.b, other.b), _merge(self.d, other.d))

    @property
    def constant(self) -> bool:
        """Whether the term depends on no parameter."""
        return not self.a and not self.d


def _merge(x: dict, y: dict) -> dict:
    out = dict(x)
    for k, v in y.items():
        out[k] = out.get(k, 0.0) + v
    return out


@dataclass(frozen=True)
class LSEForm:
    """The terms of a log-linear-sum expression and the inputs whose logarithms they use."""

    terms: tuple[LogLinear, ...]
    log_inputs: tuple[str, ...]

    def design(self, x: Mapping[str, Tensor], n_params: int) -> tuple[Tensor, Tensor]:
        """Z [n, T, P] and c [n, T] of :meth:`laws.base.LinearLSELaw.design`."""
        for name in self.log_inputs:
            bad = (x[name] <= 0).nonzero().flatten()
            if bad.numel():
                i = int(bad[0])
                raise ValueError(f"input {name} must be positive (the law takes its power); got {name}[{i}] = "
                                 f"{float(x[name][i])!r}")
        logs = {name: torch.log(x[name]) for name in self.log_inputs}
        n = next(iter(x.values())).shape[0]
        z = torch.zeros(n, len(self.terms), n_params, dtype=torch.float64)
        c = torch.zeros(n, len(self.terms), dtype=torch.float64)
        for t, term in enumerate(self.terms):
            c[:, t] = term.c0
            for name, v in term.b.items():
                c[:, t] += v * logs[name]
            for p, v in term.a.items():
                z[:, t, p] += v
            for (name, p), v in term.d.items():
                z[:, t, p] += v * logs[name]
        return z, c


def analyse(expression: str, inputs: Sequence[str], log_params: Sequence[bool], names: Sequence[str]) -> LSEForm | None:
    """The log-linear-sum form of ``expression`` (already checked by :mod:`laws.custom`), or None.

    ``names``/``log_params``: the parameters in fit-vector order and whether each is
    log-parameterised.
    """
    tree = ast.parse(expression.strip(), mode="eval").body
    ctx = _Context(set(inputs), {n: i for i, n in enumerate(names)}, dict(zip(names, log_params, strict=True)))
    try:
        terms = ctx.terms(tree)
    except NotLinear:
        return None
    if all(t.constant for t in terms):
        return None
    used = sorted({name for t in terms for name in t.b} | {name for t in terms for name, _ in t.d})
    if any(may_be_nonpositive(name) for name in used):
        return None  # its logarithm may be -inf (S = 0, p = 0, h_i = 0): the formula path takes it
    return LSEForm(terms=tuple(terms), log_inputs=tuple(used))


@dataclass
class _Context:
    inputs: set[str]
    index: dict[str, int]
    is_log: dict[str, bool]

    def terms(self, node: ast.AST) -> list[LogLinear]:
        """The expression as a sum of log-linear terms."""
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.terms(node.left) + self.terms(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            den = self.term(node.right).times(-1.0)
            return [t.plus(den) for t in self.terms(node.left)]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            left, right = self.terms(node.left), self.terms(node.right)
            if len(left) > 1 and len(right) > 1:
                raise NotLinear
            return [a.plus(b) for a in left for b in right]
        return [self.term(node)]

    def term(self, node: ast.AST) -> LogLinear:
        """One log-linear term (a product of powers)."""
        if isinstance(node, ast.Constant):
            if not float(node.value) > 0:
                raise NotLinear
            return LogLinear(c0=math.log(float(node.value)))
        if isinstance(node, ast.Name):
            if node.id in self.inputs:
                return LogLinear(b={node.id: 1.0})
            if self.is_log.get(node.id):
                return LogLinear(a={self.index[node.id]: 1.0})
            raise NotLinear  # a plain parameter as a factor: log of it is not linear
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            return self.term(node.left).plus(self.term(node.right))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            return self.term(node.left).plus(self.term(node.right).times(-1.0))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            base = self.term(node.left)
            const, coefs = self.linear(node.right)
            if not coefs:
                return base.times(const)
            if not base.constant:
                raise NotLinear  # a parameter-dependent base to a parameter power
            out = base.times(const)
            for p, k in coefs.items():
                out.a[p] = out.a.get(p, 0.0) + k * base.c0
                for name, v in base.b.items():
                    out.d[(name, p)] = out.d.get((name, p), 0.0) + k * v
            return out
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sqrt":
            return self.term(node.args[0]).times(0.5)
        raise NotLinear

    def linear(self, node: ast.AST) -> tuple[float, dict[int, float]]:
        """An exponent as const + sum_p k_p theta_p over plain parameters."""
        if isinstance(node, ast.Constant):
            return float(node.value), {}
        if isinstance(node, ast.Name):
            if node.id in self.index and not self.is_log[node.id]:
                return 0.0, {self.index[node.id]: 1.0}
            raise NotLinear
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            c, k = self.linear(node.operand)
            return (-c, {p: -v for p, v in k.items()}) if isinstance(node.op, ast.USub) else (c, k)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
            (c1, k1), (c2, k2) = self.linear(node.left), self.linear(node.right)
            s = 1.0 if isinstance(node.op, ast.Add) else -1.0
            return c1 + s * c2, _merge(k1, {p: s * v for p, v in k2.items()})
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Div):
            (c1, k1), (c2, k2) = self.linear(node.left), self.linear(node.right)
            if isinstance(node.op, ast.Div):
                if k2 or c2 == 0:
                    raise NotLinear
                return c1 / c2, {p: v / c2 for p, v in k1.items()}
            if k1 and k2:
                raise NotLinear
            if k2:
                (c1, k1), (c2, k2) = (c2, k2), (c1, k1)
            return c1 * c2, {p: v * c2 for p, v in k1.items()}
        raise NotLinear
