"""The Hessian of a weighted sum of a formula's values, without per-point Hessians.

The fitter needs, per start, the q-weighted sum of the per-point Hessians of the log-prediction,
sum_i q_i Hess(x_i) (:mod:`laws.objective`), not the per-point Hessians themselves, which
:class:`laws.jet.Jet` propagates at a cost of [B, n, P, P] per formula node. Here a formula is
evaluated once with first-order forward tangents (value [B, n] and gradient [B, n, P] per node),
recording every node; a reverse sweep seeded with q then gives each node's adjoint
a_v = d(sum_i q_i x_i)/dv, and the Hessian is the sum over nodes of the adjoint times the node's
local second derivatives contracted with the gradients of its arguments:

    Hess(sum_i q_i x_i) = sum_v a_v sum_jk (d2 phi_v / du_j du_k) grad u_j grad u_k^T

(the second-order adjoint identity, e.g. Griewank & Walther 2008, "Evaluating Derivatives",
Ch. 4-5; Gower & Mello 2012, "edge pushing"). Leaves are fit coordinates (linear) or constants,
so they contribute nothing. Every term is a weighted outer product of [B, n, P] tangents, so the
whole Hessian is one batched GEMM. Formulas written for :class:`laws.jet.Jet` run unchanged: the
functions of :mod:`laws.jet` dispatch on :class:`TapeJet`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor

_counter = itertools.count()

#: numbers and tensors enter formulas as constants
Constant = Union[Tensor, float, int]  # noqa: UP007


class TapeJet:
    """A formula value with its first-order tangent ``g`` [.., P] and what the reverse sweep
    needs: its arguments with the local first derivatives (``parents``: (node, d [B, n])) and its
    local second-order terms (``second``: (coefficient [B, n], tangent a, tangent b), meaning
    coefficient x a b^T before symmetrisation)."""

    __slots__ = ("g", "order", "parents", "second", "v")

    def __init__(
        self,
        v: Tensor,
        g: Tensor,
        parents: Sequence[tuple[TapeJet, Tensor | float]] = (),
        second: Sequence[tuple[Tensor | float, Tensor, Tensor]] = (),
    ) -> None:
        self.v = v
        self.g = g
        self.parents = tuple(parents)
        self.second = tuple(second)
        self.order = next(_counter)

    # -- arithmetic ------------------------------------------------------------------------------
    def __add__(self, other: Operand) -> TapeJet:
        if isinstance(other, TapeJet):
            return TapeJet(self.v + other.v, self.g + other.g, [(self, 1.0), (other, 1.0)])
        return TapeJet(self.v + _const(other), self.g, [(self, 1.0)])

    __radd__ = __add__

    def __neg__(self) -> TapeJet:
        return TapeJet(-self.v, -self.g, [(self, -1.0)])

    def __sub__(self, other: Operand) -> TapeJet:
        return self + (-other if isinstance(other, TapeJet) else -_const(other))

    def __rsub__(self, other: Operand) -> TapeJet:
        return (-self) + other

    def __mul__(self, other: Operand) -> TapeJet:
        if isinstance(other, TapeJet):
            # d2(ab)/da db = 1: the pair term a b^T + b a^T, i.e. 2 a b^T before symmetrisation
            return TapeJet(
                self.v * other.v,
                self.g * other.v[..., None] + other.g * self.v[..., None],
                [(self, other.v), (other, self.v)],
                [(2.0, self.g, other.g)],
            )
        c = _const(other)
        return TapeJet(self.v * c, self.g * _col(c), [(self, c)])

    __rmul__ = __mul__

    def __truediv__(self, other: Operand) -> TapeJet:
        if isinstance(other, TapeJet):
            return self * power(other, -1.0)
        return self * (1.0 / _const(other))

    def __rtruediv__(self, other: Operand) -> TapeJet:
        return power(self, -1.0) * other

    def __pow__(self, other: Operand) -> TapeJet:
        if isinstance(other, int | float):
            return power(self, float(other))
        return exp(other * log(self))

    def __rpow__(self, other: Operand) -> TapeJet:
        return exp(self * torch.log(_const(other)))


Operand = Union[TapeJet, Tensor, float, int]  # noqa: UP007


def _const(x: Constant) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def _col(c: Tensor) -> Tensor:
    """A value broadcast against a tangent: a trailing axis for P."""
    return c[..., None] if c.ndim else c


def _unary(x: TapeJet, f: Tensor, f1: Tensor, f2: Tensor) -> TapeJet:
    """y = phi(x): tangent phi'(x) g_x; second-order term phi''(x) g_x g_x^T."""
    return TapeJet(f, x.g * f1[..., None], [(x, f1)], [(f2, x.g, x.g)])


def exp(x: TapeJet) -> TapeJet:
    e = torch.exp(x.v)
    return _unary(x, e, e, e)


def log(x: TapeJet) -> TapeJet:
    inv = 1.0 / x.v
    return _unary(x, torch.log(x.v), inv, -inv * inv)


def power(x: TapeJet, c: float) -> TapeJet:
    """x ** c for a constant exponent c."""
    return _unary(x, x.v**c, c * x.v ** (c - 1.0), c * (c - 1.0) * x.v ** (c - 2.0))


def logsumexp(terms: Sequence[Operand]) -> TapeJet:
    """log sum_t exp(u_t): first derivatives the softmax w; second derivatives
    diag(w) - w w^T, i.e. sum_t w_t g_t g_t^T - g g^T with g = sum_t w_t g_t."""
    jets = [t for t in terms if isinstance(t, TapeJet)]
    vals = torch.broadcast_tensors(*(t.v if isinstance(t, TapeJet) else _const(t) for t in terms))
    stacked = torch.stack(vals, dim=0)
    out = torch.logsumexp(stacked, dim=0)
    w = torch.exp(stacked - out)
    g: Tensor | None = None
    parents: list[tuple[TapeJet, Tensor | float]] = []
    second: list[tuple[Tensor | float, Tensor, Tensor]] = []
    for wt, t in zip(w, terms, strict=True):
        if not isinstance(t, TapeJet):
            continue
        term = t.g * wt[..., None]
        g = term if g is None else g + term
        parents.append((t, wt))
        second.append((wt, t.g, t.g))
    assert g is not None and jets
    second.append((-1.0, g, g))
    return TapeJet(out, g, parents, second)


def leaves(theta_bp: Tensor, names: Sequence[str]) -> dict[str, TapeJet]:
    """Fit coordinates as formula leaves: value [B, 1], one-hot tangent [1, 1, P]."""
    p = theta_bp.shape[1]
    eye = torch.eye(p, dtype=theta_bp.dtype)
    return {name: TapeJet(theta_bp[:, i, None], eye[i].view(1, 1, p)) for i, name in enumerate(names)}


def weighted_hessian(out: TapeJet, q: Tensor, b: int, n: int) -> Tensor:
    """sum_i q_i Hess(x_i) [B, P, P] for the formula output ``out`` (values [B, n]) and point
    weights ``q`` [B, n], by the reverse sweep of the module docstring."""
    p = out.g.shape[-1]
    nodes: dict[int, TapeJet] = {}
    stack = [out]
    while stack:  # every recorded node the output depends on
        node = stack.pop()
        if id(node) in nodes:
            continue
        nodes[id(node)] = node
        stack.extend(parent for parent, _ in node.parents if parent.parents or parent.second)
    adjoint: dict[int, Tensor] = {id(out): q}
    us: list[Tensor] = []
    vs: list[Tensor] = []
    for node in sorted(nodes.values(), key=lambda nd: nd.order, reverse=True):
        a = adjoint.pop(id(node), None)
        if a is None:
            continue
        for coef, ga, gb in node.second:
            us.append((ga * (a * coef)[..., None]).expand(b, n, p))
            vs.append(gb.expand(b, n, p))
        for parent, d in node.parents:
            if parent.parents or parent.second:
                contribution = a * d
                key = id(parent)
                adjoint[key] = contribution if key not in adjoint else adjoint[key] + contribution
    if not us:
        return torch.zeros(b, p, p, dtype=q.dtype)
    u = torch.cat(us, dim=1)
    v = torch.cat(vs, dim=1)
    h = torch.bmm(u.transpose(1, 2), v)
    return 0.5 * (h + h.transpose(1, 2))
