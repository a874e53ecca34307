"""The objective's exact derivatives agree with automatic differentiation, in every code path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import laws
from laws import objective as objective_module
from laws.base import FitRecipe
from laws.objective import Objective, huber
from tests.laws.conftest import nd_design


def make(name: str, recipe: FitRecipe | None = None, weights: torch.Tensor | None = None) -> Objective:
    law = laws.get_law(name)
    n, d = nd_design()
    rng = np.random.default_rng(0)
    truth = {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28, "gamma": 0.9}
    loss = law.predict({k: truth[k] for k in law.param_names}, N=n, D=d) * np.exp(rng.normal(0, 0.01, n.size))
    return Objective(law, law.prepare_inputs({"N": n, "D": d}), torch.from_numpy(loss), recipe=recipe,
                     weights=weights)


def thetas(law: laws.ScalingLaw, k: int = 6) -> torch.Tensor:
    g = law.init_grid()
    idx = torch.randperm(g.shape[0], generator=torch.Generator().manual_seed(0))[:k]
    center = law.from_natural({"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28, "gamma": 0.9}
                              if law.n_params == 6 else {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28})
    return torch.cat([center[None] + 0.05 * torch.randn(k, law.n_params, dtype=torch.float64,
                                                         generator=torch.Generator().manual_seed(1)), g[idx]])


@pytest.mark.parametrize("name", ["chinchilla", "chinchilla_gamma"])
@pytest.mark.parametrize("residual", ["log", "raw"])
def test_jet_matches_autodiff(name, residual):
    obj = make(name, FitRecipe(delta=1e-2, residual=residual))
    th = thetas(obj.law)
    value, grad, hess = obj.jet(th)
    for b in range(th.shape[0]):
        assert value[b] == pytest.approx(float(obj.scalar(th[b])), rel=1e-12)
        torch.testing.assert_close(grad[b], torch.func.grad(obj.scalar)(th[b]), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(hess[b], torch.func.hessian(obj.scalar)(th[b]), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(obj.value(th), value, rtol=1e-12, atol=0)


def test_row_weights_follow_rows():
    w = torch.from_numpy(np.random.default_rng(0).integers(0, 3, (4, 64)).astype(np.float64))
    obj = make("chinchilla", weights=w)
    th = thetas(obj.law, 2)[:4]
    rows = torch.tensor([2, 0, 3, 1])
    value, grad, _ = obj.jet(th, rows)
    for b, r in enumerate(rows.tolist()):
        single = make("chinchilla", weights=w[r])
        assert value[b] == pytest.approx(float(single.scalar(th[b])), rel=1e-12)
        torch.testing.assert_close(grad[b], torch.func.grad(single.scalar)(th[b]), rtol=1e-9, atol=1e-12)


def test_chunked_batches_agree(monkeypatch):
    obj = make("chinchilla")
    th = obj.law.init_grid()[::20]
    whole = obj.jet(th)
    monkeypatch.setattr(objective_module, "CHUNK_ELEMENTS", 4 * obj._width)
    parts = obj.jet(th)
    for a, b in zip(whole, parts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(obj.value(th), whole[0], rtol=1e-13, atol=0)


def test_huber_pieces():
    r = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], dtype=torch.float64)
    value, psi, curv = huber(r, 1.0)
    torch.testing.assert_close(value, torch.tensor([1.5, 0.125, 0.0, 0.125, 1.5], dtype=torch.float64))
    torch.testing.assert_close(psi, torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(curv, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0], dtype=torch.float64))
