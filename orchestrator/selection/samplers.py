"""Optuna samplers over a pool of candidate runs.

A trial's only parameter is ``candidate``, an index into the study's candidate pool (the expanded
grid, in its stable order). Every sampler sees the trials already proposed (finished, failed or
still in flight: ``RUNNING`` trials with a candidate) so parallel workers never get the same run,
and only proposes runs that fit in the remaining compute budget.

- :class:`InformationSampler`: target-variance reduction per FLOP^gamma, the whole remaining
  budget planned (:mod:`orchestrator.selection.criteria`), after a space-filling start;
- :class:`RandomPoolSampler`: uniformly at random (seeded), a baseline;
- :class:`CheapestSampler`: cheapest first, a baseline.

Candidates may start from runs that are not candidates themselves (a distillation student from
its teacher, a cooldown branch from its trunk: :attr:`Pool.upstream`). Such a run is paid for once, by the first trial whose
candidate needs it (the trial's user attribute :data:`UPSTREAM_FLOPS`; the Optuna journal is the
record of what the selection has spent, so a resumed selection counts it again exactly), and
costs nothing when it had finished before this selection needed it or is adopted from another
study (:attr:`Pool.upstream_free`). A candidate's *effective* cost is its own plus its upstream
run's while that run is not committed (proposed by an earlier trial, or free); the samplers
score, mask and plan with it. Within one budget-filling plan a later pick is still charged for an
upstream run an earlier pick of the same plan brings (the plan is a greedy ranking, not a
proposal: only its first pick is proposed, and the next plan is made with the costs as they
then are), so a plan may leave room for fewer students of a shared teacher than it could.
"""

from __future__ import annotations

import hashlib
import warnings
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

import laws
from orchestrator.selection.criteria import (
    PLAN_EXPONENTS,
    Target,
    greedy_information,
    noise_variance,
    normalised,
    planned_information,
    space_filling,
    target_gradients,
    target_variances,
)
from orchestrator.selection.discrepancy import (
    Discrepancy,
    bias_aware_plan,
    estimate_discrepancy,
    floor,
    standardised,
)

PARAM = "candidate"

#: trial user attribute: FLOPs of the upstream run (teacher) the trial's proposal brought, 0 when
#: that run was already committed or free
UPSTREAM_FLOPS = "upstream_flops"
#: trial user attribute: True for a candidate that had finished before the selection took it
#: over (a grid phase of the same study, or a journal since lost): known data for the sampler,
#: never proposed, and nothing spent on it by the selection
PRIOR = "prior"
#: study user attribute: the numbers of the trials a resumed selection gave up before their runs
#: finished, for a budget since lowered (failed trials, not spent, not proposed again)
DROPPED = "dropped_trials"


def _no_upstream() -> np.ndarray:
    return np.zeros(0, dtype=bool)


@dataclass(kw_only=True)
class Pool:
    """The candidates: law inputs per run [n] each, their own costs (FLOPs plus overhead) and the
    total budget. ``space`` are the coordinates the space-filling design spreads over.

    ``upstream`` [n]: for each candidate, the index of the run it starts from (its teacher) in
    ``upstream_cost`` [u] (that run's FLOPs plus overhead), -1 for none. ``upstream_free`` [u]:
    finished before this selection needed it, or adopted from another study (costs nothing
    here); ``upstream_failed`` [u]: failed for good (its candidates cannot train). Law inputs
    that come from upstream runs (a teacher's loss L_T) change as they finish and as the fit
    changes: the selector replaces ``inputs`` (never edits its arrays in place), and
    :attr:`inputs_key` tells the versions apart.
    """

    inputs: dict[str, np.ndarray]
    cost: np.ndarray
    budget: float
    space: np.ndarray
    upstream: np.ndarray | None = None
    upstream_cost: np.ndarray = field(default_factory=lambda: np.zeros(0))
    upstream_free: np.ndarray = field(default_factory=_no_upstream)
    upstream_failed: np.ndarray = field(default_factory=_no_upstream)

    @property
    def size(self) -> int:
        return int(self.cost.shape[0])

    @property
    def inputs_key(self) -> str:
        """A digest of the current law inputs (a cache key for anything computed from them)."""
        h = hashlib.sha1()
        for name in sorted(self.inputs):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.inputs[name], dtype=np.float64).tobytes())
        return h.hexdigest()

    def distribution(self) -> IntDistribution:
        return IntDistribution(0, self.size - 1)


def _trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if PARAM in t.params and t.state != TrialState.WAITING]


def proposed(study: optuna.Study) -> list[int]:
    """Candidates of every trial that has one (finished, failed or in flight)."""
    return [int(t.params[PARAM]) for t in _trials(study)]


def committed(study: optuna.Study, pool: Pool) -> np.ndarray:
    """Mask [u] of upstream runs already paid for or free: needed by a proposed candidate, or
    finished before this selection needed them (or adopted)."""
    mask = pool.upstream_free.copy()
    if pool.upstream is not None:
        ups = pool.upstream[proposed(study)]
        mask[ups[ups >= 0]] = True
    return mask


def effective_cost(study: optuna.Study, pool: Pool) -> np.ndarray:
    """What proposing each candidate now would spend [n]: its own cost, plus its upstream run's
    while that run is not committed."""
    if pool.upstream is None:
        return pool.cost
    up = pool.upstream
    pay = (up >= 0) & ~committed(study, pool)[np.maximum(up, 0)]
    return pool.cost + np.where(pay, pool.upstream_cost[np.maximum(up, 0)], 0.0)


def spent(study: optuna.Study, pool: Pool) -> float:
    """FLOPs the trials have committed: each proposed candidate's own cost plus the upstream run
    its proposal brought (recorded on the trial as :data:`UPSTREAM_FLOPS`); nothing for the
    :data:`PRIOR` and :data:`DROPPED` ones."""
    dropped = set(study.user_attrs.get(DROPPED, ()))
    return float(
        sum(
            pool.cost[int(t.params[PARAM])] + float(t.user_attrs.get(UPSTREAM_FLOPS, 0.0))
            for t in _trials(study)
            if not t.user_attrs.get(PRIOR) and t.number not in dropped
        )
    )


def budget_left(study: optuna.Study, pool: Pool) -> float:
    return pool.budget - spent(study, pool)


def available(study: optuna.Study, pool: Pool) -> np.ndarray:
    """Mask of candidates not proposed yet, whose upstream run has not failed, and affordable
    (effective cost) with what is left."""
    mask = np.ones(pool.size, dtype=bool)
    taken = proposed(study)
    mask[taken] = False
    if pool.upstream is not None and pool.upstream_failed.any():
        mask &= ~((pool.upstream >= 0) & pool.upstream_failed[np.maximum(pool.upstream, 0)])
    # a budget of exactly the pool's cost must buy all of it, whatever the summation order
    slack = 1e-12 * abs(pool.budget)
    return mask & (effective_cost(study, pool) <= budget_left(study, pool) + slack)


class PoolSampler(BaseSampler):
    """Base class: proposes one candidate index per trial."""

    def __init__(self, pool: Pool, seed: int = 0) -> None:
        self.pool = pool
        self.rng = np.random.default_rng(seed)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {PARAM: self.pool.distribution()}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if PARAM not in search_space:
            return {}
        mask = available(study, self.pool)
        if not mask.any():
            raise RuntimeError("no affordable candidate is left; check selection.exhausted() before ask()")
        return {PARAM: int(self.choose(study, mask))}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        raise ValueError(f"pool samplers only propose {PARAM!r}, not {param_name!r}")

    def reseed_rng(self) -> None:
        self.rng = np.random.default_rng()

    @abstractmethod
    def choose(self, study: optuna.Study, mask: np.ndarray) -> int:
        """The candidate to run next among ``mask``."""


class RandomPoolSampler(PoolSampler):
    def choose(self, study: optuna.Study, mask: np.ndarray) -> int:
        return int(self.rng.choice(np.flatnonzero(mask)))


class CheapestSampler(PoolSampler):
    def choose(self, study: optuna.Study, mask: np.ndarray) -> int:
        """The cheapest available candidate, counting the upstream run it would bring."""
        idx = np.flatnonzero(mask)
        return int(idx[np.argmin(effective_cost(study, self.pool)[idx])])


class InformationSampler(PoolSampler):
    """Information per unit of cost about the targets, from the current fit.

    Until the law is fitted on at least ``initial_runs`` runs, candidates come from a maximin
    space-filling design at the cheap end of the pool. Then each candidate is scored by the
    expected reduction of the targets' variance divided by cost^gamma, counting runs in flight as
    if done. With ``gamma=None`` the remaining budget is planned for several exponents and the
    first pick of the plan that leaves the least target variance is proposed
    (:func:`~orchestrator.selection.criteria.planned_information`); a number fixes the exponent
    (:func:`~orchestrator.selection.criteria.greedy_information`).

    With ``discrepancy=True`` (the default) the law is not trusted: the fit's residuals are split
    into noise and a smooth misfit of the law (REML), and candidates are scored by how much they
    lower the targets' mean squared error against the full grid's fit, bias included
    (:mod:`orchestrator.selection.discrepancy`); a misfit of ``misfit_prior`` (standard deviation
    of the log-loss) is assumed where the residuals show less. With no misfit, found or assumed,
    this is the variance criterion again.
    """

    def __init__(
        self,
        pool: Pool,
        *,
        law: laws.ScalingLaw,
        fit_provider: Callable[[], laws.LawFit | None],
        targets: Sequence[Target],
        initial_runs: int,
        gamma: float | None = None,
        discrepancy: bool = True,
        misfit_prior: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(pool, seed)
        self.law = law
        self.fit_provider = fit_provider
        self.targets = list(targets)
        self.initial_runs = initial_runs
        self.gamma = gamma
        self._cache: tuple[tuple[Any, ...], np.ndarray, np.ndarray] | None = None
        self._laws: dict[str, laws.ScalingLaw] = {}  # law spec -> the law (fit_.get_law(), built once)
        self.last_scores: list[tuple[int, float]] = []  # (candidate, gain) of recent picks
        self.last_exponent: float | None = None  # the cost exponent of the latest plan
        self.upcoming: list[int] = []  # the latest plan's picks, in order (the next choices)
        self._planned_for: tuple[float, ...] | None = None  # the fit the latest plan was made on
        self.discrepancy = discrepancy
        self.misfit_prior = misfit_prior
        self.last_found: Discrepancy | None = None  # noise and misfit the latest fit's residuals show
        self.last_discrepancy: Discrepancy | None = None  # ... and what the criterion assumes
        self._discrepancy_for: tuple[float, ...] | None = None
        self._z = standardised(pool.space)

    def law_of(self, fit_: laws.LawFit) -> laws.ScalingLaw:
        """The law ``fit_`` belongs to (``fit_.get_law()``): a law built on another fit (the
        distillation law's Ls~ from the supervised fit) changes with that fit."""
        if not fit_.law_spec:
            return self.law
        spec = repr(sorted(fit_.law_spec.items()))
        if spec not in self._laws:
            self._laws = {spec: fit_.get_law()}  # only the latest is needed
        return self._laws[spec]

    def _pool_state(self, fit_: laws.LawFit) -> tuple[np.ndarray, np.ndarray]:
        """Jacobians [n, P] and log-predictions [n] of the whole pool at the current fit, cached
        on the fit (its parameters and its law) and on the pool's current inputs."""
        law = self.law_of(fit_)
        theta = law.from_natural(fit_.params).numpy()
        key = (tuple(theta.tolist()), repr(sorted(fit_.law_spec.items())), self.pool.inputs_key)
        if self._cache is None or self._cache[0] != key:
            jac = laws.prediction_jacobian(law, theta, self.pool.inputs)
            log_pred = np.log(law.predict(fit_.params, **self.pool.inputs))
            self._cache = (key, np.nan_to_num(jac, nan=0.0, posinf=0.0, neginf=0.0), log_pred)
        return self._cache[1], self._cache[2]

    def choose(self, study: optuna.Study, mask: np.ndarray) -> int:
        taken = np.array(proposed(study), dtype=int)
        fit_ = self.fit_provider()
        left = budget_left(study, self.pool)
        cost = effective_cost(study, self.pool)
        if fit_ is None or fit_.report.n_points < self.initial_runs:
            return self._spread(taken, mask, left, cost)
        try:
            return self._plan_pick(study, mask, fit_, left, cost)
        except np.linalg.LinAlgError as exc:  # a degenerate fit must not end the study
            warnings.warn(
                f"selection: the criterion failed on the current fit ({exc}); this run is chosen to spread the design",
                RuntimeWarning,
                stacklevel=2,
            )
            self.upcoming = []
            return self._spread(taken, mask, left, cost)

    def _spread(self, taken: np.ndarray, mask: np.ndarray, left: float, cost: np.ndarray) -> int:
        """A space-filling pick. The start spends at most half of the budget, so a small budget is
        not gone before the criterion takes over."""
        return space_filling(
            self.pool.space, cost, 1, taken=taken, allowed=mask, budget_left=left, rng=self.rng,
            max_cost=0.5 * self.pool.budget / max(self.initial_runs, 1),
        )[0]

    def _plan_pick(
        self, study: optuna.Study, mask: np.ndarray, fit_: laws.LawFit, left: float, cost: np.ndarray
    ) -> int:
        """The first pick of the criterion's plan of the remaining budget (scored with the
        candidates' effective costs)."""
        jac, log_pred = self._pool_state(fit_)
        done = [t for t in study.get_trials(deepcopy=False) if PARAM in t.params and t.state in _COUNTED]
        done_idx = np.array([int(t.params[PARAM]) for t in done], dtype=int)
        complete = [t for t in done if t.state == TrialState.COMPLETE and t.value is not None]
        finished = np.array([int(t.params[PARAM]) for t in complete], dtype=int)
        residuals = log_pred[finished] - np.log([t.value for t in complete]) if complete else np.empty(0)
        g = target_gradients(self.law_of(fit_), fit_, self.targets)
        fit_key = self._cache[0] if self._cache else None
        # a new fit: plan the remaining budget afresh; asks before the next fit (a batch filling
        # several free slots) follow the same plan's exponent
        replan = self.gamma is None and (fit_key != self._planned_for or self.last_exponent is None)
        exponents = PLAN_EXPONENTS if replan else (self.gamma if self.gamma is not None else self.last_exponent,)
        if self.discrepancy:
            if fit_key != self._discrepancy_for or self.last_discrepancy is None:
                self.last_found = estimate_discrepancy(self._z[finished], residuals, jac[finished])
                self.last_discrepancy = floor(self.last_found, self.misfit_prior)
                self._discrepancy_for = fit_key
            plan = bias_aware_plan(
                jac, cost, done_idx, g, self._z, self.last_discrepancy, budget_left=left,
                allowed=mask, exponents=exponents, k=None if replan else 1,
            )
        else:
            sigma2 = noise_variance(fit_, residuals)
            if replan:
                plan = planned_information(
                    jac, cost, jac[done_idx], g, sigma2=sigma2, allowed=mask, budget_left=left
                )
            else:
                gn = normalised(g, target_variances(jac[done_idx], g, sigma2=sigma2))
                plan = greedy_information(
                    jac, cost, jac[done_idx], gn, sigma2=sigma2, k=1, gamma=exponents[0], allowed=mask,
                    budget_left=left,
                )
        if replan:
            self.last_exponent = plan.exponent if plan else None
            self._planned_for = fit_key
            self.upcoming = list(plan.picks) if plan else []
        if plan is None or not plan.picks:
            return int(np.flatnonzero(mask)[0])
        self.last_scores = [*self.last_scores[-9:], (plan.picks[0], plan.gains[0])]
        return plan.picks[0]


_COUNTED = (TrialState.COMPLETE, TrialState.RUNNING)
