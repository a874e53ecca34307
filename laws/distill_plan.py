"""Distil or train supervised? Compute-optimal distillation at a fixed student size and budget.

Compute accounting of Busbridge et al. 2025 (Eq. 9), with F(N) = 2N forward FLOPs per token:

    FLOPs = 3 F(N_S) D_S + F(N_T) (dL D_S + dP 3 D_T)

dL = 1 when the teacher's logits must be computed, dP = 1 when the teacher must be pretrained.
Their four scenarios: ``best_case`` (dL = dP = 0: a teacher of any quality is available for
free), ``teacher_inference`` (dL = 1), ``teacher_pretraining`` (dP = 1) and
``teacher_pretraining_inference`` (dL = dP = 1). The student's loss is the distillation law
L_S(N_S, D_S, L_T); the teacher's loss is the supervised law L(N_T, D_T) (a teacher trained for
free is taken at D_T -> infinity, L = E + (A/N_T^alpha)^gamma). Like the paper (which used SLSQP
over D_S, N_T, D_T), the allocation is a small constrained optimisation: here the budget is
eliminated by writing D_S and D_T as shares of the budget, leaving at most two variables (log N_T
and the student's share), solved by a grid then bounded L-BFGS-B.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from laws.chinchilla import ChinchillaGamma
from laws.distillation import Distillation

#: scenario -> (dL, dP)
SCENARIOS: dict[str, tuple[int, int]] = {
    "best_case": (0, 0),
    "teacher_inference": (1, 0),
    "teacher_pretraining": (0, 1),
    "teacher_pretraining_inference": (1, 1),
}


@dataclass(frozen=True, kw_only=True)
class DistillationPlan:
    """The best distillation allocation in a scenario, and supervised training on the same budget.

    ``N_T``/``D_T`` are None where the scenario leaves them free (no cost); ``teacher_loss`` is
    the teacher's cross-entropy used. ``distil`` says whether distillation wins.
    """

    scenario: str
    C: float
    N_S: float
    D_S: float
    N_T: float | None
    D_T: float | None
    teacher_loss: float
    student_loss: float
    supervised_loss: float
    supervised_D: float

    @property
    def distil(self) -> bool:
        return self.student_loss < self.supervised_loss


def plan_distillation(
    distillation: Mapping[str, float],
    supervised: Mapping[str, float],
    *,
    N_S: float,
    budget: float,
    scenario: str,
) -> DistillationPlan:
    """Compute-optimal distillation for a student of ``N_S`` parameters and ``budget`` FLOPs in
    ``scenario`` (one of :data:`SCENARIOS`), against supervised training of the same student.

    ``distillation``: distillation-law parameters (A, B, alpha, beta, gamma, c0, c1, f1, d1);
    ``supervised``: supervised-law parameters (E, A, B, alpha, beta, gamma), also used for Ls~.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; valid scenarios: {', '.join(SCENARIOS)}")
    if not (N_S > 0 and budget > 0):
        raise ValueError(f"N_S and budget must be positive, got N_S={N_S}, budget={budget}")
    d_l, d_p = SCENARIOS[scenario]
    sup_law, dist_law = ChinchillaGamma(), Distillation(supervised=supervised)
    sup = dict(supervised)

    def teacher_loss(n_t: float, d_t: float | None) -> float:
        if d_t is None:  # trained for free: the data-unlimited loss of the supervised law
            return sup["E"] + (sup["A"] / n_t ** sup["alpha"]) ** sup["gamma"]
        return float(sup_law.predict(sup, N=n_t, D=d_t))

    def allocation(z: np.ndarray) -> tuple[float, float | None, float | None, float]:
        """(D_S, N_T, D_T, L_T) from the free variables z = (log N_T or log L_T, student share)."""
        if scenario == "best_case":  # any teacher loss at no cost: z[0] = log L_T
            return budget / (6 * N_S), None, None, float(np.exp(z[0]))
        n_t = float(np.exp(z[0]))
        share = float(z[1]) if d_p else 1.0
        d_s = share * budget / (6 * N_S + d_l * 2 * n_t)
        d_t = (1 - share) * budget / (6 * n_t) if d_p else None
        return d_s, n_t, d_t, teacher_loss(n_t, d_t)

    def student_loss(z: np.ndarray) -> float:
        d_s, _, _, l_t = allocation(z)
        return float(dist_law.predict(distillation, N=N_S, D=d_s, L_T=l_t))

    if scenario == "best_case":
        starts = [np.array([v]) for v in np.log(np.linspace(sup["E"] * 1.001, 6.0, 60))]
        bounds = [(np.log(sup["E"] * 1.0001), np.log(20.0))]
    elif d_p:
        starts = [np.array([a, b]) for a in np.linspace(np.log(1e7), np.log(1e13), 13)
                  for b in np.linspace(0.02, 0.98, 13)]
        bounds = [(np.log(1e7), np.log(1e13)), (1e-4, 1 - 1e-4)]
    else:
        starts = [np.array([a]) for a in np.linspace(np.log(1e7), np.log(1e13), 60)]
        bounds = [(np.log(1e7), np.log(1e13))]
    values = [student_loss(z) for z in starts]
    best = starts[int(np.nanargmin(values))]
    res = optimize.minimize(student_loss, best, method="L-BFGS-B", bounds=bounds)
    z = res.x if res.fun <= min(values) else best
    d_s, n_t, d_t, l_t = allocation(z)
    d_sup = budget / (6 * N_S)
    return DistillationPlan(
        scenario=scenario,
        C=float(budget),
        N_S=float(N_S),
        D_S=float(d_s),
        N_T=n_t,
        D_T=d_t,
        teacher_loss=l_t,
        student_loss=student_loss(z),
        supervised_loss=float(sup_law.predict(sup, N=N_S, D=d_sup)),
        supervised_D=float(d_sup),
    )
