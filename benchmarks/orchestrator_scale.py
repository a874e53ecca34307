"""Orchestrator throughput and scale.

1. Throughput: a study of simulated runs, 2 running at a time on a local Ray, each logged as an
   MLflow child run (params, its loss curve, final metrics) with the law refit as results arrive,
   against Ray Tune running the same number of trivial trials (one report each) with
   ``OptunaSearch`` and ``MLflowLoggerCallback`` at ``max_concurrent_trials=2``, in the same run
   on the same machine, both into a fresh sqlite MLflow store. Reported: runs (trials) per minute
   and the ratio.
2. Scale: expanding and tracking studies of 1k and 10k runs (the driver's side only: expansion,
   MLflow child runs started and finished, scheduling; the trainings are inline simulated runs)
   with the driver's time per run and its peak memory at each size: Python's allocations
   (tracemalloc) and the process's peak resident set (its growth during each size).

    python benchmarks/orchestrator_scale.py [--runs 1000] [--tune-trials 200] [--scale 1000 10000]

Ray Tune is slower by far, so by default it runs fewer trials than isoflop; its rate is per
minute of its own wall time (start-up included, as for isoflop), which the table states.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def _budgets_for(runs: int, per_budget: int = 25) -> list[float]:
    k = max(1, runs // per_budget)
    return [float(x) for x in np.logspace(17, 21, k)]


def _exact_grid(runs: int) -> dict:
    """An isoFLOP grid of exactly ``runs`` runs: budgets x points per budget, the divisor pair
    closest to a square (so a comparison at N runs each is at N runs each)."""
    per_budget = max(d for d in range(1, int(runs**0.5) + 1) if runs % d == 0)
    budgets, per_budget = max(per_budget, runs // per_budget), min(per_budget, runs // per_budget)
    if per_budget < 2:
        raise SystemExit(f"--runs/--tune-trials {runs}: pick a number with a divisor (a grid of budgets x sizes)")
    return {"budgets": [float(x) for x in np.logspace(17, 21, budgets)], "points_per_budget": per_budget, "span": 30}


def isoflop_throughput(runs: int, workdir: Path) -> dict:
    import ray

    from orchestrator.loading import study_from_dict
    from orchestrator.study import run_study

    study = study_from_dict(
        {
            "name": "throughput",
            "tracking": {"uri": f"sqlite:///{workdir / f'isoflop-{runs}.db'}"},  # a fresh store per size
            "trainer": {"kind": "simulated"},
            "grid": {"isoflop": _exact_grid(runs)},
            "resources": {"max_concurrent": 2},
        }
    )
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    outcome = run_study(study)
    seconds = time.perf_counter() - t0
    ray.shutdown()
    done = outcome.stats.finished
    return {"system": "isoflop", "runs": done, "seconds": seconds, "per_minute": 60.0 * done / seconds}


def tune_throughput(trials: int, workdir: Path) -> dict:
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    def trainable(config: dict) -> None:
        n, d = config["N"], config["D"]
        loss = 1.8172 + 477.8 / n**0.3473 + 2143.0 / d**0.3672
        tune.report({"loss": loss})

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    tuner = tune.Tuner(
        trainable,
        param_space={"N": tune.loguniform(1e6, 1e10), "D": tune.loguniform(1e8, 1e12)},
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(metric="loss", mode="min", seed=0),
            num_samples=trials,
            max_concurrent_trials=2,
        ),
        run_config=tune.RunConfig(
            storage_path=str(workdir / "tune"),
            callbacks=[MLflowLoggerCallback(tracking_uri=f"sqlite:///{workdir / 'tune.db'}", experiment_name="tune")],
            verbose=0,
        ),
    )
    results = tuner.fit()
    seconds = time.perf_counter() - t0
    ray.shutdown()
    done = len([r for r in results if r.error is None])
    return {"system": "ray tune", "runs": done, "seconds": seconds, "per_minute": 60.0 * done / seconds}


def driver_scale(runs: int, workdir: Path) -> dict:
    """Expansion plus MLflow tracking of ``runs`` inline simulated runs: time and peak memory of the
    driver per run (the refit is left out: it runs in its own thread and is measured elsewhere)."""
    from orchestrator.executors import InlineExecutor
    from orchestrator.grid import expand
    from orchestrator.loading import study_from_dict
    from orchestrator.mlflow_tracker import MlflowTracker
    from orchestrator.scheduler import Scheduler

    per_budget = 50
    study = study_from_dict(
        {
            "name": f"scale{runs}",
            "trainer": {"kind": "simulated", "simulated": {"curve_points": 5}},
            "grid": {"isoflop": {"budgets": _budgets_for(runs, per_budget), "points_per_budget": per_budget, "span": 100}},
        }
    )
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    planned = expand(study)
    t_expand = time.perf_counter() - t0
    tracker = MlflowTracker(f"sqlite:///{workdir / f'scale{runs}.db'}", study.name)
    tracker.open_study(study.name, "")
    sched = Scheduler(planned, executor=InlineExecutor(), tracker=tracker, max_concurrent=2, max_retries=0)
    t1 = time.perf_counter()
    sched.run(timeout=0)
    t_track = time.perf_counter() - t1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux; the process's peak so far
    n = len(planned)
    return {
        "rss_peak_mb": rss / 1024,
        "rss_growth_mb": (rss - rss0) / 1024,
        "runs": n,
        "expand_ms_per_run": 1e3 * t_expand / n,
        "track_ms_per_run": 1e3 * t_track / n,
        "peak_mb": peak / 2**20,
        "peak_kb_per_run": peak / 1024 / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--tune-trials", type=int, default=200)
    ap.add_argument("--scale", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"# {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    workdir = Path(tempfile.mkdtemp(prefix="isoflop-bench-"))
    try:
        if not args.skip_throughput:
            # the same number of runs for both (start-up weighs the same), then isoflop at full size
            same = isoflop_throughput(args.tune_trials, workdir)
            tune_row = tune_throughput(args.tune_trials, workdir)
            full = isoflop_throughput(args.runs, workdir) if args.runs != args.tune_trials else same
            for r in (same, tune_row, full):
                print(f"{r['system']:9} {r['runs']:5d} runs in {r['seconds']:7.1f} s = {r['per_minute']:7.1f} per minute")
            print(f"ratio isoflop / ray tune at {args.tune_trials} runs each: {same['per_minute'] / tune_row['per_minute']:.1f}x")
            print(f"ratio isoflop at {full['runs']} runs / ray tune: {full['per_minute'] / tune_row['per_minute']:.1f}x")
        for n in args.scale:
            r = driver_scale(n, workdir)
            print(
                f"scale {r['runs']:6d} runs: expand {r['expand_ms_per_run']:.3f} ms/run, "
                f"track {r['track_ms_per_run']:.2f} ms/run, peak {r['peak_mb']:.1f} MB traced "
                f"({r['peak_kb_per_run']:.2f} KB/run); process peak RSS {r['rss_peak_mb']:.0f} MB "
                f"(+{r['rss_growth_mb']:.0f} MB during this size)"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
