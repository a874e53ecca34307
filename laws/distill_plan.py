"""Distil or train supervised? Compute-optimal distillation at a fixed student size and budget.

Compute accounting of Busbridge et al. 2025 (Eq. 9), with F(N) = 2N forward FLOPs per token:

    FLOPs = 3 F(N_S) D_S + F(N_T) (dL D_S + dP 3 D_T)

dL = 1 when the teacher's logits must be computed, dP = 1 when the teacher must be pretrained.
Their four scenarios: ``best_case`` (dL = dP = 0: a teacher of any quality is available for
free), ``teacher_inference`` (dL = 1), ``teacher_pretraining`` (dP = 1) and
``teacher_pretraining_inference`` (dL = dP = 1). The student's loss is the distillation law
L_S(N_S, D_S, L_T); the teacher's loss is the supervised law L(N_T, D_T) (a teacher trained for
free is taken at D_T -> infinity, L = E + (A/N_T^alpha)^gamma). The baseline is supervised
training of the same student on the same total FLOPs, D = C / (3 F(N_S)) = C / (6 N_S). Like the
paper (which used SLSQP over D_S, N_T, D_T), the allocation is a small constrained optimisation:
here the budget is eliminated by writing D_S and D_T as shares of the budget, leaving at most two
variables (log N_T and the student's share), solved by a grid then bounded L-BFGS-B.

Validity. With the published coefficients (Table 6) the plan reproduces the paper's findings
inside the range of its runs: a free teacher helps below a compute threshold that grows with N_S,
and with one student whose teacher must be trained and run (``teacher_pretraining_inference``),
supervised training is at least as good. With teacher inference free (``teacher_pretraining``)
the law lets the smallest students (143M-210M near C = 3e20-6e20) gain up to 0.007 nats from
distillation inside that range; the gain survives the rounding of the published coefficients.
Extrapolated, the law predicts larger gains, and the plan then says so in
:attr:`DistillationPlan.warnings` (any plan that prefers distillation with a teacher to train
carries a warning):

- beyond the paper's range (students 143M-12.6B, teachers up to 12.6B, up to 512B tokens per
  run; :data:`PAPER_RANGE`). E.g. N_S = 143M at C = 1e22, teacher pretraining and inference:
  the supervised baseline sees 11.7T tokens and the distilled student 4.9T. At 143M the law's
  data-unlimited distilled student (2.443, teacher loss 2.27) lies below the data-unlimited
  supervised loss (2.449), so at such token counts distillation wins (2.459 against 2.464).
- a student given fewer tokens than parameters (:data:`MIN_TOKENS_PER_PARAM`), i.e. many times
  larger than the compute-optimal supervised size for the budget. E.g. N_S = 1.82B at C = 1e19
  with teacher pretraining (the supervised baseline sees 0.5 tokens per parameter, loss 2.877):
  the law predicts that a 238M teacher trained on 4.9B tokens (loss 2.732), distilled into the
  student on 0.28B tokens, gives 2.843.

These are what the published law predicts there (cost accounting, baseline and teacher loss as
above), not what the paper's runs measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import optimize

from laws.chinchilla import BUSBRIDGE_SUPERVISED_PARAMS, ChinchillaGamma
from laws.distillation import BUSBRIDGE_DISTILLATION_PARAMS, Distillation
from laws.result import LawFit

#: scenario -> (dL, dP)
SCENARIOS: dict[str, tuple[int, int]] = {
    "best_case": (0, 0),
    "teacher_inference": (1, 0),
    "teacher_pretraining": (0, 1),
    "teacher_pretraining_inference": (1, 1),
}
#: a model trained on fewer tokens per parameter than this is reported (see the module docstring)
MIN_TOKENS_PER_PARAM = 1.0
_SUPERVISED_NAMES = ("E", "A", "B", "alpha", "beta", "gamma")


@dataclass(frozen=True, kw_only=True)
class FittedRange:
    """The runs a distillation law was fitted to: student sizes, largest teacher, most tokens."""

    student_min: float
    student_max: float
    teacher_max: float
    tokens_max: float


#: Busbridge et al. 2025: students 143M-12.6B, teachers up to 12.6B, up to 512B tokens
PAPER_RANGE = FittedRange(student_min=143e6, student_max=12.6e9, teacher_max=12.6e9, tokens_max=512e9)


@dataclass(frozen=True, kw_only=True)
class DistillationPlan:
    """The best distillation allocation in a scenario, and supervised training on the same budget.

    ``N_T``/``D_T`` are None where the scenario leaves them free (no cost); ``teacher_loss`` is
    the teacher's cross-entropy used. ``distil`` says whether distillation wins. FLOPs (Eq. 9):
    ``flops_student`` = 3 F(N_S) D_S, ``flops_teacher_inference`` = dL F(N_T) D_S,
    ``flops_teacher_pretraining`` = dP 3 F(N_T) D_T; they sum to ``C``. ``warnings`` name where
    the plan extrapolates the law (see the module docstring).
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
    flops_student: float = 0.0
    flops_teacher_inference: float = 0.0
    flops_teacher_pretraining: float = 0.0
    warnings: tuple[str, ...] = field(default=())

    @property
    def distil(self) -> bool:
        """Whether the distilled student's loss is below the supervised student's."""
        return self.student_loss < self.supervised_loss

    @property
    def compute_split(self) -> dict[str, dict[str, float]]:
        """FLOPs and share of the budget of teacher pretraining, teacher inference and student."""
        flops = {
            "teacher_pretraining": self.flops_teacher_pretraining,
            "teacher_inference": self.flops_teacher_inference,
            "student": self.flops_student,
        }
        return {k: {"flops": v, "share": v / self.C} for k, v in flops.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: the decision, the allocation, the losses and the compute split."""
        return {
            "scenario": self.scenario,
            "decision": "distil" if self.distil else "supervised",
            "C": self.C,
            "N_S": self.N_S,
            "D_S": self.D_S,
            "N_T": self.N_T,
            "D_T": self.D_T,
            "teacher_loss": self.teacher_loss,
            "student_loss": self.student_loss,
            "supervised_loss": self.supervised_loss,
            "supervised_D": self.supervised_D,
            "compute_split": self.compute_split,
            "warnings": list(self.warnings),
        }


LawLike = LawFit | Mapping[str, Any]


def plan_distillation(
    distillation: LawLike | None = None,
    supervised: LawLike | None = None,
    *,
    N_S: float,
    budget: float,
    scenario: str,
    fitted_range: FittedRange | None = PAPER_RANGE,
) -> DistillationPlan:
    """Compute-optimal distillation for a student of ``N_S`` parameters and ``budget`` FLOPs in
    ``scenario`` (one of :data:`SCENARIOS`), against supervised training of the same student on
    the same FLOPs (Busbridge et al. 2025, Eq. 9 and Sec. 5).

    ``distillation``: the distillation law, as its parameters (A, B, alpha, beta, gamma, c0, c1,
    f1, d1), a :class:`~laws.result.LawFit`, an exported law entry or a whole exported document
    holding one (:func:`laws.export_document`); None: the published Table 6 law.
    ``supervised``: the supervised law giving the teacher's loss and the baseline, as parameters
    (E, A, B, alpha, beta, gamma; a Chinchilla law without gamma has gamma = 1), a fit, an entry or
    a document; None: the one the distillation law's Ls~ was fitted with (its ``law_spec``), else
    the published one. ``fitted_range``: the runs the law was fitted to, for the extrapolation
    warnings (default the paper's; None: no range warnings).
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; valid scenarios: {', '.join(SCENARIOS)}")
    if not (np.isfinite(N_S) and np.isfinite(budget) and N_S > 0 and budget > 0):
        raise ValueError(f"N_S and budget must be positive and finite, got N_S={N_S}, budget={budget}")
    dist, own_sup = resolve_distillation(distillation)
    sup = resolve_supervised(supervised) if supervised is not None else (own_sup or dict(BUSBRIDGE_SUPERVISED_PARAMS))
    notes: list[str] = []
    if own_sup is not None and supervised is not None and any(
        not np.isclose(own_sup[k], sup[k], rtol=1e-9) for k in _SUPERVISED_NAMES
    ):
        notes.append("the supervised law given differs from the one the distillation law's Ls~ uses")
    d_l, d_p = SCENARIOS[scenario]
    sup_law, dist_law = ChinchillaGamma(), Distillation(supervised=own_sup or sup)

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
        # Eq. 9 with F(N) = 2N: share * C = 6 N_S D_S + dL 2 N_T D_S; (1 - share) * C = dP 6 N_T D_T
        d_s = share * budget / (6 * N_S + d_l * 2 * n_t)
        d_t = (1 - share) * budget / (6 * n_t) if d_p else None
        return d_s, n_t, d_t, teacher_loss(n_t, d_t)

    def student_loss(z: np.ndarray) -> float:
        d_s, _, _, l_t = allocation(z)
        return float(dist_law.predict(dist, N=N_S, D=d_s, L_T=l_t))

    def student_losses(zs: np.ndarray) -> np.ndarray:
        """:func:`student_loss` at every row of ``zs`` [K, m], in one evaluation of each law."""
        if scenario == "best_case":
            return dist_law.predict(dist, N=N_S, D=budget / (6 * N_S), L_T=np.exp(zs[:, 0]))
        n_t = np.exp(zs[:, 0])
        share = zs[:, 1] if d_p else np.ones_like(n_t)
        d_s = share * budget / (6 * N_S + d_l * 2 * n_t)
        if d_p:
            l_t = sup_law.predict(sup, N=n_t, D=(1 - share) * budget / (6 * n_t))
        else:
            l_t = sup["E"] + (sup["A"] / n_t ** sup["alpha"]) ** sup["gamma"]
        return dist_law.predict(dist, N=N_S, D=d_s, L_T=l_t)

    if scenario == "best_case":
        starts = np.log(np.linspace(sup["E"] * 1.001, 6.0, 60))[:, None]
        bounds = [(np.log(sup["E"] * 1.0001), np.log(20.0))]
    elif d_p:
        a, b = np.meshgrid(np.linspace(np.log(1e7), np.log(1e13), 13), np.linspace(0.02, 0.98, 13), indexing="ij")
        starts = np.stack([a.ravel(), b.ravel()], axis=1)
        bounds = [(np.log(1e7), np.log(1e13)), (1e-4, 1 - 1e-4)]
    else:
        starts = np.linspace(np.log(1e7), np.log(1e13), 60)[:, None]
        bounds = [(np.log(1e7), np.log(1e13))]
    values = student_losses(starts)
    best = starts[int(np.nanargmin(values))]
    with _single_threaded_blas():
        res = optimize.minimize(student_loss, best, method="L-BFGS-B", bounds=bounds)
    z = res.x if res.fun <= np.nanmin(values) else best
    d_s, n_t, d_t, l_t = allocation(z)
    d_sup = budget / (6 * N_S)
    plan = DistillationPlan(
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
        flops_student=float(6 * N_S * d_s),
        flops_teacher_inference=float(d_l * 2 * n_t * d_s) if n_t is not None else 0.0,
        flops_teacher_pretraining=float(6 * n_t * d_t) if n_t is not None and d_t is not None else 0.0,
    )
    extrapolated = extrapolation_warnings(plan, sup, fitted_range)
    warns = [*notes, *extrapolated]
    if plan.distil and d_p:
        warns.append(
            f"distillation wins by {plan.supervised_loss - plan.student_loss:.3g} nats although the teacher must be "
            "trained; the paper finds supervised training generally preferable for one student whose teacher must "
            "be trained" + (" (the law is extrapolated here: see the other warnings)" if extrapolated else "")
        )
    return replace(plan, warnings=tuple(warns))


def extrapolation_warnings(
    plan: DistillationPlan, supervised: Mapping[str, float], fitted_range: FittedRange | None = PAPER_RANGE
) -> list[str]:
    """Where ``plan`` leaves ``fitted_range`` (sizes and tokens of the law's runs) or trains a
    model on fewer than :data:`MIN_TOKENS_PER_PARAM` tokens per parameter."""
    out: list[str] = []
    r = fitted_range
    if r is not None:
        if not r.student_min <= plan.N_S <= r.student_max:
            out.append(f"student size N_S = {plan.N_S:.3g} is outside the fitted range "
                       f"{r.student_min:.3g}-{r.student_max:.3g}")
        n_t = plan.N_T
        if n_t is not None and n_t > r.teacher_max:
            out.append(f"teacher size N_T = {n_t:.3g} is above the largest fitted teacher ({r.teacher_max:.3g})")
        tokens = {"student D_S": plan.D_S, "teacher D_T": plan.D_T, "supervised baseline D": plan.supervised_D}
        for what, d in tokens.items():
            if d is not None and d > r.tokens_max:
                out.append(f"{what} = {d:.3g} tokens is above the fitted range (up to {r.tokens_max:.3g})")
    from laws.recipes import chinchilla_optimum

    n_opt = float(chinchilla_optimum(supervised, [plan.C])[0][0])
    models = {"student": (plan.N_S, plan.D_S), "supervised baseline": (plan.N_S, plan.supervised_D),
              "teacher": (plan.N_T, plan.D_T)}
    if plan.scenario == "best_case":  # a free teacher: the student trains as long as the baseline
        models = {"student and the supervised baseline": models["student"], "teacher": models["teacher"]}
    for what, (n, d) in models.items():
        if n is not None and d is not None and d / n < MIN_TOKENS_PER_PARAM:
            out.append(f"the {what} trained on {d / n:.2g} tokens per parameter (N = {n:.3g}, {n / n_opt:.3g}x the "
                       f"compute-optimal supervised size {n_opt:.3g} at C = {plan.C:.3g}): the law is extrapolated")
    return out


def _single_threaded_blas() -> AbstractContextManager[Any]:
    """One BLAS thread while L-BFGS-B runs: its many tiny linear-algebra calls on a one- or
    two-dimensional problem otherwise stall on a multi-threaded BLAS (3-5x slower on a busy
    machine). A no-op without ``threadpoolctl``."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# -- laws given as fits, exported entries or documents -----------------------------------------------
def resolve_distillation(law: LawLike | None) -> tuple[dict[str, float], dict[str, float] | None]:
    """(distillation parameters, the supervised parameters its Ls~ uses or None) from parameters,
    a :class:`~laws.result.LawFit`, an exported entry or an exported document (None: Table 6)."""
    if law is None:
        return dict(BUSBRIDGE_DISTILLATION_PARAMS), dict(BUSBRIDGE_SUPERVISED_PARAMS)
    name, params, spec = _unpack(law, ("distillation",))
    if name is None:  # plain parameters
        return params, None
    if name != "distillation":
        raise ValueError(f"expected a distillation law, got {name!r}")
    own = spec.get("supervised")
    return params, _supervised_params(own, "distillation law_spec.supervised") if own else None


def resolve_supervised(law: LawLike) -> dict[str, float]:
    """Supervised-law parameters (E, A, B, alpha, beta, gamma) from parameters, a fit, an exported
    entry or document of a ``chinchilla_gamma`` or ``chinchilla`` law (gamma = 1)."""
    name, params, _ = _unpack(law, ("chinchilla_gamma", "chinchilla"))
    if name not in (None, "chinchilla_gamma", "chinchilla"):
        raise ValueError(f"expected a supervised law (chinchilla_gamma or chinchilla), got {name!r}")
    return _supervised_params(params, "supervised")


def _supervised_params(params: Mapping[str, Any], what: str) -> dict[str, float]:
    p = {k: float(v) for k, v in params.items()}
    if "gamma" not in p:
        p["gamma"] = 1.0  # Hoffmann et al. 2022: the gamma = 1 case of Busbridge et al. Eq. 1
    missing = [k for k in _SUPERVISED_NAMES if k not in p]
    if missing:
        raise ValueError(f"{what}: missing parameters {missing}; expected {list(_SUPERVISED_NAMES)}")
    return {k: p[k] for k in _SUPERVISED_NAMES}


def _unpack(law: LawLike, names: tuple[str, ...]) -> tuple[str | None, dict[str, float], dict[str, Any]]:
    """(law name or None for plain parameters, parameters, law spec) of a fit, entry or document."""
    if isinstance(law, LawFit):
        spec = dict(law.law_spec or {"name": law.law})
        return str(spec.get("name", law.law)), dict(law.params), spec
    if not isinstance(law, Mapping):
        raise ValueError(f"expected law parameters, a LawFit or an exported law, got {type(law).__name__}")
    if "laws" in law:  # an exported document: its first law of a wanted family
        entries = [e for e in law["laws"] if _entry_name(e) in names]
        if not entries:
            found = [_entry_name(e) for e in law["laws"]]
            raise ValueError(f"the document holds no {' or '.join(names)} law (it has {found})")
        law = entries[0]
    if "params" in law:  # an exported law entry
        spec = dict(law.get("law_spec") or {"name": law.get("law")})
        return _entry_name(law), {k: float(v) for k, v in law["params"].items()}, spec
    return None, {k: float(v) for k, v in law.items()}, {}


def _entry_name(entry: Mapping[str, Any]) -> str | None:
    spec = entry.get("law_spec") or {}
    return spec.get("name") or entry.get("law")
