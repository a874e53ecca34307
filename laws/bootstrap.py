"""Bootstrap uncertainty: refit on resampled configurations, all resamples in one batch.

Resampling unit: a *configuration* (points sharing every input value, e.g. seeds of one run)
or a user-given group (e.g. a model size), drawn with replacement (Efron & Tibshirani 1993,
Ch. 6; the Chinchilla replication of Besiroglu et al. 2024 bootstraps the same way). A resample
is a vector of point multiplicities, so R resamples are R weightings of one data set: every
resample x start is one row of a single batched Newton fit (:mod:`laws.optimizer`). Each resample
starts from the full-data optimum plus a few seeded grid starts.

Only resamples whose refit converged (:class:`laws.optimizer.NewtonOptions`: gradient max-norm
below ``gtol``, or no relative decrease left) enter the intervals: an unconverged refit stopped
somewhere along its path, and its parameters describe the iteration cap, not the resample. The
criterion is not too strict for noisy Huber fits: on identified data every resample converges
(the Chinchilla replication: 1000 of 1000). Resamples fail to converge when the fit being
bootstrapped had not converged (they start from it) or when the data leave a direction
unidentified; the result counts them, warns below ``WARN_FRACTION`` converged and gives no
interval (None) below ``min_converged``.

``scheme="bayesian"``: the Bayesian bootstrap (Rubin 1981, Ann. Statist. 9:130): each
configuration's weight is drawn from a flat Dirichlet (scaled to the number of configurations)
instead of a multinomial count. Its resamples never drop a configuration altogether: with
multinomial counts a run is absent from 37 % of the resamples, and in a design chosen to
extrapolate (an active selection's few large runs) those resamples carry the tails of the
interval. The selection's tolerance stop uses it (``benchmarks/stopping.py``, 16 seeds: it
stopped with 35 to 40 % less compute than the multinomial resampling; 1 of its 60 stops left
its target beyond the tolerance, against 0 of 51).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

from laws.base import DTYPE, ScalingLaw
from laws.objective import Objective
from laws.optimizer import NewtonOptions, minimise_batched, torch_threads
from laws.recipes import chinchilla_optimum, numeric_optimum
from laws.result import FitReport, LawFit
from laws.validate import check_data

#: warn when fewer than this fraction of the resamples converged
WARN_FRACTION = 0.9
#: default of ``min_converged``: below this fraction converged, no interval is given
MIN_CONVERGED = 0.5
#: and never from fewer than this many converged resamples
MIN_RESAMPLES = 10


@dataclass(frozen=True, kw_only=True)
class BootstrapResult:
    """R bootstrap refits: fit vectors ``theta`` [R, P] (law's fit parameterisation), their
    objectives [R], which refits ``converged`` [R], the seed, and the resampling unit count.

    Samples, intervals and derived quantities use the converged resamples only; an interval is
    None when fewer than ``min_converged`` (a fraction of R) or fewer than ``MIN_RESAMPLES``
    converged. ``warnings`` says so, and is copied into the exported law's report.
    """

    law_spec: dict
    theta: np.ndarray
    objective: np.ndarray
    seed: int
    n_groups: int
    converged: np.ndarray
    seconds: float = 0.0
    min_converged: float = MIN_CONVERGED
    warnings: tuple[str, ...] = ()
    #: digest of the resampled multiplicities [R, n]: equal digests mean the same resamples of
    #: the same runs (a joint bootstrap of several laws, :func:`joint_bootstrap`)
    resample_digest: str = ""

    def get_law(self) -> ScalingLaw:
        from laws.registry import law_from_spec

        return law_from_spec(self.law_spec)

    @property
    def n_resamples(self) -> int:
        return int(self.theta.shape[0])

    @property
    def n_converged(self) -> int:
        """How many resamples' refits converged."""
        return int(np.count_nonzero(self.converged))

    @property
    def has_intervals(self) -> bool:
        """Whether enough resamples converged for intervals (see the class docstring)."""
        return enough_converged(self.n_converged, self.n_resamples, self.min_converged)

    @property
    def theta_converged(self) -> np.ndarray:
        """Fit vectors of the converged resamples, [R_c, P]."""
        return self.theta[np.asarray(self.converged, dtype=bool)]

    def samples(self, name: str) -> np.ndarray:
        """Bootstrap samples [R_c] of the natural parameter ``name`` (converged resamples)."""
        law = self.get_law()
        if name not in law.param_names:
            raise ValueError(f"unknown parameter {name!r}; {law.name!r} has {list(law.param_names)}")
        i = law.param_names.index(name)
        v = self.theta_converged[:, i]
        return np.exp(v) if law.params[i].log else v

    def interval(self, name: str, level: float = 0.95) -> tuple[float, float] | None:
        """Percentile interval of parameter ``name`` at confidence ``level`` (None when too few
        resamples converged)."""
        samples = self.samples(name)
        return _percentile(samples, level) if self.has_intervals else None

    def intervals(self, level: float = 0.95) -> dict[str, tuple[float, float] | None]:
        """Percentile intervals of every parameter (values None when too few converged)."""
        return {n: self.interval(n, level) for n in self.get_law().param_names}

    def predict_samples(self, **inputs: ArrayLike) -> np.ndarray:
        """Predicted loss under every converged resample's parameters, [R_c, n]."""
        law = self.get_law()
        arrays = np.broadcast_arrays(*(np.atleast_1d(np.asarray(inputs[k], dtype=np.float64)) for k in law.inputs))
        x = law.prepare_inputs(dict(zip(law.inputs, arrays, strict=True)))
        with torch.no_grad():
            return torch.exp(law.log_predict(torch.from_numpy(self.theta_converged), x)).numpy()

    def prediction_interval(
        self, level: float = 0.95, **inputs: ArrayLike
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Percentile interval of the predicted loss at ``inputs``: (low [n], high [n]), or None
        when too few resamples converged."""
        _check_level(level)
        s = self.predict_samples(**inputs)
        if not self.has_intervals:
            return None
        lo, hi = np.nanquantile(s, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return lo, hi

    def fits(self) -> list[LawFit]:
        """One :class:`LawFit` per converged resample (its parameters; report fields describe the
        bootstrap), e.g. to feed any recipe."""
        law = self.get_law()
        report = FitReport(n_points=0, n_starts=0, n_best=0, best_tol=0.0, grad_norm=0.0, converged=True,
                           method=f"bootstrap resample (seed {self.seed})")
        mask = np.asarray(self.converged, dtype=bool)
        return [
            LawFit(law=law.name, params=law.to_natural(t), objective=float(f), report=report, law_spec=self.law_spec)
            for t, f in zip(self.theta[mask], self.objective[mask], strict=True)
        ]

    def derived_samples(self, fn: Callable[[LawFit], float]) -> np.ndarray:
        """``fn(fit)`` under every converged resample, [R_c]."""
        return np.array([fn(f) for f in self.fits()], dtype=np.float64)

    def derived_interval(self, fn: Callable[[LawFit], float], level: float = 0.95) -> tuple[float, float] | None:
        """Percentile interval of any derived quantity ``fn(fit)`` over the converged resamples,
        e.g. the optimal sparsity at a budget:
        ``boot.derived_interval(lambda f: optimal_sparsity(f, C).S)``; None when too few converged."""
        _check_level(level)
        if not self.has_intervals:
            return None
        return _percentile(self.derived_samples(fn), level)

    def optimum_samples(self, budget: float) -> tuple[np.ndarray, np.ndarray]:
        """N_opt and D_opt [R_c] at FLOP budget ``budget`` (C = 6ND) under every converged resample."""
        law = self.get_law()
        nats = [law.to_natural(t) for t in self.theta_converged]
        if not nats:
            return np.empty(0), np.empty(0)
        if law.name in ("chinchilla", "chinchilla_gamma"):
            n = np.array([chinchilla_optimum(p, budget)[0] for p in nats], dtype=np.float64)
            return n, budget / (6.0 * n)
        nd = np.array([numeric_optimum(law, p, budget) for p in nats])
        return nd[:, 0], nd[:, 1]

    def optimum_interval(self, budget: float, level: float = 0.95) -> dict[str, tuple[float, float] | None]:
        """Percentile intervals of N_opt and D_opt at ``budget``: None when too few converged, or
        when more than a tail's share of the resamples have no optimum (an exponent below zero;
        see :func:`unbounded_percentile`)."""
        _check_level(level)
        if not self.has_intervals:
            return {"N_opt": None, "D_opt": None}
        n, d = self.optimum_samples(budget)
        return {"N_opt": unbounded_percentile(n, level), "D_opt": unbounded_percentile(d, level)}


def enough_converged(n_converged: int, n_resamples: int, min_converged: float = MIN_CONVERGED) -> bool:
    """Whether ``n_converged`` of ``n_resamples`` is enough for percentile intervals: at least
    ``min_converged`` of them and at least ``MIN_RESAMPLES``. Resamples that fail are the hard
    ones (flat or unidentified directions), so intervals from the few that converge would be too
    narrow."""
    return n_converged >= max(MIN_RESAMPLES, min_converged * n_resamples)


def convergence_warnings(n_converged: int, n_resamples: int, min_converged: float = MIN_CONVERGED,
                         what: str = "bootstrap resamples") -> tuple[str, ...]:
    """The warnings of a bootstrap in which ``n_converged`` of ``n_resamples`` refits converged."""
    if n_resamples < MIN_RESAMPLES:  # every one may have converged: still too few for intervals
        return (f"{n_resamples} bootstrap resamples are too few for intervals (at least {MIN_RESAMPLES}): none given",)
    if n_converged >= WARN_FRACTION * n_resamples:
        return ()
    msg = (f"only {n_converged} of {n_resamples} {what} converged (below {WARN_FRACTION:.0%}); "
           "intervals use the converged ones only")
    if not enough_converged(n_converged, n_resamples, min_converged):
        msg = (f"only {n_converged} of {n_resamples} {what} converged (need {min_converged:.0%} and at least "
               f"{MIN_RESAMPLES}): no bootstrap intervals given")
    return (msg + "; check that the fit converged and that the runs identify every parameter",)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _percentile(v: np.ndarray, level: float) -> tuple[float, float]:
    _check_level(level)
    lo, hi = np.nanquantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def unbounded_percentile(v: np.ndarray, level: float) -> tuple[float, float] | None:
    """Percentile interval of samples ``v`` whose non-finite entries are unbounded (a resample
    whose law has no compute optimum): they count at both ends instead of being dropped, which
    would narrow the interval. None when they are more than one tail, (1 - level) / 2, of ``v``."""
    _check_level(level)
    v = np.asarray(v, dtype=np.float64).ravel()
    finite = v[np.isfinite(v)]
    unbounded, tail = v.size - finite.size, (1 - level) / 2
    if finite.size == 0 or unbounded > tail * v.size:
        return None
    lo, hi = np.quantile(finite, [(tail * v.size - unbounded) / finite.size, min((1 - tail) * v.size / finite.size, 1.0)])
    return float(lo), float(hi)


#: how :func:`resample_weights` weighs the configurations of a resample
SCHEMES = ("multinomial", "bayesian")


def resample_weights(groups: np.ndarray, n_resamples: int, seed: int, scheme: str = "multinomial") -> np.ndarray:
    """Weight of each point in each resample [R, n], shared by the points of a group.
    ``multinomial``: its multiplicity when the k groups are drawn with replacement.
    ``bayesian``: k times a flat Dirichlet draw over the groups (Rubin 1981), so the weights
    also sum to k, and none is zero."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown resampling scheme {scheme!r}; one of {', '.join(SCHEMES)}")
    _, g = np.unique(groups, return_inverse=True, axis=0)
    g = g.reshape(-1)
    k = int(g.max()) + 1
    if k < 2:  # every resample would be the data itself: intervals of width zero
        raise ValueError("the bootstrap needs at least 2 resampling units (groups or configurations); the runs form 1")
    rng = np.random.default_rng(seed)
    if scheme == "bayesian":
        draws = rng.standard_exponential(size=(n_resamples, k))
        return (k * draws / draws.sum(1, keepdims=True))[:, g]
    counts = np.stack([np.bincount(rng.integers(0, k, size=k), minlength=k) for _ in range(n_resamples)])
    return counts[:, g].astype(np.float64)


def bootstrap(
    fit_: LawFit,
    inputs: Mapping[str, ArrayLike],
    loss: ArrayLike,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: ArrayLike | None = None,
    grid_starts: int = 2,
    options: NewtonOptions | None = None,
    threads: int | None = 1,
    min_converged: float = MIN_CONVERGED,
    cancel: Callable[[], bool] | None = None,
    scheme: str = "multinomial",
) -> BootstrapResult:
    """Bootstrap ``fit_`` (fitted on ``inputs``/``loss``) by resampling configurations.

    ``groups``: a label per point (resampling unit); default: points with identical inputs form
    one configuration. Each resample is refitted from the full-data optimum and ``grid_starts``
    starts drawn (seeded) from the law's grid; the best start per resample is kept (and counts as
    converged when that start's refit did). Deterministic for a given ``seed``.
    ``min_converged``: the fraction of resamples that must converge for intervals to be given.
    ``scheme``: how a resample weighs the configurations (:func:`resample_weights`).
    ``cancel``: asked between Newton iterations; when it says True the refits stop and
    :class:`laws.optimizer.Cancelled` is raised (a caller that no longer needs the result).
    """
    import time

    law = fit_.get_law()
    xs, y, _ = check_data(law, inputs, loss)
    x = law.prepare_inputs(xs)
    unit = np.asarray(groups) if groups is not None else np.column_stack([xs[k] for k in law.inputs])
    if unit.shape[0] != y.shape[0]:
        raise ValueError(f"groups has {unit.shape[0]} labels but there are {y.shape[0]} points")
    w = resample_weights(unit, n_resamples, seed, scheme)
    theta_hat = law.from_natural(fit_.params)
    rng = np.random.default_rng(seed + 1)
    grid = law.init_grid()
    extra = grid[torch.from_numpy(rng.choice(grid.shape[0], size=grid_starts, replace=False))] if grid_starts else grid[:0]
    starts_k = torch.cat([theta_hat[None], extra]).to(DTYPE)
    k = starts_k.shape[0]
    starts = starts_k.repeat(n_resamples, 1)
    weights = torch.from_numpy(np.repeat(w, k, axis=0))
    objective = Objective(law, x, torch.from_numpy(y.copy()), weights=weights)
    t0 = time.perf_counter()
    with torch_threads(threads):
        res = minimise_batched(
            objective.jet, objective.value, starts, options=options or NewtonOptions(max_iter=100), cancel=cancel
        )
    seconds = time.perf_counter() - t0
    obj = res.objective.view(n_resamples, k)
    best = torch.argmin(obj, dim=1)
    rows = torch.arange(n_resamples) * k + best
    # a refit whose natural parameters overflow has no usable value: it counts as not converged
    converged = (res.converged[rows] & law.representable(res.theta[rows])).numpy()
    warns = list(convergence_warnings(int(converged.sum()), n_resamples, min_converged))
    if not fit_.report.converged and fit_.report.n_starts:
        warns.insert(0, "the fit being bootstrapped did not converge: resamples start from it")
    return BootstrapResult(
        resample_digest=hashlib.sha1(np.ascontiguousarray(w).tobytes()).hexdigest(),
        law_spec=law.spec(),
        theta=res.theta[rows].numpy(),
        objective=obj[torch.arange(n_resamples), best].numpy(),
        seed=seed,
        n_groups=int(len(np.unique(unit, axis=0))),
        converged=converged,
        seconds=seconds,
        min_converged=min_converged,
        warnings=tuple(warns),
    )


def joint_bootstrap(
    fits: Sequence[LawFit],
    inputs: Mapping[str, ArrayLike],
    losses: Sequence[ArrayLike],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: ArrayLike | None = None,
    grid_starts: int = 2,
    options: NewtonOptions | None = None,
    threads: int | None = 1,
    min_converged: float = MIN_CONVERGED,
) -> list[BootstrapResult]:
    """Bootstrap several laws fitted to the same runs (e.g. one mixture law per target domain:
    the same ``inputs``, one loss per law in ``losses``) with the SAME resampled configurations:
    resample r of every law draws the same runs, so a recipe that combines the laws (the optimal
    mixture) sees the laws' correlated errors. Returns one :class:`BootstrapResult` per law, all
    with the same ``resample_digest``.
    """
    if len(fits) != len(losses):
        raise ValueError(f"joint_bootstrap: {len(fits)} fits but {len(losses)} loss arrays; give one loss per fit")
    if not fits:
        raise ValueError("joint_bootstrap needs at least one fit")
    lengths = {np.asarray(v).reshape(-1).shape[0] for v in (*inputs.values(), *losses)}
    if len(lengths) != 1:
        raise ValueError(f"joint_bootstrap: inputs and losses must describe the same runs; got lengths {sorted(lengths)}")
    if groups is None:
        # one configuration = one distinct value of every input any of the laws takes
        names = sorted({k for f in fits for k in f.get_law().inputs})
        groups = np.column_stack([np.asarray(inputs[k], dtype=np.float64).reshape(-1) for k in names])
    out = []
    for fit_, loss in zip(fits, losses, strict=True):
        law_inputs = {k: inputs[k] for k in fit_.get_law().inputs}
        out.append(bootstrap(fit_, law_inputs, loss, n_resamples=n_resamples, seed=seed, groups=groups,
                             grid_starts=grid_starts, options=options, threads=threads, min_converged=min_converged))
    return out
