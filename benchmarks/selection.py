"""Active run selection vs the full grid, random and cheapest-first, at equal compute.

``--truth simulated`` (default). Ground truth: the simulated trainer's world (the Chinchilla law refitted to the Epoch replication,
1 % log-normal noise per run). The candidate pool is an isoFLOP grid from 1e17 to 1e20 FLOPs; the
target is the loss and N_opt at the compute optimum of a 1e22-FLOP run (100x the largest run).
Every strategy runs through the real ``run_study`` (scheduler, online refits, Optuna ask/tell),
with Ray and MLflow swapped for the inline executor and an in-memory tracker; the reported law is
the study's final full multi-start fit.

``--truth replay``: the 240 runs of the Chinchilla replication (``tests/data``) replayed from
their table; the reference is the law fitted to the whole table (the real truth is unknown), the
target the loss and N_opt at 5.76e23 FLOPs.

``--truth holdout``: the same replayed table with a real truth. The pool is the runs of at most
1e20 FLOPs (136 runs); the target region is the 23 held-out runs of at least 1e21 FLOPs (10x
beyond the largest candidate, up to 1.3e22), and the error is the mean relative error of the
predicted loss against their measured losses. Here the full grid's fit has a real error (the
law's misfit when extrapolating), so "no worse than the full grid" is a question about real
runs, not about a reference the grid defines. No N_opt here.

``--truth sparsity``: a mixture-of-experts world, the sparsity law L(N, D, S) of Abnar et al.
2025 with plausible coefficients (the paper publishes none; those of the law's recovery tests),
1 % noise; pool an isoFLOP grid of 4 budgets from 1e17 to 1e20 FLOPs x 6 total sizes x
sparsities 0, 1/2, 3/4, 7/8 (C = 6 N (1 - S) D); target the loss of a model of N = 1e10 total
parameters at S = 3/4 on D = 2e11 tokens (3e21 FLOPs, 30x the largest candidate). No N_opt here.

``--truth mixture``: data mixtures over 3 domains, the additive mixture law of Shukor et al. 2025
with plausible coefficients (none published), 1 % noise; pool an isoFLOP grid of 4 budgets from
1e17 to 1e20 FLOPs x 5 sizes x 7 mixtures (the simplex's corners, edge midpoints and centre, every
weight >= 0.1); target the loss of N = 1e10 on D = 2e11 tokens at h = (0.5, 0.3, 0.2), a mixture
no candidate has.

``--truth distillation``: students distilled from teachers (Busbridge et al. 2025). Teachers are
simulated supervised runs of their Eq. 1 law with the published Table 6 coefficients, students
follow the distillation law with Table 6's coefficients at their own teacher's (noisy) final
loss L_T, 1 % noise on both. Pool: students N_S in {5e7, 2e8, 8e8} x D_S = {5, 20, 80} N_S, each
distilled from each of 8 teachers, N_T in {1e8, 4e8, 1.6e9, 3.2e9} x D_T = {10, 40} N_T (below
and above the students, so the capacity gap shows): 72 candidate students; a teacher is trained
(and paid for, once) when the first student that needs it is chosen. The law is the distillation
law on the published supervised law (its Ls~, and its prediction of an untrained teacher's L_T).
Target: a 1e10-parameter student on 2e11 tokens distilled from a teacher of L_T = 1.8265 (the
supervised loss of 3e10 parameters on 6e11 tokens), 3e21 FLOPs of student training: 10x the
largest student candidate and beyond the strongest teacher. The budget fractions are of the full
grid's FLOPs, every teacher counted once. The certified floor takes the teachers as free (a
looser, still valid bound: any design pays at least its students).

Strategies: ``active`` (the default criterion: the targets' error against the full grid's fit,
with the law's misfit estimated from the residuals, the remaining budget planned), ``variance``
(target variance alone, as if the law were exact), either with ``@G`` (the cost exponent fixed at
G), ``random``, ``cheapest``; the full grid is always run.

Before the studies it prints the *attainable* floor at each budget fraction: for each target
alone, the certified lower bound of the convex relaxation of the budgeted design problem at the
reference law (:func:`orchestrator.selection.criteria.design_bound`), as a ratio to the full
grid's standard deviation. No subset of the pool does better than this under the linearised
model, whatever the strategy.

    python benchmarks/selection.py [--truth simulated|replay|holdout|sparsity|mixture|distillation] [--fractions 0.01 0.05 0.1 0.25]
                                   [--seeds 3] [--first-seed 0] [--strategies active random cheapest] [--no-grid]
                                   [--out PATH]

Prints one row per (strategy, fraction) with the mean (and standard error) over seeds of
|relative error| of the predicted target loss and of |log| error of N_opt, and writes the raw rows
as JSON when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna

import laws
from laws.chinchilla import BUSBRIDGE_SUPERVISED_PARAMS
from laws.distillation import BUSBRIDGE_DISTILLATION_PARAMS
from orchestrator.executors import InlineExecutor
from orchestrator.grid import expand, trained_flops
from orchestrator.loading import study_from_dict
from orchestrator.selection.criteria import design_bound, target_gradients, target_variances
from orchestrator.selection.selector import make_pool, targets_of
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


SPARSE_TRUTH = {"a": 400.0, "b": 410.0, "c": 0.1, "d": 50.0, "e": 1.7, "alpha": 0.34, "beta": 0.28,
                "gamma": 0.25, "lambda": -0.3, "delta": 0.5}
SPARSE_GRID = {
    "isoflop": {"budgets": [1e17, 1e18, 1e19, 1e20], "points_per_budget": 6, "span": 30},
    "sparsity": [0.0, 0.5, 0.75, 0.875],
}
SPARSE_TARGET = {"N": 1e10, "D": 2e11, "S": 0.75}

# Data mixtures over 3 domains: the additive mixture law of Shukor et al. 2025 with plausible
# coefficients (none were published): Chinchilla's size and data terms, and a mixture term that
# rewards domain 1 most and saturates at different rates per domain.
MIX_TRUTH = {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28,
             "C1": 2.0, "C2": 1.2, "C3": 0.8, "gamma1": 0.5, "gamma2": 0.3, "gamma3": 0.8}
MIX_DOMAINS = {"code": {"source": "stdlib"}, "prose": {"source": "pydoc"}, "docs": {"source": "mlflow_docs"}}
MIX_GRID = {
    "isoflop": {"budgets": [1e17, 1e18, 1e19, 1e20], "points_per_budget": 5, "span": 30},
    # the corners, edge midpoints and centre of the simplex, every weight at least 0.1
    "mixture": [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.45, 0.45, 0.1],
                [0.45, 0.1, 0.45], [0.1, 0.45, 0.45], [1 / 3, 1 / 3, 1 / 3]],
}
MIX_TARGET = {"N": 1e10, "D": 2e11, "h1": 0.5, "h2": 0.3, "h3": 0.2}

# Distillation (Busbridge et al. 2025, Table 6 coefficients for both laws): students x teachers
# below and above them; the target's teacher is the supervised loss of 3e10 parameters on 6e11
# tokens under their Eq. 1 law (L_T = 1.8265)
DISTILL_GRID = {
    "N": [5e7, 2e8, 8e8],
    "tokens_per_param": [5, 20, 80],
    "teachers": {"N": [1e8, 4e8, 1.6e9, 3.2e9], "tokens_per_param": [10, 40]},
}
DISTILL_TARGET = {"N": 1e10, "D": 2e11, "L_T": 1.8265}

#: worlds whose target is the loss at a point of the law's inputs (no N_opt): law, truth, grid,
#: target and the trainer's data domains (and a distillation truth's supervised law)
POINT_WORLDS = {
    "sparsity": {"law": "sparsity", "params": SPARSE_TRUTH, "grid": SPARSE_GRID, "target": SPARSE_TARGET},
    "mixture": {"law": "mixture_additive", "params": MIX_TRUTH, "grid": MIX_GRID, "target": MIX_TARGET,
                "domains": MIX_DOMAINS},
    "distillation": {"law": "distillation", "params": BUSBRIDGE_DISTILLATION_PARAMS, "grid": DISTILL_GRID,
                     "target": DISTILL_TARGET, "supervised": BUSBRIDGE_SUPERVISED_PARAMS},
}

REPLAY_TARGET = 5.76e23
REPLAY = {
    "kind": "replay",
    "replay": {
        "path": str(Path(__file__).resolve().parents[1] / "tests" / "data" / "epoch_chinchilla.csv"),
        "columns": {"N": "Model Size", "C": "Training FLOP", "loss": "loss"},
        "max_loss": 3.44,
    },
}


#: the held-out world: candidates up to HOLDOUT_POOL_MAX FLOPs, targets from HOLDOUT_TARGET_MIN on
HOLDOUT_POOL_MAX = 1e20
HOLDOUT_TARGET_MIN = 1e21


@functools.cache
def holdout_split() -> tuple[Path, list[dict[str, float]], np.ndarray]:
    """The replayed table split by compute: a CSV of the candidate runs (written to the scratch
    folder), the held-out target runs' inputs and their measured losses."""
    import pandas as pd

    table = pd.read_csv(REPLAY["replay"]["path"])
    table = table[table["loss"] <= REPLAY["replay"]["max_loss"]]
    flops = table["Training FLOP"].to_numpy()
    pool = table[flops <= HOLDOUT_POOL_MAX]
    held = table[flops >= HOLDOUT_TARGET_MIN]
    path = _scratch() / "holdout_pool.csv"
    pool.to_csv(path, index=False)
    n = held["Model Size"].to_numpy(dtype=np.float64)
    points = [{"N": float(ni), "D": float(ci / (6.0 * ni))} for ni, ci in zip(n, held["Training FLOP"], strict=True)]
    return path, points, held["loss"].to_numpy(dtype=np.float64)


def holdout_error(fit_: laws.LawFit) -> float:
    """Mean |relative error| of a fit's predicted loss on the held-out runs."""
    _, points, measured = holdout_split()
    pred = fit_.predict(N=np.array([p["N"] for p in points]), D=np.array([p["D"] for p in points]))
    return float(np.mean(np.abs(np.asarray(pred) / measured - 1.0)))


def holdout_r2(fit_: laws.LawFit) -> float:
    """R^2 of a fit's predicted loss on the held-out runs: 1 - SS_res / SS_tot of their measured
    losses (1 is a perfect prediction, 0 no better than their mean, negative worse)."""
    _, points, measured = holdout_split()
    pred = np.asarray(fit_.predict(N=np.array([p["N"] for p in points]), D=np.array([p["D"] for p in points])))
    return float(1.0 - np.sum((pred - measured) ** 2) / np.sum((measured - measured.mean()) ** 2))


def target_budget(kind: str) -> float:
    return REPLAY_TARGET if kind == "replay" else TARGET_BUDGET


def reference_fit(kind: str) -> laws.LawFit:
    """The reference law: the simulated world's, or the law fitted to the whole replayed table."""
    if kind in ("replay", "holdout"):
        fit_ = _outcome(kind, "grid", 1.0, 0).laws[0].fit
        assert fit_ is not None
        return fit_
    report = laws.FitReport(n_points=0, n_starts=0, n_best=0, best_tol=0.0, grad_norm=0.0, converged=True)
    if kind in POINT_WORLDS:
        world = POINT_WORLDS[kind]
        spec = laws.get_law(world["law"], k=3).spec() if world["law"].startswith("mixture") else {"name": world["law"]}
        return laws.LawFit(law=world["law"], params=dict(world["params"]), objective=0.0, report=report, law_spec=spec)
    return laws.LawFit(law="chinchilla", params=dict(REPLICATION_CHINCHILLA), objective=0.0, report=report)


def predicted(kind: str, fit_: laws.LawFit) -> tuple[float, float]:
    """A fit's target loss and N_opt (NaN where the law has none)."""
    if kind == "holdout":
        return holdout_error(fit_), float("nan")
    if kind in POINT_WORLDS:
        x = {k: np.array([v]) for k, v in POINT_WORLDS[kind]["target"].items()}
        return float(fit_.predict(**x)[0]), float("nan")
    a = laws.compute_optimal(fit_, [target_budget(kind)])[0]
    return a.loss, a.N_opt


def truth(kind: str) -> tuple[float, float]:
    """Reference loss and N_opt at the target (the held-out world: its errors are measured
    against the held-out runs themselves, see :func:`holdout_error`)."""
    if kind == "holdout":
        return 0.0, float("nan")
    return predicted(kind, reference_fit(kind))


def attainable(kind: str, fractions: list[float]) -> dict[float, np.ndarray]:
    """Per budget fraction and target (loss, N_opt), the certified floor on the target's standard
    deviation over any design within that budget (the relaxed optimum for that target alone),
    divided by the full grid's; linearised at the reference law."""
    ref = reference_fit(kind)
    config = study(kind, "active", 1.0, 0)
    law = ref.get_law()
    runs = expand(config)
    main, upstream = [r for r in runs if r.stage == "main"], [r for r in runs if r.stage != "main"]
    pool = make_pool(main, law, config.selection, 0.0, upstream)
    jac = laws.prediction_jacobian(law, law.from_natural(ref.params), pool.inputs)
    g = target_gradients(law, ref, targets_of(config.selection))
    full = target_variances(jac, g, sigma2=1.0, prior_precision=1e-8)
    out = {}
    for fraction in fractions:
        # a fraction of the full grid's FLOPs, every teacher once; the bound charges students only
        budget = fraction * sum(trained_flops(r) for r in runs)
        lower = [design_bound(jac, pool.cost, g[t : t + 1], sigma2=1.0, budget=budget).lower for t in range(len(g))]
        out[fraction] = np.sqrt(np.array(lower) / full)
    return out


def study(kind: str, strategy: str, fraction: float, seed: int):  # noqa: ANN201 - StudyConfig
    selection: dict = {"mode": "grid", "refit_every": 1000}
    if strategy != "grid":
        mode, _, exponent = strategy.partition("@")
        selection = {
            "mode": "active" if mode == "variance" else mode,
            "budget_fraction": fraction,
            "target": (
                {"points": [POINT_WORLDS[kind]["target"]], "quantities": []}
                if kind in POINT_WORLDS
                else {"points": holdout_split()[1], "quantities": []}
                if kind == "holdout"
                else {"budget": target_budget(kind)}
            ),
            "refit_every": 5,
            "cost_exponent": float(exponent) if exponent else None,
            "discrepancy": mode != "variance",
        }
    raw: dict = {
        "name": f"bench-{kind}-{strategy.replace('@', '-')}-{fraction}-{seed}",
        "seed": 1000 * seed,
        "laws": ["chinchilla"],
        "selection": selection,
    }
    if kind == "replay":
        raw["trainer"] = REPLAY
    elif kind == "holdout":
        raw["trainer"] = {"kind": "replay", "replay": {**REPLAY["replay"], "path": str(holdout_split()[0])}}
    elif kind in POINT_WORLDS:
        raw["trainer"] = world_trainer(kind)
        raw["grid"] = POINT_WORLDS[kind]["grid"]
        raw["laws"] = [POINT_WORLDS[kind]["law"]]
        if "teachers" in raw["grid"]:  # the simulated teachers' results, out of the working directory
            raw["resources"] = {"checkpoint_dir": str(_scratch() / raw["name"])}
    else:
        raw["trainer"] = {"kind": "simulated", "simulated": {"noise": 0.01}}
        raw["grid"] = GRID
    return study_from_dict(raw)


def world_trainer(kind: str) -> dict:
    """The simulated trainer of a point world: its law and truth, 1 % noise (its supervised law and
    data domains where it has them)."""
    world = POINT_WORLDS[kind]
    simulated = {"law": world["law"], "params": world["params"], "noise": 0.01}
    if "supervised" in world:
        simulated["supervised"] = world["supervised"]
    trainer: dict = {"kind": "simulated", "simulated": simulated}
    if "domains" in world:
        trainer["data"] = {"domains": world["domains"]}
    return trainer


@functools.cache
def _scratch() -> Path:
    """A folder for the runs' checkpoints, removed when the benchmark exits."""
    folder = Path(tempfile.mkdtemp(prefix="isoflop-bench-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _outcome(kind: str, strategy: str, fraction: float, seed: int):  # noqa: ANN202 - StudyOutcome
    return run_study(
        study(kind, strategy, fraction, seed),
        tracker=MemoryTracker(),
        executor=InlineExecutor(),
        optuna_storage=optuna.storages.InMemoryStorage(),
        background_refit=False,
    )


def run_one(kind: str, strategy: str, fraction: float, seed: int, reference: tuple[float, float]) -> dict:
    true_loss, true_n = reference
    t0 = time.perf_counter()
    outcome = _outcome(kind, strategy, fraction, seed)
    fit_ = outcome.laws[0].fit
    row = {
        "strategy": strategy,
        "fraction": fraction,
        "seed": seed,
        "runs": outcome.stats.finished,
        "seconds": time.perf_counter() - t0,
    }
    if fit_ is None:
        return {**row, "loss_error": float("nan"), "n_opt_error": float("nan"), "r2": float("nan")}
    loss, n_opt = predicted(kind, fit_)
    if kind == "holdout":
        return {**row, "loss_error": loss, "n_opt_error": float("nan"), "r2": holdout_r2(fit_)}
    return {**row, "loss_error": abs(loss / true_loss - 1.0), "n_opt_error": abs(np.log(n_opt / true_n))}


def _mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), 0.0
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.1, 0.25])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--strategies", nargs="+", default=["active", "random", "cheapest"])
    ap.add_argument("--truth", choices=["simulated", "replay", "holdout", *POINT_WORLDS], default="simulated")
    ap.add_argument("--no-grid", action="store_true", help="skip the full-grid studies (to rerun one strategy)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    reference = truth(args.truth)
    print("attainable (certified floor of any design), target sd / full grid's:")
    for fraction, ratio in attainable(args.truth, args.fractions).items():
        if args.truth == "holdout":  # one target per held-out run
            print(f"  {fraction:5.2f} of the grid's compute: loss x{ratio.min():.2f} to x{ratio.max():.2f} "
                  f"(median x{np.median(ratio):.2f}) over the {len(ratio)} held-out runs")
            continue
        n_opt = f", N_opt x{ratio[1]:.2f}" if len(ratio) > 1 else ""
        print(f"  {fraction:5.2f} of the grid's compute: loss x{ratio[0]:.2f}{n_opt}")
    jobs = [] if args.no_grid else [("grid", 1.0)]
    jobs += [(strategy, fraction) for fraction in args.fractions for strategy in args.strategies]
    rows = []
    for strategy, fraction in jobs:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            row = run_one(args.truth, strategy, fraction, seed, reference)
            print(json.dumps(row, default=float), flush=True)  # progress, and the raw rows
            rows.append(row)
    # the held-out world has no N_opt: its second column is the R^2 on the held-out runs
    second = "R^2 held out" if args.truth == "holdout" else "N_opt err (log)"
    print(f"{'strategy':12} {'fraction':>8} {'runs':>6} {'loss err':>18} {second:>18} {'s/study':>8}")
    keys = sorted({(r["fraction"], r["strategy"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for fraction, strategy in keys:
        sel = [r for r in rows if r["fraction"] == fraction and r["strategy"] == strategy]
        le = _mean_se([r["loss_error"] for r in sel])
        ne = _mean_se([r["r2" if args.truth == "holdout" else "n_opt_error"] for r in sel])
        print(
            f"{strategy:12} {fraction:8.2f} {np.mean([r['runs'] for r in sel]):6.1f} "
            f"{le[0]:9.3%} +- {le[1]:.3%} {ne[0]:9.4f} +- {ne[1]:.4f} {np.mean([r['seconds'] for r in sel]):8.1f}"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
