"""Online refit: seconds per update as a study of a few hundred runs finishes, one run at a time.

Each time runs finish, ``isoflop run`` refits every law of the study (``OnlineRefitter``): warm
started from the previous fit (and the latest full fit, plus jittered copies of both), with a
full multi-start refit from the law's whole initialisation grid every ``selection.refit_every``
updates (default 10). The requirement: a study of a few hundred runs refits in well under a
second per update, so that a refit never holds up the scheduler.

Worlds (the simulated worlds of ``benchmarks/selection.py``, 1 % noise, grids enlarged to about
300 runs):

* ``chinchilla``: the Chinchilla law refitted to the Epoch replication; isoFLOP grid of 10
  budgets from 1e17 to 1e20 FLOPs x 30 sizes (300 runs).
* ``sparsity``: the sparsity law of Abnar et al. 2025; 6 budgets x 12 sizes x S in {0, 1/2, 3/4,
  7/8} (288 runs).
* ``mixture``: the 3-domain additive mixture law of Shukor et al. 2025; 6 budgets x 7 sizes x 7
  mixtures (294 runs).
* ``distillation``: the distillation law of Busbridge et al. 2025 (Table 6) on its supervised law;
  students N in 6 sizes x 5 tokens-per-parameter x 10 teachers (300 students, 10 teachers); the
  law is fitted to the students, its supervised part the published one.

The runs are generated once by the simulated trainer, then fed to a fresh refitter in a shuffled
order (teachers first: a student waits for its teacher), as many at once as the law has
parameters times two, then one per update, the refitter inline (``background=False``) so that each
update is timed alone. Baseline, in the same process on the same tables: the law's cold fit
(``laws.fit`` from its whole initialisation grid, what every update would cost without warm
starts), timed at 100, 200 and all runs.

    python benchmarks/refit_speed.py [--worlds chinchilla sparsity mixture distillation] [--seed 0]
                                     [--out PATH]
    python benchmarks/refit_speed.py --polish 10 3 2 1 0 [--worlds mixture distillation]

Prints, per world, the warm updates' median, 95th percentile and maximum seconds over the last
100 updates, the full refits' mean, the cold fit's seconds, and the ratio cold / warm median.

``--polish R ...``: how many rounds of polish a warm refit needs (``laws.fit(polish=R)``; a
full fit's default is 10, the refitter's warm updates use ``WARM_POLISH``). One chain of warm
fits per R, 5 more runs per step, without the refitter's periodic full refits (so that drift
shows); every 50 runs, each chain's median seconds over its last 10 fits, and its objective and
target prediction against the cold fit on the same runs (the selection benchmark's target point).
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
import torch
from selection import (  # this folder's selection benchmark: its worlds
    GRID,
    POINT_WORLDS,
    _scratch,
    world_trainer,
)

import laws
from orchestrator.executors import InlineExecutor
from orchestrator.fitting import resolve, study_laws
from orchestrator.loading import study_from_dict
from orchestrator.refit import OnlineRefitter
from orchestrator.study import run_study
from orchestrator.tracking import FinishedRun, MemoryTracker

#: the worlds' grids, enlarged to about 300 runs
GRIDS = {
    "chinchilla": {"isoflop": {**GRID["isoflop"], "budgets": [float(c) for c in np.geomspace(1e17, 1e20, 10)], "points_per_budget": 30}},
    "sparsity": {**POINT_WORLDS["sparsity"]["grid"],
                 "isoflop": {"budgets": [float(c) for c in np.geomspace(1e17, 1e20, 6)], "points_per_budget": 12, "span": 30}},
    "mixture": {**POINT_WORLDS["mixture"]["grid"],
                "isoflop": {"budgets": [float(c) for c in np.geomspace(1e17, 1e20, 6)], "points_per_budget": 7, "span": 30}},
    "distillation": {"N": [5e7, 1e8, 2e8, 4e8, 8e8, 1.6e9], "tokens_per_param": [5, 10, 20, 40, 80],
                     "teachers": {"N": [1e8, 2e8, 4e8, 8e8, 1.6e9], "tokens_per_param": [10, 40]}},
}


def world_study(world: str, seed: int):  # noqa: ANN201 - StudyConfig
    raw: dict = {"name": f"refit-{world}-{seed}", "seed": seed, "grid": GRIDS[world],
                 "selection": {"mode": "grid", "refit_every": 10}}
    if world == "chinchilla":
        raw["trainer"] = {"kind": "simulated", "simulated": {"noise": 0.01}}
        raw["laws"] = ["chinchilla"]
    else:
        raw["trainer"] = world_trainer(world)
        raw["laws"] = [POINT_WORLDS[world]["law"]]
        if "teachers" in raw["grid"]:
            raw["resources"] = {"checkpoint_dir": str(_scratch() / raw["name"])}
    return study_from_dict(raw)


def finished_runs(study) -> tuple[list[FinishedRun], list[FinishedRun]]:  # noqa: ANN001
    """The world's runs, trained by the simulated trainer: (teachers, the grid's own runs)."""
    tracker = MemoryTracker()
    run_study(study, tracker=tracker, executor=InlineExecutor(), optuna_storage=optuna.storages.InMemoryStorage(),
              background_refit=True)
    runs = list(tracker.finished_runs().values())
    return [r for r in runs if r.stage != "main"], [r for r in runs if r.stage == "main"]


def world_runs(world: str, seed: int):  # noqa: ANN201
    """The world's study, its laws, its teachers and its runs in the (seeded) order they finish,
    how many runs the first fit gets (two per parameter of its largest law), and the seconds the
    simulated trainer took."""
    study = world_study(world, seed)
    start = time.perf_counter()
    teachers, runs = finished_runs(study)
    generated_s = time.perf_counter() - start
    runs = [runs[i] for i in np.random.default_rng(seed).permutation(len(runs))]
    fitted = study_laws(study)
    first = 2 * max(len(law.law.param_names) for law in fitted)
    return study, fitted, teachers, runs, first, generated_s


def measure(world: str, seed: int) -> dict:
    study, fitted, teachers, runs, first, generated_s = world_runs(world, seed)
    refitter = OnlineRefitter(fitted, full_every=study.selection.refit_every, seed=seed, background=False)
    refitter.submit(teachers + runs[:first])
    updates = []  # (runs, seconds, full)
    for i in range(first, len(runs)):
        full = refitter.updates % refitter.full_every == 0
        t0 = time.perf_counter()
        refitter.submit([runs[i]])
        updates.append((i + 1, time.perf_counter() - t0, full))
    refitter.close()
    last = [s for n, s, full in updates[-100:] if not full]
    fulls = [s for n, s, full in updates if full]
    # baseline: the cold fit of the study's main law on the same tables
    main_law = fitted[-1]
    ready = resolve(main_law, {name: state.fit for name, state in refitter.states.items()})
    cold = {}
    for size in (100, 200, len(runs)):
        inputs, loss = ready.table(teachers + runs[:size])
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            laws.fit(ready.law, inputs, loss, covariance=False)
            times.append(time.perf_counter() - t0)
        cold[size] = float(np.median(times))
    state = refitter.states[main_law.name]
    row = {
        "world": world,
        "runs": len(runs),
        "teachers": len(teachers),
        "law_params": first // 2,
        "generate_s": generated_s,
        "warm_median_s": float(np.median(last)),
        "warm_p95_s": float(np.percentile(last, 95)),
        "warm_max_s": float(np.max(last)),
        "warm_all_median_s": float(np.median([s for _, s, full in updates if not full])),
        "full_mean_s": float(np.mean(fulls)),
        "cold_s": cold,
        "ratio": cold[len(runs)] / float(np.median(last)),
        "final_fit_converged": bool(state.fit is not None and state.fit.report.converged),
        "updates": updates,
    }
    print(
        f"{world:13} {len(runs):4d} runs ({first // 2} params): warm median {row['warm_median_s']:.3f} s, "
        f"p95 {row['warm_p95_s']:.3f} s, max {row['warm_max_s']:.3f} s (last 100 updates); full refit "
        f"{row['full_mean_s']:.2f} s; cold fit on all {cold[len(runs)]:.2f} s ({row['ratio']:.1f}x the warm median)",
        flush=True,
    )
    return row


TARGETS = {
    "chinchilla": {"N": 1e10, "D": 2e11},
    "sparsity": POINT_WORLDS["sparsity"]["target"],
    "mixture": POINT_WORLDS["mixture"]["target"],
    "distillation": POINT_WORLDS["distillation"]["target"],
}


def polish_chains(world: str, rounds: list[int], seed: int) -> list[dict]:
    """Warm-fit chains with each number of polish rounds, against the cold fit (see ``--polish``)."""
    from orchestrator.refit import WARM_OPTIONS

    _, fitted, teachers, runs, first, _ = world_runs(world, seed)
    law = fitted[-1]
    target = TARGETS[world]

    def predict(fit_: laws.LawFit) -> float:
        return float(law.law.predict(fit_.params, **target))

    rng = np.random.default_rng(seed + 1)
    inputs, loss = law.table(teachers + runs[:first])
    cold = laws.fit(law.law, inputs, loss, covariance=False)
    chains = {r: cold for r in rounds}
    times: dict[int, list[float]] = {r: [] for r in rounds}
    rows = []
    for n in range(first + 5, len(runs) + 1, 5):
        inputs, loss = law.table(teachers + runs[:n])
        for r in rounds:
            base = law.law.from_natural(chains[r].params).numpy()[None]
            jitter = base + rng.normal(scale=0.1, size=(8, base.shape[1])) * np.maximum(np.abs(base), 0.1)
            t0 = time.perf_counter()
            chains[r] = laws.fit(law.law, inputs, loss, init=np.concatenate([base, jitter]), options=WARM_OPTIONS,
                                 covariance=False, polish=r)
            times[r].append(time.perf_counter() - t0)
        if (n - first) % 50 == 0 or n + 5 > len(runs):
            ref = laws.fit(law.law, inputs, loss, covariance=False)
            row = {"world": world, "runs": n, "chains": {
                r: {"seconds": float(np.median(times[r][-10:])), "objective": f.objective / ref.objective - 1,
                    "prediction": predict(f) / predict(ref) - 1, "converged": bool(f.report.converged)}
                for r, f in chains.items()}}
            rows.append(row)
            print(f"{world:13} {n:4d} runs: " + " | ".join(
                f"polish {r}: {c['seconds']:.2f} s, objective {c['objective']:+.1e}, prediction {c['prediction']:+.1e}"
                for r, c in row["chains"].items()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--polish", type=int, nargs="+", help="compare warm fits with these rounds of polish")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"torch {torch.__version__}, load {os.getloadavg()}", flush=True)
    if args.polish:
        rows = [row for world in args.worlds for row in polish_chains(world, args.polish, args.seed)]
    else:
        rows = [measure(world, args.seed) for world in args.worlds]
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
