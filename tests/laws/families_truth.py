"""Known parameters and run designs for the parameter-recovery tests of every law family.

Published coefficients where the papers give them (Hoffmann et al. 2022; Busbridge et al. 2025,
Table 6); plausible values elsewhere.
"""

from __future__ import annotations

import numpy as np

from laws.chinchilla import BUSBRIDGE_SUPERVISED_PARAMS, HOFFMANN_PARAMS
from laws.distillation import BUSBRIDGE_DISTILLATION_PARAMS


def _mesh(*axes: np.ndarray) -> list[np.ndarray]:
    return [a.ravel() for a in np.meshgrid(*axes, indexing="ij")]


def _nd():
    n, tpp = _mesh(np.geomspace(7e7, 1.6e10, 8), np.geomspace(5, 200, 8))
    return {"N": n, "D": n * tpp}


def _distillation():
    n, d, lt = _mesh(np.geomspace(1.4e8, 7.75e9, 5), np.geomspace(2e9, 5e11, 5), np.array([2.0, 2.25, 2.5, 2.8, 3.2]))
    return {"N": n, "D": d, "L_T": lt}


def _sparsity():
    n, d, s = _mesh(np.geomspace(1e8, 1e10, 5), np.geomspace(2e9, 2e11, 4), np.array([0.0, 0.5, 0.75, 0.875, 0.9375]))
    return {"N": n, "D": d, "S": s}


def _mixture(k: int = 2):
    h1 = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    n, d, h = _mesh(np.geomspace(1e8, 3e9, 3), np.geomspace(2e9, 6e10, 3), h1)
    return {"N": n, "D": d, "h1": h, "h2": 1.0 - h}


def _forgetting():
    n, dft, p = _mesh(np.geomspace(1e8, 3e9, 4), np.geomspace(1e7, 1e9, 4), np.array([0.0, 0.001, 0.01, 0.05, 0.1]))
    return {"N": n, "D_ft": dft, "p": p, "L_pt0": 2.0 + 1e9 / n * 0.2}


def _forgetting_ft():
    n, dft = _mesh(np.geomspace(1e8, 3e9, 5), np.geomspace(1e7, 1e9, 5))
    return {"N": n, "D_ft": dft}


#: family -> (constructor options, true parameters, run design)
CASES = {
    "chinchilla": ({}, HOFFMANN_PARAMS, _nd),
    "chinchilla_gamma": ({}, BUSBRIDGE_SUPERVISED_PARAMS, _nd),
    "distillation": ({}, BUSBRIDGE_DISTILLATION_PARAMS, _distillation),
    "sparsity": (
        {},
        {"a": 400.0, "b": 410.0, "c": 0.1, "d": 50.0, "e": 1.7, "alpha": 0.34, "beta": 0.28, "gamma": 0.25,
         "lambda": -0.3, "delta": 0.5},
        _sparsity,
    ),
    "mixture_additive": (
        {"k": 2},
        {"E": 1.8, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28, "C1": 5.0, "C2": 3.0, "gamma1": 0.6,
         "gamma2": 0.9},
        _mixture,
    ),
    "mixture_joint": (
        {"k": 2},
        {"E": 1.8, "alpha": 0.34, "beta": 0.28, "C1": 5.0, "C2": 3.0, "gamma1": 0.6, "gamma2": 0.9,
         "CA1": 300.0, "CA2": 500.0, "CB1": 600.0, "CB2": 200.0, "gamma_A": 1.1, "gamma_B": 0.9},
        _mixture,
    ),
    "forgetting": ({}, {"A": 20.0, "B": 300.0, "alpha": 0.3, "beta": 0.2}, _forgetting),
    "forgetting_ft": ({}, {"E": 1.2, "A": 300.0, "alpha": 0.25, "beta": 0.2}, _forgetting_ft),
}
