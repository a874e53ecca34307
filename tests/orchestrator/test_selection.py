"""Budgeted run selection: the information criterion, the Optuna selector, resume and baselines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import laws
from orchestrator.errors import StudyError
from orchestrator.executors import InlineExecutor
from orchestrator.grid import expand, trained_flops
from orchestrator.loading import study_from_dict
from orchestrator.selection import (
    Selector,
    Target,
    greedy_information,
    space_filling,
    target_gradients,
    target_widths,
)
from orchestrator.selection.criteria import (
    design_bound,
    log_n_opt,
    normalised,
    planned_information,
    target_variances,
)
from orchestrator.study import run_study, selection_journal
from orchestrator.tracking import FinishedRun, MemoryTracker
from trainers.simulated import REPLICATION_CHINCHILLA


def _study(mode: str = "active", **selection) -> object:
    sel = {"mode": mode, "budget_fraction": 0.3, "target": {"budget": 1e22}, "refit_every": 1000}
    sel.update(selection)
    return study_from_dict(
        {
            "name": f"sel-{mode}",
            "seed": 0,
            "trainer": {"kind": "simulated", "simulated": {"noise": 0.005}},
            "grid": {"isoflop": {"budgets": [1e17, 1e18, 1e19, 1e20], "points_per_budget": 7, "span": 30}},
            "laws": ["chinchilla"],
            "selection": sel,
        }
    )


def _true_fit() -> laws.LawFit:
    report = laws.FitReport(n_points=0, n_starts=0, n_best=0, best_tol=0.0, grad_norm=0.0, converged=True)
    return laws.LawFit(law="chinchilla", params=dict(REPLICATION_CHINCHILLA), objective=0.0, report=report)


def test_greedy_rank_one_updates_match_recomputed_variances() -> None:
    rng = np.random.default_rng(0)
    p, n = 4, 40
    j_pool, j_done, g = rng.normal(size=(n, p)), rng.normal(size=(6, p)), rng.normal(size=(2, p))
    cost = rng.uniform(1, 5, size=n)
    s = greedy_information(j_pool, cost, j_done, g, sigma2=0.3, k=3, gamma=0.0, prior_precision=0.0)
    assert len(s.picks) == 3 and len(set(s.picks)) == 3
    # each greedy gain equals the exact drop of the target variance when that run is added
    chosen = list(j_done)
    for i, gain in zip(s.picks, s.gains, strict=True):
        before = np.trace(g @ np.linalg.inv(np.array(chosen).T @ np.array(chosen) / 0.3) @ g.T)
        after_rows = np.array([*chosen, j_pool[i]])
        after = np.trace(g @ np.linalg.inv(after_rows.T @ after_rows / 0.3) @ g.T)
        assert gain == pytest.approx(before - after, rel=1e-8)
        # and it is the best single addition among the remaining candidates
        others = [
            np.trace(g @ np.linalg.inv(np.array([*chosen, j_pool[c]]).T @ np.array([*chosen, j_pool[c]]) / 0.3) @ g.T)
            for c in range(n)
            if c not in s.picks[: s.picks.index(i)]
        ]
        assert after == pytest.approx(min(others), rel=1e-8)
        chosen.append(j_pool[i])


def test_greedy_respects_budget_and_mask() -> None:
    rng = np.random.default_rng(1)
    j_pool, g = rng.normal(size=(10, 3)), rng.normal(size=(1, 3))
    cost = np.arange(1.0, 11.0)
    allowed = np.ones(10, dtype=bool)
    allowed[0] = False
    s = greedy_information(j_pool, cost, rng.normal(size=(5, 3)), g, sigma2=1.0, k=10, allowed=allowed, budget_left=7.0)
    assert 0 not in s.picks
    assert cost[s.picks].sum() <= 7.0


def _chinchilla_pool() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jacobians and costs of a 7-budget isoFLOP grid at the true law, and the gradients of the
    loss and N_opt at the 1e22-FLOP optimum."""
    study = _study("active")
    grid = expand(study)
    law = laws.get_law("chinchilla")
    n = np.array([r.plan.n_params for r in grid], dtype=float)
    cost = np.array([r.plan.flops for r in grid], dtype=float)
    from orchestrator.tracking import law_inputs

    rows = [law_inputs(r.plan, r.spec) for r in grid]
    inputs = {k: np.array([row[k] for row in rows]) for k in law.inputs}
    assert n.size == cost.size
    jac = laws.prediction_jacobian(law, law.from_natural(REPLICATION_CHINCHILLA), inputs)
    g = target_gradients(law, _true_fit(), [Target(kind="loss", budget=1e22), Target(kind="N_opt", budget=1e22)])
    return jac, cost, g


def test_planned_selection_leaves_less_variance_than_any_fixed_exponent() -> None:
    jac, cost, g = _chinchilla_pool()
    done = np.arange(0, len(cost), 4)[:6]  # a few runs already finished
    allowed = np.ones(len(cost), dtype=bool)
    allowed[done] = False
    sigma2 = 1e-4
    v0 = target_variances(jac[done], g, sigma2=sigma2)
    for fraction in (0.02, 0.3):
        left = fraction * cost.sum()
        plan = planned_information(jac, cost, jac[done], g, sigma2=sigma2, allowed=allowed, budget_left=left)
        assert plan is not None
        assert cost[plan.picks].sum() <= left and not set(plan.picks) & set(done.tolist())
        final = target_variances(np.vstack([jac[done], jac[plan.picks]]), g, sigma2=sigma2) / v0
        np.testing.assert_allclose(final, plan.relative_variance, rtol=1e-6)
        for gamma in (0.0, 0.5, 1.0):
            fixed = greedy_information(jac, cost, jac[done], normalised(g, v0), sigma2=sigma2, k=len(cost),
                                       gamma=gamma, allowed=allowed, budget_left=left)
            other = target_variances(np.vstack([jac[done], jac[fixed.picks]]), g, sigma2=sigma2) / v0
            assert plan.relative_variance.sum() <= other.sum() * (1 + 1e-9)
    # nothing affordable: no plan
    assert planned_information(jac, cost, jac[done], g, sigma2=sigma2, allowed=allowed, budget_left=0.5 * cost.min()) is None


def test_design_bound_is_the_fractional_knapsack_for_one_parameter() -> None:
    # one parameter, one target: variance = sigma^2 / sum_i w_i j_i^2, so the relaxed optimum fills
    # the budget by information per cost, taking a fraction of the last candidate it reaches
    j = np.array([[1.0], [2.0], [3.0], [0.5]])
    cost = np.array([1.0, 2.0, 6.0, 0.1])
    info = j[:, 0] ** 2
    order = np.argsort(-info / cost)  # 3 (2.5/unit), 1 (2.0), 2 (1.5), 0 (1.0)
    budget = 5.0
    w, left = np.zeros(4), budget
    for i in order:
        w[i] = min(1.0, left / cost[i])
        left -= w[i] * cost[i]
    best = 1.0 / (w * info).sum()
    b = design_bound(j, cost, np.array([[1.0]]), sigma2=1.0, budget=budget)
    assert float(b.variances[0]) == pytest.approx(best, rel=1e-6)
    assert b.lower == pytest.approx(best, rel=1e-6) and b.lower <= best
    assert (b.weights >= 0).all() and (b.weights <= 1).all() and (b.weights * cost).sum() <= budget * (1 + 1e-9)


def test_design_bound_is_below_every_affordable_subset() -> None:
    jac, cost, g = _chinchilla_pool()
    sigma2 = 1e-4
    full = target_variances(jac, g, sigma2=sigma2)
    scale = np.sqrt(full)
    # the whole budget: the bound is the whole pool
    everything = design_bound(jac, cost, g, sigma2=sigma2, budget=cost.sum(), target_scale=scale)
    np.testing.assert_allclose(everything.variances, full, rtol=1e-6)
    budget = 0.1 * cost.sum()
    b = design_bound(jac, cost, g, sigma2=sigma2, budget=budget, target_scale=scale)
    assert b.lower <= b.objective <= 1.01 * b.lower  # converged: the certificate is tight
    bound = b.lower
    assert bound > 2.0  # a tenth of the compute cannot match the full grid on this pool
    plan = planned_information(jac, cost, np.zeros((0, jac.shape[1])), g, sigma2=sigma2, budget_left=budget,
                               prior_precision=1e-2)
    assert plan is not None
    planned = (target_variances(jac[plan.picks], g, sigma2=sigma2) / full).sum()
    assert bound <= planned <= 1.5 * bound  # the planned greedy design is close to the optimum
    rng = np.random.default_rng(0)
    for _ in range(20):
        order = rng.permutation(len(cost))
        subset = order[np.cumsum(cost[order]) <= budget]
        assert (target_variances(jac[subset], g, sigma2=sigma2) / full).sum() >= bound


def test_space_filling_spreads_over_the_cheap_end() -> None:
    x = np.array([[a, b] for a in range(10) for b in range(10)], dtype=float)
    cost = x.sum(1) + 1
    picks = space_filling(
        x, cost, 4, taken=np.array([], dtype=int), allowed=np.ones(100, dtype=bool),
        budget_left=np.inf, rng=np.random.default_rng(0),
    )
    assert len(set(picks)) == 4
    assert all(cost[i] <= np.quantile(cost, 0.5) for i in picks)
    pts = x[picks]
    min_dist = min(np.linalg.norm(a - b) for i, a in enumerate(pts) for b in pts[i + 1 :])
    assert min_dist >= 3.0  # a maximin design, not a clump


def test_space_filling_keeps_within_a_cost_cap() -> None:
    x = np.array([[a, b] for a in range(10) for b in range(10)], dtype=float)
    cost = x.sum(1) + 1
    start = dict(taken=np.array([], dtype=int), allowed=np.ones(100, dtype=bool), budget_left=np.inf)
    picks = space_filling(x, cost, 4, **start, max_cost=4.0, rng=np.random.default_rng(0))
    assert len(set(picks)) == 4 and all(cost[i] <= 4.0 for i in picks)
    # a cap below every candidate falls back to the cheapest ones
    picks = space_filling(x, cost, 3, **start, max_cost=0.5, rng=np.random.default_rng(0))
    assert sorted(cost[picks]) == sorted(np.sort(cost)[:3])


def test_n_opt_gradient_matches_finite_differences() -> None:
    law = laws.get_law("chinchilla")
    fit_ = _true_fit()
    g = target_gradients(law, fit_, [Target(kind="N_opt", budget=1e21)])[0]
    theta = law.from_natural(fit_.params)
    eps = 1e-6
    for i in range(law.n_params):
        d = theta.clone()
        d[i] += eps
        fd = (log_n_opt(law, d, budget=1e21) - log_n_opt(law, theta, budget=1e21)) / eps
        assert g[i] == pytest.approx(float(fd), rel=1e-4, abs=1e-7)
    # and log N_opt itself is the closed form of the recipes module
    n_opt = laws.compute_optimal(fit_, [1e21])[0].N_opt
    assert float(log_n_opt(law, theta, budget=1e21)) == pytest.approx(np.log(n_opt), rel=1e-12)


@pytest.mark.parametrize("mode", ["active", "random", "cheapest"])
def test_budgeted_study_spends_within_budget_without_duplicates(mode: str) -> None:
    study = _study(mode)
    grid = expand(study)
    budget = 0.3 * sum(r.plan.flops for r in grid)
    tracker = MemoryTracker()
    storage = optuna.storages.InMemoryStorage()
    outcome = run_study(study, tracker=tracker, executor=InlineExecutor(), optuna_storage=storage, background_refit=False)
    runs = [r for r in tracker.runs.values() if r["status"] == "FINISHED"]
    keys = [r["run_key"] for r in runs]
    assert len(keys) == len(set(keys)) == outcome.stats.finished > 5
    spent = sum(r["plan"].flops for r in runs)
    assert spent <= budget * (1 + 1e-9)
    assert outcome.stopped is not None and "budget spent" in outcome.stopped
    # every run is an Optuna trial, told its final loss, and tagged with its trial number
    trials = optuna.load_study(study_name=study.name, storage=storage).get_trials()
    assert len(trials) == len(runs) and all(t.state == TrialState.COMPLETE for t in trials)
    by_number = {t.number: t.value for t in trials}
    for r in runs:
        number = int(r["tags"]["isoflop.trial"])
        assert by_number[number] == pytest.approx(r["finished"].final_loss)
        # the trial names its run in the study's terms
        trial = next(t for t in trials if t.number == number)
        assert trial.user_attrs["run_key"] == r["run_key"] and trial.user_attrs["flops"] == r["plan"].flops
        assert trial.user_attrs["inputs"]["N"] == r["plan"].n_params
    if mode == "cheapest":
        chosen = sorted(r["plan"].flops for r in runs)
        assert chosen == sorted(r.plan.flops for r in grid)[: len(chosen)]


@pytest.mark.parametrize("mode", ["active", "random"])
def test_a_resumed_selection_fits_every_run_it_has_trained(mode: str) -> None:
    """Resuming a budgeted study (a larger budget, the same store and journal) counts the runs
    earlier invocations trained: the refits and the final fit see all of them, none is trained
    or proposed twice, and the summary says how many were already done."""
    tracker, storage = MemoryTracker(), optuna.storages.InMemoryStorage()
    first = run_study(_study(mode, budget_fraction=0.1), tracker=tracker, executor=InlineExecutor(),
                      optuna_storage=storage, background_refit=False)
    earlier = first.stats.finished
    assert earlier >= 5 and first.laws[0].n_points == earlier
    second = run_study(_study(mode, budget_fraction=0.3), tracker=tracker, executor=InlineExecutor(),
                       optuna_storage=storage, background_refit=False)
    assert second.stats.skipped == earlier and second.stats.finished > 0
    finished = [r for r in tracker.runs.values() if r["status"] == "FINISHED"]
    keys = [r["run_key"] for r in finished]
    assert len(keys) == len(set(keys)) == earlier + second.stats.finished
    assert second.laws[0].n_points == len(keys)  # the final fit: every run, not only the new ones
    assert max(step for _, step, _ in tracker.fits) == len(keys)
    # every online refit of the resumed invocation already counts the earlier runs
    resumed = [step for _, step, _ in tracker.fits[len([f for f in tracker.fits if f[1] <= earlier]) :]]
    assert resumed and min(resumed) > earlier
    trials = optuna.load_study(study_name=f"sel-{mode}", storage=storage).get_trials()
    assert len(trials) == len(keys) and all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.parametrize("points", [5, 9])
def test_a_selection_whose_candidates_changed_is_refused_before_anything_is_written(points: int) -> None:
    """The journal names candidates by pool index: a grid with fewer points (an index past the
    pool) or more (the same index, another run) must not be continued."""
    tracker, storage = MemoryTracker(), optuna.storages.InMemoryStorage()
    run_study(_study("random", budget_fraction=0.1), tracker=tracker, executor=InlineExecutor(),
              optuna_storage=storage, background_refit=False)
    runs_before = {k: dict(v) for k, v in tracker.runs.items()}
    raw = {
        "name": "sel-random", "seed": 0,
        "trainer": {"kind": "simulated", "simulated": {"noise": 0.005}},
        "grid": {"isoflop": {"budgets": [1e17, 1e18, 1e19, 1e20], "points_per_budget": points, "span": 30}},
        "laws": ["chinchilla"],
        "selection": {"mode": "random", "budget_fraction": 0.3, "target": {"budget": 1e22}, "refit_every": 1000},
    }
    changed = study_from_dict(raw)
    with pytest.raises(StudyError) as err:
        run_study(changed, tracker=tracker, executor=InlineExecutor(), optuna_storage=storage, background_refit=False)
    assert err.value.key == "grid" and "candidate runs changed" in str(err.value)
    assert {k: dict(v) for k, v in tracker.runs.items()} == runs_before


def test_active_selection_resumes_where_a_dead_driver_stopped() -> None:
    study = _study("active")
    grid = expand(study)
    storage = optuna.storages.InMemoryStorage()
    first = Selector(study, grid, fit_provider=lambda name: None, storage=storage)
    proposed = first.propose(3)  # three in flight; then the driver dies without telling Optuna
    assert len({r.spec.run_key for r in proposed}) == 3
    second = Selector(study, grid, fit_provider=lambda name: None, storage=storage)
    again = second.propose(3)
    assert [r.spec.run_key for r in again] == [r.spec.run_key for r in proposed]
    assert [r.tags["isoflop.trial"] for r in again] == [r.tags["isoflop.trial"] for r in proposed]
    fresh = second.propose(2)
    assert not {r.spec.run_key for r in fresh} & {r.spec.run_key for r in proposed}


@pytest.mark.parametrize("mode", ["active", "cheapest"])
def test_runs_finished_before_the_selection_are_known_never_proposed_and_free(mode: str) -> None:
    """A study run as a grid, then switched to a selection: its finished candidates were not in
    the journal, so the selection proposed them again (skipped by the scheduler, paid for by the
    budget: 'budget spent' after training nothing). They are now completed trials marked prior:
    in the design, never proposed, outside the spent FLOPs, and added once across resumes."""
    study = _study(mode)
    grid = expand(study)
    cheapest = sorted(grid, key=lambda r: r.plan.flops)[:6]  # what cheapest-first would take first
    finished = {r.spec.run_key: FinishedRun(run_key=r.spec.run_key, run_id=f"g{i}", inputs={}, final_loss=3.0 + i)
                for i, r in enumerate(cheapest)}
    storage = optuna.storages.InMemoryStorage()
    sel = Selector(study, grid, fit_provider=lambda name: None, storage=storage)
    assert {r.spec.run_key for r in sel.start(finished)} == set(finished)
    prior = [t for t in sel.study.trials if t.user_attrs.get("prior")]
    assert sorted(t.user_attrs["run_key"] for t in prior) == sorted(finished)
    assert all(t.state == TrialState.COMPLETE for t in prior) and sorted(t.value for t in prior) == [3.0 + i for i in range(6)]
    assert sel.spent() == 0.0
    assert sel.diagnostics()["selection.prior_flops"] == pytest.approx(sum(r.plan.flops for r in cheapest), rel=1e-9)
    picks = sel.propose(4)
    assert len(picks) == 4 and not {r.spec.run_key for r in picks} & set(finished)
    assert sel.spent() == pytest.approx(sum(r.plan.flops for r in picks), rel=1e-9)
    again = Selector(study, grid, fit_provider=lambda name: None, storage=storage)
    again.start(finished)  # a resume: the prior trials are in the journal already
    assert sum(bool(t.user_attrs.get("prior")) for t in again.study.trials) == 6


def test_a_run_that_finished_after_its_driver_died_is_told_not_proposed_again() -> None:
    study = _study("active")
    grid = expand(study)
    storage = optuna.storages.InMemoryStorage()
    proposed = Selector(study, grid, fit_provider=lambda name: None, storage=storage).propose(3)
    done = proposed[0]  # its result reached the store; the driver died before telling Optuna
    finished = {done.spec.run_key: FinishedRun(run_key=done.spec.run_key, run_id="r0", inputs={}, final_loss=3.25)}
    second = Selector(study, grid, fit_provider=lambda name: None, storage=storage)
    assert [r.spec.run_key for r in second.start(finished)] == [done.spec.run_key]
    trial = second.study.trials[int(done.tags["isoflop.trial"])]
    assert trial.state == TrialState.COMPLETE and trial.value == 3.25
    again = second.propose(2)
    assert [r.spec.run_key for r in again] == [r.spec.run_key for r in proposed[1:]]


def _selector_on_the_true_law(**selection) -> tuple[object, list, Selector]:
    """An active selector past its space-filling start whose fit is the true law (20 runs)."""
    study = _study("active", initial_runs=1, **selection)
    grid = expand(study)
    true = _true_fit()
    fit_ = laws.LawFit(law=true.law, params=true.params, objective=0.0, report=laws.FitReport(
        n_points=20, n_starts=1, n_best=1, best_tol=0.0, grad_norm=0.0, converged=True))
    sel = Selector(study, grid, fit_provider=lambda name: fit_, storage=optuna.storages.InMemoryStorage())
    return study, grid, sel


@pytest.mark.parametrize("discrepancy", [True, False])
def test_active_prefers_informative_runs_over_cheap_ones(discrepancy: bool) -> None:
    # with the true law known, the first criterion-driven picks are not simply the cheapest runs
    study, grid, sel = _selector_on_the_true_law(discrepancy=discrepancy)
    picks = sel.propose(6)
    costs = sorted(r.plan.flops for r in grid)
    assert max(r.plan.flops for r in picks) > costs[5], "pure cheapest-first would have taken the 6 cheapest"
    assert len({r.spec.run_key for r in picks}) == 6


def test_a_criterion_that_fails_on_a_fit_falls_back_to_spreading_the_design(monkeypatch) -> None:
    from orchestrator.selection import samplers

    def singular(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(samplers, "bias_aware_plan", singular)
    study, grid, sel = _selector_on_the_true_law()
    with pytest.warns(RuntimeWarning, match="criterion failed on the current fit"):
        picks = sel.propose(3)
    assert len({r.spec.run_key for r in picks}) == 3  # the study goes on, without duplicates


@pytest.mark.parametrize(("discrepancy", "planner"), [(True, "bias_aware_plan"), (False, "planned_information")])
def test_a_batch_asked_on_one_fit_is_planned_once(monkeypatch, discrepancy: bool, planner: str) -> None:
    from orchestrator.selection import samplers

    calls = []
    real = getattr(samplers, planner)

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        plan = real(*args, **kwargs)
        if kwargs.get("k") is None:  # a whole-budget plan over every exponent, not a single pick
            calls.append(plan.exponent)
        return plan

    monkeypatch.setattr(samplers, planner, counting)
    study, grid, sel = _selector_on_the_true_law(discrepancy=discrepancy)
    picks = sel.propose(4)
    assert len({r.spec.run_key for r in picks}) == 4
    assert len(calls) == 1  # the other three follow the plan's cost exponent
    assert sel.sampler.last_exponent == calls[0]


@pytest.mark.parametrize(
    ("selection", "key"),
    [
        ({"mode": "active", "target": {"budget": 1e22}}, "selection.budget_flops"),
        ({"mode": "active", "budget_fraction": 1.5, "target": {"budget": 1e22}}, "selection.budget_fraction"),
        ({"mode": "active", "budget_fraction": 0.1}, "selection.target"),
        ({"mode": "active", "budget_fraction": 0.1, "target": {"budget": 1e22, "quantities": ["loss", "x"]}},
         "selection.target.quantities[1]"),
        ({"mode": "active", "budget_fraction": 0.1, "target": {"points": [{"N": 1e9}]}}, "selection.target.points[0]"),
        ({"mode": "random", "budget_flops": 1e18, "budget_fraction": 0.1}, "selection.budget_fraction"),
        ({"mode": "active", "budget_fraction": 0.1, "law": "chinchilla_gamma", "target": {"budget": 1e22}},
         "selection.law"),
        ({"mode": "active", "budget_fraction": 0.1, "cost_exponent": -1, "target": {"budget": 1e22}},
         "selection.cost_exponent"),
        ({"mode": "active", "budget_fraction": 0.1, "misfit_prior": -0.01, "target": {"budget": 1e22}},
         "selection.misfit_prior"),
        ({"mode": "bayes"}, "selection.mode"),
        ({"mode": "grid", "tolerance": 0.1}, "selection.tolerance"),
    ],
)
def test_bad_selection_names_the_key(selection: dict, key: str) -> None:
    with pytest.raises(StudyError) as err:
        study_from_dict(
            {
                "name": "bad",
                "trainer": {"kind": "simulated"},
                "grid": {"N": [1e6, 1e7], "D": [1e8]},
                "selection": selection,
            }
        )
    assert err.value.key == key


def test_budget_below_the_cheapest_run_is_rejected_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    study = _study("random", budget_fraction=None, budget_flops=1.0)
    tracker = MemoryTracker()
    with pytest.raises(StudyError) as err:
        run_study(study, tracker=tracker, executor=InlineExecutor())  # the study's own Optuna journal
    assert err.value.key == "selection.budget_flops"
    assert tracker.parent_id == "" and not tracker.runs
    assert not selection_journal(study).exists()  # no empty journal left for a later run to find


def _replay(**selection) -> object:
    root = Path(__file__).resolve().parents[1] / "data" / "epoch_chinchilla.csv"
    return study_from_dict(
        {
            "name": "replay",
            "trainer": {
                "kind": "replay",
                "replay": {"path": str(root), "columns": {"N": "Model Size", "C": "Training FLOP", "loss": "loss"},
                           "max_loss": 3.44},
            },
            "selection": {"refit_every": 1000, **selection},
        }
    )


def test_replaying_the_whole_table_reproduces_the_replication_fit() -> None:
    outcome = run_study(_replay(), tracker=MemoryTracker(), executor=InlineExecutor())
    assert outcome.stats.finished == 240
    fit = outcome.laws[0].fit
    assert fit is not None
    for name, published in {"E": 1.8172, "A": 477.8, "B": 2143.0, "alpha": 0.3473, "beta": 0.3672}.items():
        assert fit.params[name] == pytest.approx(published, rel=5e-3)


def test_active_selection_on_the_replayed_table_spends_a_tenth() -> None:
    study = _replay(mode="active", budget_fraction=0.1, target={"budget": 5.76e23})
    tracker = MemoryTracker()
    outcome = run_study(study, tracker=tracker, executor=InlineExecutor(), optuna_storage=optuna.storages.InMemoryStorage())
    total = sum(r.plan.flops for r in expand(study))
    spent = sum(r["plan"].flops for r in tracker.runs.values() if r["status"] == "FINISHED")
    assert 0.05 * total < spent <= 0.1 * total
    assert outcome.laws[0].fit is not None and outcome.stats.finished < 240
    # the selection's beliefs are logged on the parent run as the runs finish: on real runs the
    # law's misfit (a smooth departure of a few per cent) outweighs the seed noise
    steps = [step for step, _ in tracker.study_metrics]
    assert steps == sorted(steps) and len(steps) >= 2
    last = tracker.study_metrics[-1][1]
    assert last["selection.spent_flops"] <= last["selection.budget_flops"] == pytest.approx(0.1 * total)
    assert last["selection.misfit_sd"] > 2 * last["selection.noise_sd"] > 0


def _space_study(mode: str = "active", seed: int = 0, **space) -> object:
    region = {"N": {"min": 3e6, "max": 3e9}, "C": {"min": 1e17, "max": 1e20}, "candidates": 256, **space}
    return study_from_dict(
        {
            "name": f"space-{mode}",
            "seed": seed,
            "trainer": {"kind": "simulated", "simulated": {"noise": 0.005}},
            "grid": {"space": region},
            "laws": ["chinchilla"],
            "selection": {"mode": mode, "budget_flops": 2e20, "target": {"budget": 1e22}, "refit_every": 1000},
        }
    )


def test_a_continuous_space_is_a_seeded_sobol_pool_within_its_ranges() -> None:
    runs = expand(_space_study())
    assert len(runs) == 256
    n = np.array([r.plan.n_params for r in runs], dtype=float)
    c = np.array([r.plan.flops for r in runs])
    assert n.min() >= 3e6 * 0.999 and n.max() <= 3e9 * 1.001
    assert c.min() >= 1e17 * 0.99 and c.max() <= 1e20 * 1.01
    # spread evenly over log N and log C (Sobol: every eighth of each log range is populated alike)
    for x, lo, hi in ((np.log(n), np.log(3e6), np.log(3e9)), (np.log(c), np.log(1e17), np.log(1e20))):
        counts = np.histogram(x, bins=8, range=(lo, hi))[0]
        assert counts.min() >= 26 and counts.max() <= 38, counts
    # deterministic given the seed, another seed another pool
    assert [r.key for r in expand(_space_study())] == [r.key for r in runs]
    assert not {r.key for r in expand(_space_study(seed=1))} & {r.key for r in runs}


def test_continuous_mixtures_cover_the_simplex_above_the_minimum_weight() -> None:
    from orchestrator.grid import stick_breaking

    rng = np.random.default_rng(0)
    w = stick_breaking(rng.random((20000, 2)), 3)
    assert np.allclose(w.sum(axis=1), 1) and (w >= 0).all()
    # uniform variables give the flat Dirichlet: each weight's marginal is Beta(1, 2)
    assert np.allclose(w.mean(axis=0), 1 / 3, atol=0.01) and np.allclose(w.var(axis=0), 1 / 18, atol=0.003)
    study = study_from_dict(
        {
            "name": "space-mix",
            "trainer": {"kind": "simulated", "data": {"domains": {"a": {"source": "stdlib"}, "b": {"source": "pydoc"},
                                                                  "c": {"source": "mlflow_docs"}}}},
            "grid": {"space": {"N": {"min": 1e6, "max": 1e8}, "tokens_per_param": {"min": 5, "max": 100},
                               "mixture": True, "min_weight": 0.1, "candidates": 64}},
            "selection": {"mode": "random", "budget_fraction": 0.2},
        }
    )
    mixtures = np.array([r.spec.point.mixture for r in expand(study)])
    assert mixtures.shape == (64, 3) and np.allclose(mixtures.sum(axis=1), 1) and mixtures.min() >= 0.1 - 1e-12
    assert len({tuple(m) for m in mixtures.round(6)}) == 64  # every candidate its own mixture


@pytest.mark.parametrize(
    ("space", "selection", "key"),
    [
        ({"C": None}, {}, "grid.space.D"),
        ({"D": {"min": 1e9, "max": 1e10}}, {}, "grid.space.D"),
        ({"N": {"min": 1e7, "max": 1e6}}, {}, "grid.space.N.max"),
        ({"C": {"min": 0, "max": 1e20}}, {}, "grid.space.C.min"),
        ({"candidates": 0}, {}, "grid.space.candidates"),
        ({"min_weight": 0.1}, {}, "grid.space.min_weight"),
        ({}, {"mode": "grid"}, "selection.mode"),
    ],
)
def test_bad_continuous_spaces_name_the_key(space: dict, selection: dict, key: str) -> None:
    raw = {
        "name": "bad-space",
        "trainer": {"kind": "simulated"},
        "grid": {"space": {"N": {"min": 1e6, "max": 1e9}, "C": {"min": 1e17, "max": 1e20}, **space}},
        "selection": {"mode": "active", "budget_fraction": 0.1, "target": {"budget": 1e22}, **selection},
    }
    raw["grid"]["space"] = {k: v for k, v in raw["grid"]["space"].items() if v is not None}
    with pytest.raises(StudyError) as info:
        expand(study_from_dict(raw))
    assert info.value.key == key, str(info.value)


def test_active_selection_over_a_continuous_space_predicts_the_target() -> None:
    """The criterion works the same on a sampled continuous region as on a grid: within the
    budget, no run twice, and the loss at the compute optimum of 1e22 FLOPs (50x the budget)
    predicted within a few percent of the truth."""
    study = _space_study()
    tracker = MemoryTracker()
    outcome = run_study(
        study, tracker=tracker, executor=InlineExecutor(), optuna_storage=optuna.storages.InMemoryStorage(),
        background_refit=False,
    )
    runs = [r for r in tracker.runs.values() if r["status"] == "FINISHED"]
    assert sum(r["plan"].flops for r in runs) <= 2e20 * (1 + 1e-9)
    assert len({r["run_key"] for r in runs}) == len(runs) >= 10
    fit = outcome.laws[0].fit
    opt = laws.compute_optimal(fit, [1e22])[0]
    true = laws.compute_optimal(_true_fit(), [1e22])[0]
    assert opt.loss == pytest.approx(true.loss, rel=0.03)


def test_a_budget_beyond_the_pool_stops_when_every_candidate_is_taken() -> None:
    """A budget larger than the whole pool: the selection ends because no candidate is left, says
    so, and reports what it spent exactly (not budget minus a remainder lost to rounding)."""
    study = _study("cheapest", budget_fraction=None, budget_flops=1e40)
    grid = expand(study)
    outcome = run_study(study, tracker=MemoryTracker(), executor=InlineExecutor(),
                        optuna_storage=optuna.storages.InMemoryStorage(), background_refit=False)
    assert outcome.stats.finished == len(grid)
    total = sum(r.plan.flops for r in grid)
    assert outcome.stopped == f"every candidate run taken ({total:.3g} of 1e+40 FLOPs spent)"


def _simulated_table(n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    x = {"N": 10 ** rng.uniform(7, 9, n), "D": 10 ** rng.uniform(9, 11, n)}
    y = laws.get_law("chinchilla").predict(REPLICATION_CHINCHILLA, **x) * np.exp(0.01 * rng.normal(size=n))
    return x, y


def test_stopping_widths_are_the_bootstrap_percentile_intervals_of_the_targets() -> None:
    from laws.bootstrap import bootstrap

    x, y = _simulated_table(40)
    fit_ = laws.fit("chinchilla", x, y)
    targets = [Target(kind="loss", inputs={"N": 1e10, "D": 2e11}), Target(kind="loss", budget=1e22),
               Target(kind="N_opt", budget=1e22)]
    widths = target_widths(fit_, x, y, targets, n_resamples=100, seed=3)
    boot = bootstrap(fit_, x, y, n_resamples=100, seed=3, scheme="bayesian")

    def half_width(interval: tuple[float, float], centre: float) -> float:
        return max(interval[1] / centre - 1.0, centre / interval[0] - 1.0)

    lo, hi = boot.prediction_interval(N=1e10, D=2e11)
    optimum = laws.compute_optimal(fit_, [1e22])[0]
    loss_at_optimum = boot.derived_interval(lambda f: laws.compute_optimal(f, [1e22])[0].loss)
    expected = [
        half_width((lo[0], hi[0]), float(fit_.predict(N=1e10, D=2e11))),
        half_width(loss_at_optimum, optimum.loss),
        half_width(boot.optimum_interval(1e22)["N_opt"], optimum.N_opt),
    ]
    assert list(widths) == [t.label for t in targets]
    assert list(widths.values()) == pytest.approx(expected, rel=1e-3)
    assert all(0 < w < np.inf for w in widths.values())


def test_stopping_widths_need_two_configurations_per_parameter() -> None:
    """Five runs fit the five-parameter law exactly, so every resample's refit stays at the fit
    and the bootstrap's interval is a point; the delta method too calls such fits precise.
    Repeating a configuration (seeds) does not count."""
    x, y = _simulated_table(9)
    x = {k: np.concatenate([v, v[:3]]) for k, v in x.items()}
    y = np.concatenate([y, y[:3] * 1.001])
    fit_ = laws.fit("chinchilla", x, y)
    targets = [Target(kind="loss", budget=1e22)]
    assert target_widths(fit_, x, y, targets) == {"loss@C=1e+22": float("inf")}
    x10, y10 = _simulated_table(10)
    assert np.isfinite(target_widths(laws.fit("chinchilla", x10, y10), x10, y10, targets)["loss@C=1e+22"])


def test_check_stop_needs_every_target_within_the_tolerance() -> None:
    _, _, sel = _selector_on_the_true_law(tolerance=0.1)
    for widths in (None, {}, {"loss@C=1e+22": 0.05, "N_opt@C=1e+22": 0.2}, {"loss@C=1e+22": float("inf")}):
        sel.check_stop(widths)
        assert sel.stopped is None
    sel.check_stop({"loss@C=1e+22": 0.05, "N_opt@C=1e+22": 0.09})
    assert sel.stopped == "target intervals within +-0.1 (loss@C=1e+22: 0.05, N_opt@C=1e+22: 0.09)"
    assert sel.propose(3) == []


def test_the_tolerance_stop_ends_the_selection_once_the_bootstrap_interval_is_narrow() -> None:
    """An active study with a loss target and a 5 % tolerance stops well before its budget (the
    whole grid), and its final prediction is within the tolerance of the truth."""
    study = _study("active", budget_fraction=1.0, tolerance=0.05, refit_every=5,
                   target={"points": [{"N": 1e10, "D": 2e11}], "quantities": []})
    outcome = run_study(study, tracker=MemoryTracker(), executor=InlineExecutor(),
                        optuna_storage=optuna.storages.InMemoryStorage(), background_refit=False)
    assert outcome.stopped is not None and outcome.stopped.startswith("target intervals within +-0.05 (loss@N=1e+10,D=2e+11: ")
    assert float(outcome.stopped.rsplit(": ", 1)[1].rstrip(")")) <= 0.05
    assert outcome.stats.finished >= 10, "no interval before two configurations per parameter"
    assert outcome.stats.flops_done < 0.5 * sum(trained_flops(r) for r in expand(study))
    truth = laws.get_law("chinchilla").predict(REPLICATION_CHINCHILLA, N=1e10, D=2e11)
    assert abs(float(outcome.laws[0].fit.predict(N=1e10, D=2e11) / truth) - 1) <= 0.05


def test_proposals_wait_for_the_stopping_rule_to_answer_for_the_runs_finished_before() -> None:
    """With a tolerance, after proposing, the next proposal waits until a fit of the runs that
    had finished then is out with its stopping widths (their answer may end the selection): a
    sparsity study's first interval was within the tolerance at 7 % of the budget, and runs
    proposed meanwhile took the stop to 96 %. The wait is for a fixed number of runs, so runs
    that keep finishing cannot hold proposals off."""
    answered_for, finished = [3], [5]
    study = _study("active", initial_runs=1, tolerance=0.1)
    fit_ = replace(_true_fit(), report=replace(_true_fit().report, n_points=20))  # past the space-filling start
    sel = Selector(study, expand(study), fit_provider=lambda name: fit_, storage=optuna.storages.InMemoryStorage(),
                   answered=lambda law, n: law == "chinchilla" and answered_for[0] >= n, submitted=lambda: finished[0])
    assert len(sel.propose(2)) == 2  # proposed with 5 runs finished: too few for an interval, no wait
    assert not sel.waiting() and len(sel.propose(1)) == 1
    finished[0] = 12
    assert len(sel.propose(2)) == 2  # with 12 finished (two per parameter of the law's 5)
    finished[0] = 14
    assert sel.waiting() and sel.propose(3) == [], "no answer yet for the 12 runs"
    answered_for[0] = 12  # the fit of those 12 and its widths are in; 2 more finished meanwhile
    assert not sel.waiting() and len(sel.propose(3)) == 3
    assert sel.waiting(), "now it waits for an answer on the 14"
    # without a tolerance there is nothing to wait for
    plain = _study("cheapest")
    other = Selector(plain, expand(plain), fit_provider=lambda name: None, storage=optuna.storages.InMemoryStorage(),
                     answered=lambda law, n: False, submitted=lambda: 9)
    assert len(other.propose(2)) == 2 and not other.waiting() and len(other.propose(2)) == 2


def test_a_background_tolerance_stop_spends_nothing_after_its_interval(monkeypatch) -> None:
    """End to end with the refits in their thread and runs that finish at once: once a fit's
    interval is within the tolerance, few runs finish after it."""
    from orchestrator.selection import selector as module

    first_within: list[int] = []
    real = module.Selector.stop_widths

    def recorded(self, law_name, fit_, inputs, loss, groups=None):  # noqa: ANN001, ANN202 - Selector.stop_widths
        widths = real(self, law_name, fit_, inputs, loss, groups)
        if widths and max(widths.values()) <= 0.05 and not first_within:
            first_within.append(len(loss))
        return widths

    monkeypatch.setattr(module.Selector, "stop_widths", recorded)
    study = _study("active", budget_fraction=1.0, tolerance=0.05, refit_every=5,
                   target={"points": [{"N": 1e10, "D": 2e11}], "quantities": []})
    study = replace(study, resources=replace(study.resources, max_concurrent=2))
    outcome = run_study(study, tracker=MemoryTracker(), executor=InlineExecutor(),
                        optuna_storage=optuna.storages.InMemoryStorage(), background_refit=True)
    assert outcome.stopped is not None and first_within
    # each proposal waits for the answer on the runs finished at the one before: after the fit
    # whose interval was narrow enough, at most the runs in flight then and one batch proposed
    # before its answer came finish (without the wait: 19 runs for an interval on 11)
    assert outcome.stats.finished <= first_within[0] + 2 * 2, (outcome.stats.finished, first_within)


def test_a_study_stopped_on_its_interval_trains_nothing_when_resumed() -> None:
    """Resumed, a study that had stopped on its tolerance went on proposing (2 more runs at
    each resume) before its stopping rule answered again; and a resume logged no stop reason,
    so status lost it."""
    from orchestrator.tracking import STOPPED_TAG

    study = _study("active", budget_fraction=1.0, tolerance=0.05, refit_every=5,
                   target={"points": [{"N": 1e10, "D": 2e11}], "quantities": []})
    study = replace(study, resources=replace(study.resources, max_concurrent=2))
    tracker, storage = MemoryTracker(), optuna.storages.InMemoryStorage()
    first = run_study(study, tracker=tracker, executor=InlineExecutor(), optuna_storage=storage, background_refit=True)
    assert first.stopped is not None and first.stopped.startswith("target intervals within +-0.05")
    for _ in range(2):
        tracker.study_tags[STOPPED_TAG] = ""
        again = run_study(study, tracker=tracker, executor=InlineExecutor(), optuna_storage=storage, background_refit=True)
        assert again.stats.finished == 0 and again.stats.skipped == first.stats.finished
        assert again.stopped is not None and again.stopped.startswith("target intervals within +-0.05")
        assert tracker.study_tags[STOPPED_TAG] == again.stopped
    # with a tighter tolerance than the interval it stopped on, it goes on
    tighter = replace(study, selection=replace(study.selection, tolerance=0.01))
    more = run_study(tighter, tracker=tracker, executor=InlineExecutor(), optuna_storage=storage, background_refit=True)
    assert more.stats.finished > 0


def test_an_interrupted_selection_logs_what_it_has_committed_and_ends_killed() -> None:
    """Ctrl-C: the parent run is KILLED, not FAILED (nothing failed), and the selection's
    committed FLOPs are logged as they are at the interruption (logged only with fits, status
    showed 13 % committed against 88 % done)."""

    class Interrupted(InlineExecutor):
        def __init__(self, after: int) -> None:
            super().__init__()
            self.left = after

        def wait(self, timeout: float):  # noqa: ANN202 - list[Completion]
            self.left -= 1
            if self.left < 0:
                raise KeyboardInterrupt
            return super().wait(timeout)

    study = _study("random", budget_fraction=0.5, refit_every=1000)
    study = replace(study, resources=replace(study.resources, max_concurrent=2))
    tracker = MemoryTracker()
    with pytest.raises(KeyboardInterrupt):
        run_study(study, tracker=tracker, executor=Interrupted(after=6), optuna_storage=optuna.storages.InMemoryStorage(),
                  background_refit=False)
    assert tracker.closed is True and tracker.interrupted
    done = sum(r["finished"].metrics["flops"] for r in tracker.runs.values() if r["status"] == "FINISHED")
    step, metrics = tracker.study_metrics[-1]
    assert metrics["selection.spent_flops"] >= done > 0 and step >= 6


def test_a_budget_lowered_before_a_resume_gives_up_the_interrupted_runs_over_it() -> None:
    """Runs an interrupted selection had in flight were trained again on resume even when the
    budget had been lowered below what they commit (247 % of it spent): the latest proposed are
    given up until the committed FLOPs fit the new budget."""
    from orchestrator.selection.samplers import DROPPED

    study = _study("random", budget_fraction=0.5)
    storage = optuna.storages.InMemoryStorage()
    sel = Selector(study, expand(study), fit_provider=lambda name: None, storage=storage)
    taken = sel.propose(6)  # then the driver is interrupted: all six in flight
    costs = [r.plan.flops for r in taken]
    lowered = replace(study, selection=replace(study.selection, budget_fraction=None,
                                               budget_flops=sum(costs[:2]) + 0.5 * costs[2]))
    again = Selector(lowered, expand(lowered), fit_provider=lambda name: None, storage=storage)
    again.start({})
    assert again.spent() == pytest.approx(sum(costs[:2])) and len(again.study.user_attrs[DROPPED]) == 4
    redo = again.propose(30)
    # the two kept are trained again first; the four given up are never proposed again, and
    # what is left of the budget buys only runs that fit in it
    assert [r.spec.run_key for r in redo[:2]] == [r.spec.run_key for r in taken[:2]]
    assert not {r.spec.run_key for r in redo} & {r.spec.run_key for r in taken[2:]}
    assert again.stopped is not None and again.spent() <= again.pool.budget


def test_a_slow_stopping_bootstrap_waits_for_a_quarter_more_runs(monkeypatch) -> None:
    """A mixture law's bootstrap takes half a minute: redone at every fit it would hold the refit
    thread for good. After one that took a second or more, the next waits until the runs have
    grown by STOP_GROWTH; a fast one is redone at every fit."""
    from orchestrator.selection import selector as module

    _, _, sel = _selector_on_the_true_law(tolerance=0.1)
    fit_ = sel._fit()
    calls, clock = [], [0.0]

    def widths(fit_, inputs, loss, targets, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(len(loss))
        clock[0] += duration
        return {"loss@C=1e+22": 0.5}

    monkeypatch.setattr(module, "target_widths", widths)
    monkeypatch.setattr(module.time, "perf_counter", lambda: clock[0])

    def table(n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return {"N": np.ones(n), "D": np.ones(n)}, np.ones(n)

    duration = 0.2
    for n in (20, 21, 22):
        assert sel.stop_widths(sel.law_name, fit_, *table(n)) == {"loss@C=1e+22": 0.5}
    duration = 30.0
    results = [sel.stop_widths(sel.law_name, fit_, *table(n)) for n in (23, 24, 28, 29, 36, 37)]
    assert calls == [20, 21, 22, 23, 29, 37]
    assert [r is None for r in results] == [False, True, True, False, True, False]
    assert sel.stop_widths("another law", fit_, *table(50)) is None and calls[-1] == 37


def _sparse_study(target: dict) -> object:
    return study_from_dict({
        "name": "sparse-target", "trainer": {"kind": "simulated"}, "laws": ["sparsity"],
        "grid": {"N": [1e7, 1e8], "D": [1e9, 1e10], "sparsity": [0.0, 0.5]},
        "selection": {"mode": "active", "budget_fraction": 0.5, "target": target},
    })


def test_a_budget_target_needs_a_law_of_n_and_d_alone() -> None:
    """A budget's compute optimum is over N and D: the sparsity law's S (or distillation's L_T)
    has no value there. validate accepted it and the run crashed in the criterion."""
    with pytest.raises(StudyError) as err:
        _sparse_study({"budget": 1e20, "quantities": ["loss"]})
    assert err.value.key == "selection.target.budget" and "['N', 'D', 'S']" in str(err.value)
    # target points with every input are the way; the quantities (loss, N_opt by default) are at a budget only
    study = _sparse_study({"points": [{"N": 1e9, "D": 2e10, "S": 0.5}]})
    assert study.selection.target.quantities == ["loss", "N_opt"]


def test_no_stopping_bootstrap_once_the_selection_has_stopped(monkeypatch) -> None:
    """A stopped selection (budget spent) needs no more widths: a mixture law's bootstraps ran on
    after the budget was spent, 30 s each, before the study could end."""
    from orchestrator.selection import selector as module

    _, _, sel = _selector_on_the_true_law(tolerance=0.1)
    calls = []
    monkeypatch.setattr(module, "target_widths", lambda *a, **k: calls.append(1) or {"loss@C=1e+22": 0.5})
    x, y = {"N": np.ones(30), "D": np.ones(30)}, np.ones(30)
    sel.check_stop(sel.stop_widths(sel.law_name, sel._fit(), x, y), 30)
    assert calls == [1] and sel.widest == 0.5 and sel.diagnostics()["selection.widest_interval"] == 0.5
    assert sel.diagnostics()["selection.widest_interval_runs"] == 30
    sel.stopped = "budget spent (1e+20 of 1e+20 FLOPs)"
    assert sel.stop_widths(sel.law_name, sel._fit(), x, y) is None and calls == [1]


def test_closing_the_selection_cancels_the_stopping_bootstrap_in_flight(monkeypatch) -> None:
    """At the end of a study (or on Ctrl-C) the refitter waits for its widths thread: a mixture
    law's bootstrap in flight held the study's end for 15 s and more, for an answer nothing
    needed. Closing the selector stops the refits between Newton iterations."""
    from orchestrator.selection import selector as module

    _, _, sel = _selector_on_the_true_law(tolerance=0.1)
    rng = np.random.default_rng(0)
    x = {"N": 10 ** rng.uniform(7, 9, 30), "D": 10 ** rng.uniform(9, 11, 30)}
    y = laws.get_law("chinchilla").predict(REPLICATION_CHINCHILLA, **x) * np.exp(0.01 * rng.normal(size=30))
    fit_ = laws.fit("chinchilla", x, y)
    assert np.isfinite(sel.stop_widths(sel.law_name, fit_, x, y)["loss@C=1e+22"])
    iterations = []
    real = module.bootstrap_fit

    def closed_midway(*args, cancel, **kwargs):  # noqa: ANN002, ANN003, ANN202
        def asked() -> bool:
            iterations.append(1)
            if len(iterations) == 3:
                sel.close()  # the study ends while the refits run
            return cancel()

        return real(*args, cancel=asked, **kwargs)

    monkeypatch.setattr(module, "bootstrap_fit", closed_midway)
    assert sel.stop_widths(sel.law_name, fit_, x, y) is None
    assert len(iterations) == 3, "the refits stopped at the first iteration after the close"
    assert sel.stop_widths(sel.law_name, fit_, x, y) is None and len(iterations) == 3, "none starts once closed"


def test_late_widths_are_logged_at_the_latest_step_with_the_fit_they_are_of() -> None:
    """The widths of a fit arrive after newer fits have logged the interval they knew at higher
    steps; logged at their own fit's step they were not the metric's latest value, and status
    showed an older interval than the one the selection stopped on."""
    from orchestrator.refit import RefitState
    from orchestrator.study import _selection_hooks

    _, _, sel = _selector_on_the_true_law(tolerance=0.1)
    tracker = MemoryTracker()
    on_fit, on_widths, _ = _selection_hooks(sel, tracker, lambda state: None, None)
    fit_ = sel._fit()
    on_fit(RefitState(law="chinchilla", fit=fit_, n_runs=20))
    on_widths(RefitState(law="chinchilla", fit=fit_, n_runs=20, widths={"loss@C=1e+22": 0.3, "N_opt@C=1e+22": 0.2}))
    on_fit(RefitState(law="chinchilla", fit=fit_, n_runs=24))  # knows the interval of the fit on 20
    on_widths(RefitState(law="chinchilla", fit=fit_, n_runs=22, widths={"loss@C=1e+22": 0.05, "N_opt@C=1e+22": 0.08}))
    assert sel.stopped is not None and sel.stopped.startswith("target intervals within +-0.1")
    logged = [(step, m) for step, m in tracker.study_metrics if "selection.widest_interval" in m]
    step, latest = max(enumerate(logged), key=lambda e: (e[1][0], e[0]))[1]
    assert step == 24 and latest["selection.widest_interval"] == 0.08 and latest["selection.widest_interval_runs"] == 22
