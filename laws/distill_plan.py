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

- beyond the range of the runs the law was fitted to: for the published coefficients the
  paper's (students 143M-12.6B, teachers up to 12.6B, up to 512B tokens per run;
  :data:`PAPER_RANGE`); for a law fitted by the user, the runs its exported document records
  (:func:`recorded_range`), and where it records none the plan says that the range is unknown.
  E.g. N_S = 143M at C = 1e22, teacher pretraining and inference with the published law: the
  supervised baseline sees 11.7T tokens and the distilled student 4.9T. At 143M the law's
  data-unlimited distilled student (2.443, teacher loss 2.27) lies below the data-unlimited
  supervised loss (2.449), so at such token counts distillation wins (2.459 against 2.464).
- a student given fewer tokens than parameters (:data:`MIN_TOKENS_PER_PARAM`), i.e. many times
  larger than the compute-optimal supervised size for the budget. E.g. N_S = 1.82B at C = 1e19
  with teacher pretraining (the supervised baseline sees 0.5 tokens per parameter, loss 2.877):
  the law predicts that a 238M teacher trained on 4.9B tokens (loss 2.732), distilled into the
  student on 0.28B tokens, gives 2.843.

These are what the published law predicts there (cost accounting, baseline and teacher loss as
above), not what the paper's runs measured. A plan whose optimum lies on a bound of the search
(teachers of 10M-10T parameters, a teacher-pretraining share of 0.01%-99.99%, a teacher loss
between the supervised law's E and 20) also says so: the best allocation may lie beyond it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Literal

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
    """The runs a distillation law was fitted to: student sizes, largest teacher, most tokens of
    any run and, where known, the lowest teacher loss the students were distilled from (None:
    not checked)."""

    student_min: float
    student_max: float
    teacher_max: float | None
    tokens_max: float  # of any run (the teachers' and the supervised baseline's limit)
    teacher_loss_min: float | None = None
    student_tokens_max: float | None = None  # of the students alone (None: tokens_max)


#: Busbridge et al. 2025: students 143M-12.6B, teachers up to 12.6B, up to 512B tokens
PAPER_RANGE = FittedRange(student_min=143e6, student_max=12.6e9, teacher_max=12.6e9, tokens_max=512e9)
#: ``fitted_range`` of :func:`plan_distillation`: the paper's for the published law, else the recorded one
AUTO: Literal["auto"] = "auto"
#: where the optimiser searches: teacher sizes (parameters), the student's share of the budget
#: (with teacher pretraining, the rest pretrains the teacher) and, for a free teacher, its loss up to this
TEACHER_SIZES = (1e7, 1e13)
STUDENT_SHARES = (1e-4, 1 - 1e-4)
MAX_TEACHER_LOSS = 20.0


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
    fitted_range: FittedRange | Literal["auto"] | None = AUTO,
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
    warnings; :data:`AUTO` (default): the paper's for the published coefficients, else the runs
    the document records (:func:`recorded_range`), else none and a warning that the range is
    unknown; None: no range warnings. A malformed law raises ValueError naming the bad key.
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
        notes.append("the supervised law given (for the teacher's loss and the supervised baseline) differs from "
                     "the one the distillation law was fitted with, which still gives the student's loss")
    if isinstance(fitted_range, str):
        if fitted_range != AUTO:
            raise ValueError(f"fitted_range: expected a FittedRange, {AUTO!r} or None, got {fitted_range!r}")
        fitted_range = recorded_range(distillation)
        if fitted_range is None:
            notes.append("the range of the runs this distillation law was fitted to is unknown (it comes without "
                         "the runs table an exported study document has), so the plan is not checked for student "
                         "or teacher sizes or token counts beyond them")
    d_l, d_p = SCENARIOS[scenario]
    sup_law, dist_law = ChinchillaGamma(), Distillation(supervised=own_sup or sup)

    def teacher_losses(n_t: np.ndarray, d_t: np.ndarray | None) -> np.ndarray:
        if d_t is None:  # trained for free: the data-unlimited loss of the supervised law
            return sup["E"] + (sup["A"] / n_t ** sup["alpha"]) ** sup["gamma"]
        return np.asarray(sup_law.predict(sup, N=n_t, D=d_t), dtype=np.float64)

    def allocations(zs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
        """(D_S, N_T, D_T, L_T), each [K] (N_T, D_T None where the scenario leaves them free), from
        rows of free variables zs [K, m], z = (log N_T or log L_T, student share)."""
        if scenario == "best_case":  # any teacher loss at no cost: z[0] = log L_T
            return np.full(len(zs), budget / (6 * N_S)), None, None, np.exp(zs[:, 0])
        n_t = np.exp(zs[:, 0])
        share = zs[:, 1] if d_p else np.ones_like(n_t)
        # Eq. 9 with F(N) = 2N: share * C = 6 N_S D_S + dL 2 N_T D_S; (1 - share) * C = dP 6 N_T D_T
        d_s = share * budget / (6 * N_S + d_l * 2 * n_t)
        d_t = (1 - share) * budget / (6 * n_t) if d_p else None
        return d_s, n_t, d_t, teacher_losses(n_t, d_t)

    def student_losses(zs: np.ndarray) -> np.ndarray:
        """The distilled student's loss at every row of ``zs`` [K, m], in one evaluation of each law."""
        d_s, _, _, l_t = allocations(zs)
        return np.asarray(dist_law.predict(dist, N=N_S, D=d_s, L_T=l_t), dtype=np.float64)

    def student_loss(z: np.ndarray) -> float:
        return float(student_losses(np.asarray(z, dtype=np.float64)[None])[0])

    log_sizes = (float(np.log(TEACHER_SIZES[0])), float(np.log(TEACHER_SIZES[1])))
    if scenario == "best_case":
        starts = np.log(np.linspace(sup["E"] * 1.001, 6.0, 60))[:, None]
        bounds = [(float(np.log(sup["E"] * 1.0001)), float(np.log(MAX_TEACHER_LOSS)))]
    elif d_p:
        a, b = np.meshgrid(np.linspace(*log_sizes, 13), np.linspace(0.02, 0.98, 13), indexing="ij")
        starts = np.stack([a.ravel(), b.ravel()], axis=1)
        bounds = [log_sizes, STUDENT_SHARES]
    else:
        starts = np.linspace(*log_sizes, 60)[:, None]
        bounds = [log_sizes]
    values = student_losses(starts)
    best = starts[int(np.nanargmin(values))]
    with _single_threaded_blas():
        res = optimize.minimize(student_loss, best, method="L-BFGS-B", bounds=bounds)
    z = res.x if res.fun <= np.nanmin(values) else best
    d_s, n_t, d_t, l_t = (None if v is None else float(v[0]) for v in allocations(np.asarray(z)[None]))
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
    warns = [*notes, *extrapolated, *_bound_warnings(plan, z, bounds, sup["E"])]
    if plan.distil and d_p:
        warns.append(
            f"distillation wins by {plan.supervised_loss - plan.student_loss:.3g} nats although the teacher must be "
            "trained; Busbridge et al. 2025 find supervised training generally better when the teacher is trained "
            "for one student only" + ("; the law is extrapolated here (see the other warnings)" if extrapolated else "")
        )
    return replace(plan, warnings=tuple(warns))


def _bound_warnings(
    plan: DistillationPlan, z: np.ndarray, bounds: list[tuple[float, float]], irreducible: float
) -> list[str]:
    """Where the optimum ``z`` of :func:`plan_distillation` lies on one of its search ``bounds``."""
    out: list[str] = []
    for i, (lo, hi) in enumerate(bounds):
        tol = 1e-6 * (hi - lo)
        side = "lower" if z[i] <= lo + tol else "upper" if z[i] >= hi - tol else None
        if side is None:
            continue
        if plan.scenario == "best_case":  # z = log L_T
            what = f"the teacher's loss L_T = {plan.teacher_loss:.5g} is at the {side} bound of its search range"
            if side == "lower":
                out.append(f"{what}, just above the supervised law's irreducible loss E = {irreducible:.5g}: the law "
                           "prefers the best teacher there can be, one of unlimited size and data")
            else:
                out.append(f"{what} ({MAX_TEACHER_LOSS:g}): a worse teacher may be best")
        elif i == 0:  # z = log N_T
            lo_n, hi_n = TEACHER_SIZES
            beyond = "a smaller" if side == "lower" else "a larger"
            out.append(f"the teacher size N_T = {_count(plan.N_T or 0.0)} is at the {side} bound of its search range "
                       f"({_count(lo_n)} to {_count(hi_n)} parameters): {beyond} teacher may be best")
        else:  # z = the student's share; the rest pretrains the teacher
            share = plan.flops_teacher_pretraining / plan.C
            side = "upper" if side == "lower" else "lower"  # the teacher's share is 1 - z
            lo_s, hi_s = 1 - STUDENT_SHARES[1], 1 - STUDENT_SHARES[0]
            beyond = "less" if side == "lower" else "more"
            out.append(f"teacher pretraining's share of the budget ({share:.2%}) is at the {side} bound of its search "
                       f"range ({lo_s:.2%} to {hi_s:.2%}): giving it {beyond} may be best")
    return out


def extrapolation_warnings(
    plan: DistillationPlan, supervised: Mapping[str, float], fitted_range: FittedRange | None = PAPER_RANGE
) -> list[str]:
    """Where ``plan`` leaves ``fitted_range`` (sizes, tokens and teacher losses of the law's runs)
    or trains a model on fewer than :data:`MIN_TOKENS_PER_PARAM` tokens per parameter."""
    out: list[str] = []
    r = fitted_range
    if r is not None:
        if not r.student_min <= plan.N_S <= r.student_max:
            out.append(f"the student size N_S = {_count(plan.N_S)} is outside the range of students the law was "
                       f"fitted to ({_count(r.student_min)} to {_count(r.student_max)} parameters)")
        n_t = plan.N_T
        if n_t is not None and r.teacher_max is not None and n_t > r.teacher_max:
            out.append(f"the teacher size N_T = {_count(n_t)} is above the largest teacher the law was fitted to "
                       f"({_count(r.teacher_max)} parameters)")
        if r.teacher_loss_min is not None and plan.teacher_loss < r.teacher_loss_min:
            out.append(f"the teacher's loss L_T = {plan.teacher_loss:.4g} is below the lowest teacher loss the law "
                       f"was fitted to ({r.teacher_loss_min:.4g})")
        # the student against the students the law saw, the others against every run (teachers)
        student_max = r.student_tokens_max if r.student_tokens_max is not None else r.tokens_max
        student_kind = "run" if r.student_tokens_max is None else "student"
        tokens = {"student (D_S)": (plan.D_S, student_max, student_kind), "teacher (D_T)": (plan.D_T, r.tokens_max, "run"),
                  "supervised baseline (D)": (plan.supervised_D, r.tokens_max, "run")}
        for what, (d, limit, kind) in tokens.items():
            if d is not None and d > limit:
                out.append(f"the {what} trains on {_count(d)} tokens, more than any {kind} the law was fitted to "
                           f"(at most {_count(limit)})")
    from laws.recipes import chinchilla_optimum

    n_opt = float(chinchilla_optimum(supervised, [plan.C])[0][0])
    models = {"student": (plan.N_S, plan.D_S), "supervised baseline": (plan.N_S, plan.supervised_D),
              "teacher": (plan.N_T, plan.D_T)}
    if plan.scenario == "best_case":  # a free teacher: the student trains as long as the baseline
        models = {"student and the supervised baseline": models["student"], "teacher": models["teacher"]}
    for what, (n, d) in models.items():
        if n is not None and d is not None and d / n < MIN_TOKENS_PER_PARAM:
            verb = "train" if " and " in what else "trains"
            out.append(f"the {what} {verb} on {d / n:.2g} tokens per parameter, fewer than {MIN_TOKENS_PER_PARAM:g} "
                       f"(N = {_count(n)}, {n / n_opt:.3g}x the compute-optimal supervised size of {_count(n_opt)} "
                       f"at C = {_sci(plan.C)} FLOPs): the law is extrapolated there")
    return out


def _count(x: float) -> str:
    """A count of parameters or tokens, short: 143M, 12.6B, 4.9T."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _sci(x: float) -> str:
    """``x`` in short scientific notation: 1e19, 3.16e20."""
    mantissa, _, exponent = f"{x:.3g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


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
_DISTILLATION_NAMES = tuple(p.name for p in Distillation.params)


def resolve_distillation(law: LawLike | None) -> tuple[dict[str, float], dict[str, float] | None]:
    """(distillation parameters, the supervised parameters its Ls~ uses or None) from parameters,
    a :class:`~laws.result.LawFit`, an exported entry or an exported document (None: Table 6).
    Raises ValueError naming the key of a malformed law."""
    if law is None:
        return dict(BUSBRIDGE_DISTILLATION_PARAMS), dict(BUSBRIDGE_SUPERVISED_PARAMS)
    found = _unpack(law, ("distillation",))
    if found.name is not None and found.name != "distillation":
        raise ValueError(f"expected a distillation law, got {found.name!r}")
    missing = [k for k in _DISTILLATION_NAMES if k not in found.params]
    if missing:
        raise ValueError(f"{found.where}params: missing distillation parameters {missing}; "
                         f"expected {list(_DISTILLATION_NAMES)}")
    params = {k: found.params[k] for k in _DISTILLATION_NAMES}
    if found.name is None:  # plain parameters
        return params, None
    own = found.spec.get("supervised")
    if own is None:
        return params, None
    return params, _supervised_params(own, f"{found.where}law_spec.supervised")


def resolve_supervised(law: LawLike) -> dict[str, float]:
    """Supervised-law parameters (E, A, B, alpha, beta, gamma) from parameters, a fit, an exported
    entry or document of a ``chinchilla_gamma`` or ``chinchilla`` law (gamma = 1)."""
    found = _unpack(law, ("chinchilla_gamma", "chinchilla"))
    if found.name not in (None, "chinchilla_gamma", "chinchilla"):
        raise ValueError(f"expected a supervised law (chinchilla_gamma or chinchilla), got {found.name!r}")
    return _supervised_params(found.params, f"{found.where}params" if found.name is not None else "supervised")


def recorded_range(law: LawLike | None) -> FittedRange | None:
    """The runs a distillation law was fitted to, for :func:`plan_distillation`'s warnings:
    :data:`PAPER_RANGE` for the published coefficients (None or parameters equal to Table 6's);
    for an exported document with a ``runs`` table (``isoflop export``), the range of its runs:
    students (runs with N, D and L_T: their sizes, most tokens, lowest teacher loss) and the other
    runs with N and D (teachers: the largest, most tokens); None where no range is recorded."""
    params, _ = resolve_distillation(law)
    published = BUSBRIDGE_DISTILLATION_PARAMS
    if all(np.isclose(params[k], v, rtol=1e-9, atol=0.0) for k, v in published.items()):
        return PAPER_RANGE
    if not isinstance(law, Mapping) or "laws" not in law or law.get("runs") is None:
        return None
    runs = law["runs"]
    if not isinstance(runs, list):
        raise ValueError(f"runs: expected a list of runs (mappings of input name to value), got {_show(runs)}")
    students: list[tuple[float, float, float]] = []
    others: list[tuple[float, float]] = []
    for i, row in enumerate(runs):
        if not isinstance(row, Mapping):
            raise ValueError(f"runs[{i}]: expected a mapping of input name to value, got {_show(row)}")
        if "N" not in row or "D" not in row:
            continue
        n, d = _number(row["N"], f"runs[{i}].N"), _number(row["D"], f"runs[{i}].D")
        if "L_T" in row:
            students.append((n, d, _number(row["L_T"], f"runs[{i}].L_T")))
        else:
            others.append((n, d))
    if not students:
        return None
    sizes = [n for n, _, _ in students]
    return FittedRange(
        student_min=min(sizes),
        student_max=max(sizes),
        teacher_max=max((n for n, _ in others), default=None),
        tokens_max=max(d for _, d in [*((n, d) for n, d, _ in students), *others]),
        teacher_loss_min=min(lt for _, _, lt in students),
        student_tokens_max=max(d for _, d, _ in students),
    )


def _supervised_params(params: Any, what: str) -> dict[str, float]:
    p = _numbers(params, what)
    if "gamma" not in p:
        p["gamma"] = 1.0  # Hoffmann et al. 2022: the gamma = 1 case of Busbridge et al. Eq. 1
    missing = [k for k in _SUPERVISED_NAMES if k not in p]
    if missing:
        raise ValueError(f"{what}: missing parameters {missing}; expected {list(_SUPERVISED_NAMES)}")
    return {k: p[k] for k in _SUPERVISED_NAMES}


@dataclass(frozen=True)
class _Unpacked:
    """A law found in a fit, entry or document: its name (None for plain parameters), parameters,
    law spec, and where it sits in the document (``laws[1].``; empty for a fit or an entry)."""

    name: str | None
    params: dict[str, float]
    spec: dict[str, Any]
    where: str = ""


def _unpack(law: LawLike, names: tuple[str, ...]) -> _Unpacked:
    """The law of a fit, entry or document (its first law of a family in ``names``), its shape
    checked: ValueError naming the bad key of a malformed one."""
    if isinstance(law, LawFit):
        spec = dict(law.law_spec or {"name": law.law})
        return _Unpacked(str(spec.get("name", law.law)), _numbers(law.params, "params"), spec)
    if not isinstance(law, Mapping):
        raise ValueError(f"expected law parameters, a LawFit or an exported law, got {type(law).__name__}")
    where = ""
    if "laws" in law:  # an exported document: its first law of a wanted family
        entries = law["laws"]
        if not isinstance(entries, list):
            raise ValueError(f"laws: expected a list of law entries, got {_show(entries)}")
        for i, e in enumerate(entries):
            if not isinstance(e, Mapping):
                raise ValueError(f"laws[{i}]: expected a law entry (a mapping with law, params and law_spec), "
                                 f"got {_show(e)}")
        found = [_entry_name(e, f"laws[{i}].") for i, e in enumerate(entries)]
        wanted = [i for i, name in enumerate(found) if name in names]
        if not wanted:
            raise ValueError(f"the document holds no {' or '.join(names)} law (it has {found})")
        where = f"laws[{wanted[0]}]."
        law = entries[wanted[0]]
    if "params" in law:  # an exported law entry
        name = _entry_name(law, where)
        spec = dict(law.get("law_spec") or {"name": name})
        return _Unpacked(name, _numbers(law["params"], f"{where}params"), spec, where)
    return _Unpacked(None, _numbers(law, "parameters"), {})


def _entry_name(entry: Mapping[str, Any], where: str = "") -> str | None:
    """The family of an exported law entry: its ``law_spec`` name, else its ``law``."""
    spec = entry.get("law_spec") or {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}law_spec: expected a mapping with the law's name, got {_show(spec)}")
    name = spec.get("name") or entry.get("law")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"{where}law: expected the law's name, got {_show(name)}")
    return name


def _numbers(params: Any, what: str) -> dict[str, float]:
    """``params`` as a mapping of names to finite numbers; ValueError naming the bad one."""
    if not isinstance(params, Mapping):
        raise ValueError(f"{what}: expected a mapping of parameter names to numbers, got {_show(params)}")
    return {str(k): _number(v, f"{what}.{k}") for k, v in params.items()}


def _number(value: Any, what: str) -> float:
    """``value`` as a finite float (numbers written as text, e.g. YAML's ``1e-05``, included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what}: expected a number, got {_show(value)}")
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{what}: expected a number, got {_show(value)}") from None
    if not np.isfinite(x):
        raise ValueError(f"{what}: expected a finite number, got {_show(value)}")
    return x


def _show(value: Any) -> str:
    """``value`` for an error message: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
