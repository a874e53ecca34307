"""The tolerance stop of active selection: does it stop only when the target is as accurate as it claims?

``selection.tolerance`` stops proposing runs once every target's 95 % interval is within
+-tolerance (relative). A rule that stops at the first fit whose interval *looks* narrow enough
is only as good as that interval: with few runs a noisy, too-small interval ends the study
early with a target far off. This benchmark measures, for each rule, how often a stop at
tolerance t leaves the target's error above t, and what the stop cost.

World: the simulated Chinchilla world of ``benchmarks/selection.py`` (the law refitted to the
Epoch replication, 1 % noise, isoFLOP pool from 1e17 to 1e20 FLOPs, target at 1e22 FLOPs).
Each seed runs one active study through the real ``run_study`` with at most ``--fraction`` of the
grid's compute. The study's own refitter computes the stopping rule's widths on every fit;
this script also records, for the same fit, the widths of the rule it replaced and the fit's
true errors. The selection does not depend on the tolerance (it only ends it), so the first fit
at which a rule's widths fall within each tolerance is where that rule would have stopped.

Rules: ``bootstrap`` (the rule ``isoflop`` uses: percentile intervals over 200 refits on
configurations reweighted by the Bayesian bootstrap,
:func:`orchestrator.selection.selector.target_widths`, once there are two configurations per
law parameter), ``multinomial`` (the same with the multinomial resampling of ``isoflop export
--bootstrap``, the rule until 2026-12-07), ``delta`` (the rule before both: the delta method on
the fit's sandwich covariance, from the first fit) and ``delta_guarded`` (the delta method with
the bootstrap rules' minimum of configurations).

    python benchmarks/stopping.py [--seeds 6] [--first-seed 0] [--fraction 0.5] [--out PATH]
    python benchmarks/stopping.py --cost
    python benchmarks/stopping.py --latency [--seeds 3]

``--cost`` times the rule's bootstrap alone (:func:`target_widths`, 200 resamples) on simulated
runs (1 % noise, random N and D): the Chinchilla law on 30, 100 and 300 runs, and the 3-domain
additive mixture law of the selection benchmark's mixture world on 40 and 140 runs.

``--latency``: does the bootstrap hold up the selection? One active study of the mixture world
(5 % of the grid's compute, runs that finish at once, the refitter in its background thread as
in ``isoflop run``) with a tolerance no fit reaches (so a bootstrap follows every fit), against
the same study without a tolerance (no bootstrap), same seed: the seconds until the fit the
criterion waits for (the first on the space-filling start's runs) comes out, and the study's
wall time.

Prints, per target and tolerance, for each rule: how many of the seeds stopped, how many stops
left the error above the tolerance (and the largest such error), and the mean runs and share of
the grid's compute at the stop.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
from scipy import stats
from selection import study, target_budget, truth  # this folder's selection benchmark: its world

import laws
from orchestrator.executors import InlineExecutor
from orchestrator.grid import expand, trained_flops
from orchestrator.selection.criteria import Target, target_gradients
from orchestrator.selection.selector import (
    MIN_CONFIGURATIONS_PER_PARAM,
    Selector,
    selection_law,
    target_widths,
)
from orchestrator.study import run_study
from orchestrator.tracking import MemoryTracker

RULES = ("bootstrap", "multinomial", "delta", "delta_guarded")
TOLERANCES = {"loss": [0.01, 0.02, 0.03, 0.05], "N_opt": [0.1, 0.2, 0.3, 0.5]}


def delta_widths(fit_: laws.LawFit, targets: list[Target], level: float = 0.95) -> dict[str, float]:
    """The rule before: relative half-widths from the delta method on the sandwich covariance."""
    cov = fit_.covariance_matrix
    if cov is None:
        return {t.label: float("inf") for t in targets}
    g = target_gradients(fit_.get_law(), fit_, targets)
    sd = np.sqrt(np.clip(np.einsum("tp,pq,tq->t", g, cov, g), 0, None))
    z = float(stats.norm.ppf(0.5 + level / 2))
    return {t.label: float(np.expm1(z * s)) for t, s in zip(targets, sd, strict=True)}


def trajectory(seed: int, fraction: float, reference: tuple[float, float]) -> list[dict]:
    """One active study of ``seed``; per fit of its law: runs, FLOPs, each rule's widths and
    the true errors (relative, of the loss and of N_opt at the target budget)."""
    config = study("simulated", "active", fraction, seed)
    # never reached: the study computes its widths on every fit
    config = replace(config, selection=replace(config.selection, tolerance=1e-12))
    grid_cost = sum(trained_flops(r) for r in expand(config))
    budget = target_budget("simulated")
    rows: list[dict] = []
    original = Selector.stop_widths

    def recorded(self, law_name, fit_, inputs, loss):  # noqa: ANN001, ANN202 - Selector.stop_widths
        t0 = time.perf_counter()
        widths = original(self, law_name, fit_, inputs, loss)
        seconds = time.perf_counter() - t0
        a = laws.compute_optimal(fit_, [budget])[0]
        delta = delta_widths(fit_, self.targets)
        unknown = dict.fromkeys(delta, float("inf"))
        rows.append({
            "seed": seed, "runs": int(len(loss)), "compute": self.spent() / grid_cost,
            "bootstrap": dict(widths or {}), "delta": delta, "seconds": seconds,
            "multinomial": target_widths(fit_, inputs, loss, self.targets, seed=self._seed, scheme="multinomial"),
            "delta_guarded": delta if len(loss) >= MIN_CONFIGURATIONS_PER_PARAM * fit_.get_law().n_params else unknown,
            "error": {"loss": abs(a.loss / reference[0] - 1.0), "N_opt": float(np.expm1(abs(np.log(a.N_opt / reference[1]))))},
        })
        return widths

    Selector.stop_widths = recorded
    try:
        run_study(config, tracker=MemoryTracker(), executor=InlineExecutor(),
                  optuna_storage=optuna.storages.InMemoryStorage(), background_refit=False)
    finally:
        Selector.stop_widths = original
    return rows


def first_stops(rows: list[dict], rule: str, quantity: str, tol: float) -> list[dict]:
    """Per seed, the first fit at which ``rule`` puts the ``quantity`` target within ``tol``."""
    out = []
    for seed in sorted({r["seed"] for r in rows}):
        hit = next((r for r in rows if r["seed"] == seed and _width(r[rule], quantity) <= tol), None)
        if hit is not None:
            out.append(hit)
    return out


def _width(widths: dict[str, float], quantity: str) -> float:
    return next((v for k, v in widths.items() if k.startswith(quantity + "@")), float("inf"))


def cost() -> None:
    """Seconds of one stopping bootstrap per law and number of runs."""
    from selection import POINT_WORLDS

    from trainers.config import REPLICATION_CHINCHILLA

    rng = np.random.default_rng(0)
    chinchilla = laws.get_law("chinchilla")
    for n in (30, 100, 300):
        x = {"N": 10 ** rng.uniform(7, 9, n), "D": 10 ** rng.uniform(9, 11, n)}
        y = chinchilla.predict(REPLICATION_CHINCHILLA, **x) * np.exp(0.01 * rng.normal(size=n))
        fit_ = laws.fit(chinchilla, x, y)
        t0 = time.perf_counter()
        target_widths(fit_, x, y, [Target(kind="loss", budget=1e22), Target(kind="N_opt", budget=1e22)])
        print(f"chinchilla, {n:3d} runs: {time.perf_counter() - t0:6.2f} s")
    world = POINT_WORLDS["mixture"]
    mixture = laws.get_law(world["law"], k=3)
    for n in (40, 140):
        h = 0.1 + 0.7 * rng.dirichlet(np.ones(3), n)
        h = h / h.sum(1, keepdims=True)
        x = {"N": 10 ** rng.uniform(7, 9, n), "D": 10 ** rng.uniform(9, 11, n), "h1": h[:, 0], "h2": h[:, 1], "h3": h[:, 2]}
        x = {k: x[k] for k in mixture.inputs}
        y = mixture.predict(world["params"], **x) * np.exp(0.01 * rng.normal(size=n))
        fit_ = laws.fit(mixture, x, y)
        t0 = time.perf_counter()
        target_widths(fit_, x, y, [Target(kind="loss", inputs=world["target"])])
        print(f"mixture,    {n:3d} runs: {time.perf_counter() - t0:6.2f} s")


def latency(seeds: int) -> None:
    """Seconds to the criterion's first fit, with and without the stopping bootstrap."""
    for seed in range(seeds):
        cells = []
        for tolerance in (0.0, 1e-3):
            base = study("mixture", "active", 0.05, seed)
            config = replace(base, selection=replace(base.selection, tolerance=tolerance))
            fits: list[tuple[float, int]] = []
            t0 = time.perf_counter()
            run_study(config, tracker=MemoryTracker(), executor=InlineExecutor(),
                      optuna_storage=optuna.storages.InMemoryStorage(), background_refit=True,
                      on_fit=lambda state, t0=t0, fits=fits: fits.append((time.perf_counter() - t0, state.n_runs)))
            wall = time.perf_counter() - t0
            start = config.selection.initial_runs or 2 * selection_law(config).law.n_params
            first = next((t for t, n in fits if n >= start), float("nan"))
            cells.append(f"tolerance {tolerance:g}: criterion's first fit at {first:5.1f} s, study {wall:5.1f} s")
        print(f"seed {seed}: " + " | ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--fraction", type=float, default=0.5, help="the selection's budget, a share of the grid's compute")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--cost", action="store_true", help="time the rule's bootstrap per law and number of runs instead")
    ap.add_argument("--latency", action="store_true", help="time the selection's fits with and without the bootstrap instead")
    args = ap.parse_args()
    if args.cost:
        cost()
        return
    if args.latency:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        latency(args.seeds)
        return
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    reference = truth("simulated")
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}")
    rows = []
    t0 = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        rows += trajectory(seed, args.fraction, reference)
    seconds = [r["seconds"] for r in rows]
    print(f"{args.seeds} studies, {len(rows)} fits in {time.perf_counter() - t0:.0f} s; "
          f"bootstrap widths {np.median(seconds):.2f} s median, {max(seconds):.2f} s max per fit")
    print(f"{'target':6s} {'tol':>5s} | " + " | ".join(f"{rule:>13s}: stops err>tol (max) runs compute" for rule in RULES))
    summary = []
    for quantity, tolerances in TOLERANCES.items():
        for tol in tolerances:
            line = f"{quantity:6s} {tol:5.2f} | "
            cells = []
            for rule in RULES:
                stops = first_stops(rows, rule, quantity, tol)
                errors = [s["error"][quantity] for s in stops]
                over = [e for e in errors if e > tol]
                runs = np.mean([s["runs"] for s in stops]) if stops else float("nan")
                compute = np.mean([s["compute"] for s in stops]) if stops else float("nan")
                worst = f"({max(over):.2f})" if over else ""
                cells.append(f"{'':13s}  {len(stops)}/{args.seeds} {len(over):3d} {worst:7s} {runs:5.1f} {100 * compute:5.1f}%")
                summary.append({"target": quantity, "tolerance": tol, "rule": rule, "stops": len(stops),
                                "over": len(over), "worst": max(over, default=0.0), "runs": runs, "compute": compute})
            print(line + " | ".join(cells))
    for rule in RULES:
        for quantity in TOLERANCES:
            pairs = [(_width(r[rule], quantity), r["error"][quantity]) for r in rows]
            cover = np.mean([e <= w for w, e in pairs])
            print(f"{rule:13s} {quantity:6s}: the error within the claimed half-width on {100 * cover:.0f} % of all {len(pairs)} fits")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
