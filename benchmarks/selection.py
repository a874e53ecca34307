"""Active run selection vs the full grid, random and cheapest-first, at equal compute.

Ground truth: the simulated trainer's world (the Chinchilla law refitted to the Epoch replication,
1 % log-normal noise per run). The candidate pool is an isoFLOP grid from 1e17 to 1e20 FLOPs; the
target is the loss and N_opt at the compute optimum of a 1e22-FLOP run (100x the largest run).
Every strategy runs through the real ``run_study`` (scheduler, online refits, Optuna ask/tell),
with Ray and MLflow swapped for the inline executor and an in-memory tracker; the reported law is
the study's final full multi-start fit.

    python benchmarks/selection.py [--fractions 0.01 0.05 0.1 0.25] [--seeds 3] [--out PATH]

Prints one row per (strategy, fraction) with the mean over seeds of |relative error| of the
predicted target loss and of N_opt, and writes the raw rows as JSON when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import optuna

import laws
from orchestrator.executors import InlineExecutor
from orchestrator.loading import study_from_dict
from orchestrator.study import run_study
from orchestrator.tracking import MemoryTracker
from trainers.config import REPLICATION_CHINCHILLA

TARGET_BUDGET = 1e22
GRID = {
    "isoflop": {
        "budgets": [1e17, 3e17, 1e18, 3e18, 1e19, 3e19, 1e20],
        "points_per_budget": 12,
        "span": 30,
    }
}


def truth() -> tuple[float, float]:
    """True loss and N_opt at the target budget."""
    report = laws.FitReport(n_points=0, n_starts=0, n_best=0, best_tol=0.0, grad_norm=0.0, converged=True)
    fit_ = laws.LawFit(law="chinchilla", params=dict(REPLICATION_CHINCHILLA), objective=0.0, report=report)
    a = laws.compute_optimal(fit_, [TARGET_BUDGET])[0]
    return a.loss, a.N_opt


def study(strategy: str, fraction: float, seed: int):  # noqa: ANN201 - StudyConfig
    selection: dict = {"mode": "grid"}
    if strategy != "grid":
        selection = {
            "mode": strategy,
            "budget_fraction": fraction,
            "target": {"budget": TARGET_BUDGET},
            "refit_every": 5,
        }
    return study_from_dict(
        {
            "name": f"bench-{strategy}-{fraction}-{seed}",
            "seed": 1000 * seed,
            "trainer": {"kind": "simulated", "simulated": {"noise": 0.01}},
            "grid": GRID,
            "laws": ["chinchilla"],
            "selection": selection,
        }
    )


def run_one(strategy: str, fraction: float, seed: int) -> dict:
    true_loss, true_n = truth()
    t0 = time.perf_counter()
    outcome = run_study(
        study(strategy, fraction, seed),
        tracker=MemoryTracker(),
        executor=InlineExecutor(),
        optuna_storage=optuna.storages.InMemoryStorage(),
        background_refit=False,
    )
    fit_ = outcome.laws[0].fit
    row = {
        "strategy": strategy,
        "fraction": fraction,
        "seed": seed,
        "runs": outcome.stats.finished,
        "seconds": time.perf_counter() - t0,
    }
    if fit_ is None:
        return {**row, "loss_error": float("nan"), "n_opt_error": float("nan")}
    a = laws.compute_optimal(fit_, [TARGET_BUDGET])[0]
    return {
        **row,
        "loss_error": abs(a.loss / true_loss - 1.0),
        "n_opt_error": abs(np.log(a.N_opt / true_n)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.1, 0.25])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--strategies", nargs="+", default=["active", "random", "cheapest"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    rows = [run_one("grid", 1.0, s) for s in range(args.seeds)]
    for fraction in args.fractions:
        for strategy in args.strategies:
            rows += [run_one(strategy, fraction, s) for s in range(args.seeds)]
    print(f"{'strategy':10} {'fraction':>8} {'runs':>6} {'loss err':>10} {'N_opt err (log)':>16} {'s/study':>8}")
    keys = sorted({(r["fraction"], r["strategy"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for fraction, strategy in keys:
        sel = [r for r in rows if r["fraction"] == fraction and r["strategy"] == strategy]
        print(
            f"{strategy:10} {fraction:8.2f} {np.mean([r['runs'] for r in sel]):6.1f} "
            f"{np.nanmean([r['loss_error'] for r in sel]):10.4%} {np.nanmean([r['n_opt_error'] for r in sel]):16.4f} "
            f"{np.mean([r['seconds'] for r in sel]):8.1f}"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
