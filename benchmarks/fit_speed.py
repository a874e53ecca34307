"""Batched multi-start fit vs the reference SciPy loop, on the Chinchilla replication data.

Reference: SciPy L-BFGS-B from each start of the 4500-start grid (Hoffmann et al. 2022,
App. D.2), one start after another, summed Huber (delta 1e-3) on log residuals, with its exact
gradient (NumPy) or, with ``--ref-gradient numeric``, SciPy's finite differences. Timing all 4500 starts that way takes minutes, so by default a seeded random
subset of starts is timed and the time scaled to 4500 (the table says so); ``--ref-starts 4500``
times them all.

    python benchmarks/fit_speed.py [--data PATH] [--ref-starts 200] [--ref-gradient exact|numeric]
                                   [--unscreened] [--seed 0] [--repeat 3]
    python benchmarks/fit_speed.py --bootstrap [--resamples 1000] [--seed 0]
    python benchmarks/fit_speed.py --distillation [--seeds 3]
    python benchmarks/fit_speed.py --custom [--repeat 3]

``--distillation``: the distillation law (Busbridge et al. 2025, published parameters) on 125
simulated runs (5 students x 5 token counts x 5 teachers, 0.5 % log-normal noise, seeds 0..k-1):
the default seeded 4096-start subset against the full 162,000-start grid, screened by objective
value or by one Newton step. ``--custom``: the Chinchilla law written as a custom expression
against the built-in, on the same 4500-start grid and data.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy import optimize
from scipy.special import logsumexp

import laws
from laws.io import load_table
from laws.optimizer import torch_threads

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "epoch_chinchilla.csv"


def replication_data(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The 240 points of Besiroglu et al. 2024 (rows with loss > 3.44 dropped)."""
    inputs, loss = load_table(path, {"N": "Model Size", "C": "Training FLOP", "loss": "loss"})
    keep = loss <= 3.44
    return {k: v[keep] for k, v in inputs.items()}, loss[keep]


def scipy_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
                    delta: float) -> tuple[float, np.ndarray]:
    """Summed Huber of log residuals and its gradient; theta = (e, a, b, alpha, beta)."""
    e, a, b, alpha, beta = theta
    u = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    lp = logsumexp(u, axis=0)
    s = np.exp(u - lp)
    r = lp - log_l
    inside = np.abs(r) <= delta
    value = np.where(inside, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
    psi = np.clip(r, -delta, delta)
    grad = np.array([
        (psi * s[2]).sum(),
        (psi * s[0]).sum(),
        (psi * s[1]).sum(),
        -(psi * s[0] * log_n).sum(),
        -(psi * s[1] * log_d).sum(),
    ])
    return float(value), grad


def run_reference(starts: np.ndarray, inputs: dict[str, np.ndarray], loss: np.ndarray,
                  gradient: str = "exact") -> tuple[float, np.ndarray, float]:
    """SciPy L-BFGS-B from every start in turn; ``gradient="numeric"`` lets SciPy difference the
    objective (what a plain ``minimize(objective, x0, method="L-BFGS-B")`` does)."""
    log_n, log_d, log_l = np.log(inputs["N"]), np.log(inputs["D"]), np.log(loss)
    best_f, best_x = np.inf, starts[0]
    exact = gradient == "exact"
    fun = scipy_objective if exact else (lambda *a: scipy_objective(*a)[0])
    t0 = time.perf_counter()
    for x0 in starts:
        res = optimize.minimize(fun, x0, args=(log_n, log_d, log_l, 1e-3), jac=exact, method="L-BFGS-B")
        if res.fun < best_f:
            best_f, best_x = float(res.fun), res.x
    return time.perf_counter() - t0, best_x, best_f


def machine() -> str:
    """CPU model, cores, load and versions: the context every timing needs."""
    import os
    import platform

    import scipy

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, load average {load}; Python {platform.python_version()}, "
            f"torch {torch.__version__} (threads while fitting: 1), NumPy {np.__version__}, SciPy {scipy.__version__}")


CPU_TIMES: list[float] = []


def timed(fn, repeat: int) -> tuple[list[float], object]:
    """Wall-clock times of ``repeat`` calls (the process's CPU times go to ``CPU_TIMES``: on a
    shared machine they show what the run itself cost)."""
    times, out = [], None
    CPU_TIMES.clear()
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        CPU_TIMES.append(time.process_time() - c0)
    return times, out


def bench_fit(args: argparse.Namespace, inputs: dict[str, np.ndarray], loss: np.ndarray) -> None:
    law = laws.get_law("chinchilla")
    grid = law.init_grid().numpy()
    t0 = time.perf_counter()
    first = laws.fit(law, inputs, loss)
    cold = time.perf_counter() - t0
    times, fit = timed(lambda: laws.fit(law, inputs, loss), args.repeat)
    cpu = float(np.median(CPU_TIMES))
    assert isinstance(fit, laws.LawFit)
    full = None
    if args.unscreened:
        from laws.fit import Screen

        full_times, full = timed(lambda: laws.fit(law, inputs, loss, screen=Screen(keep=0)), 1)

    rng = np.random.default_rng(args.seed)
    k = min(args.ref_starts, grid.shape[0])
    subset = grid if k == grid.shape[0] else grid[np.sort(rng.choice(grid.shape[0], k, replace=False))]
    ref_seconds, ref_x, ref_f = run_reference(subset, inputs, loss, args.ref_gradient)
    ref_full = ref_seconds * grid.shape[0] / k
    scaled = "" if k == grid.shape[0] else (
        f" (timed on {k} seeded random starts, seed {args.seed}, {ref_seconds:.1f} s, scaled x{grid.shape[0] / k:.1f})")

    print(f"Data: {args.data.name}, {loss.size} points; grid {grid.shape[0]} starts")
    print(f"Machine: {machine()}\n")
    print("| fitter | seconds for 4500 starts | best objective | E | A | B | alpha | beta |")
    print("|---|---|---|---|---|---|---|---|")
    row = "| {} | {} | {:.11f} | {:.4f} | {:.1f} | {:.0f} | {:.4f} | {:.4f} |"
    p = law.to_natural(ref_x)
    print(row.format(f"SciPy L-BFGS-B ({args.ref_gradient} gradient), one start at a time{scaled}", f"{ref_full:.1f}", ref_f,
                     p["E"], p["A"], p["B"], p["alpha"], p["beta"]))
    med = float(np.median(times))
    p = fit.params
    print(row.format(f"laws.fit ({fit.report.method})",
                     f"{med:.2f} (median of {len(times)}, best {min(times):.2f}; CPU {cpu:.2f}; first call in the process {cold:.2f})",
                     fit.objective, p["E"], p["A"], p["B"], p["alpha"], p["beta"]))
    if full is not None:
        p = full.params
        print(row.format(f"laws.fit ({full.report.method})", f"{full_times[0]:.2f}", full.objective,
                         p["E"], p["A"], p["B"], p["alpha"], p["beta"]))
    print(f"\nSpeed-up (reference / batched median): {ref_full / med:.0f}x")
    print(f"Batched report: {fit.report.n_best} starts within {fit.report.best_tol:g} of the best; "
          f"{fit.report.n_converged} converged; gradient max-norm {fit.report.grad_norm:.2e}; "
          f"best converged {fit.report.converged}; |objective - batched objective of first call| "
          f"{abs(first.objective - fit.objective):.1e}")


def bench_bootstrap(args: argparse.Namespace, inputs: dict[str, np.ndarray], loss: np.ndarray) -> None:
    from laws.bootstrap import bootstrap

    fit = laws.fit("chinchilla", inputs, loss)
    times, boot = timed(lambda: bootstrap(fit, inputs, loss, n_resamples=args.resamples, seed=args.seed),
                        args.repeat)
    print(f"Data: {args.data.name}, {loss.size} points; machine: {machine()}\n")
    med = float(np.median(times))
    print(f"Bootstrap of the 5-parameter law: {boot.n_resamples} resamples of {boot.n_groups} configurations, "
          f"seed {args.seed}: {med:.2f} s (median of {len(times)}, best {min(times):.2f}; "
          f"CPU {float(np.median(CPU_TIMES)):.2f}); "
          f"{boot.n_converged} resamples converged")
    for w in boot.warnings:
        print(f"warning: {w}")
    if not boot.has_intervals:
        return
    print("\n| quantity | fit | 95 % bootstrap interval | bootstrap SE |")
    print("|---|---|---|---|")
    for name in boot.get_law().param_names:
        lo, hi = boot.interval(name)
        print(f"| {name} | {fit.params[name]:.4g} | [{lo:.4g}, {hi:.4g}] | {np.std(boot.samples(name), ddof=1):.3g} |")
    lo, hi = boot.prediction_interval(N=7e10, D=1.4e12)
    print(f"| loss at N=7e10, D=1.4e12 | {float(fit.predict(N=7e10, D=1.4e12)):.4f} | [{lo[0]:.4f}, {hi[0]:.4f}] | |")
    (alloc,) = laws.compute_optimal(fit, [5.76e23])
    opt = boot.optimum_interval(5.76e23)
    print(f"| N_opt at C=5.76e23 | {alloc.N_opt:.3g} | [{opt['N_opt'][0]:.3g}, {opt['N_opt'][1]:.3g}] | |")
    print(f"| D_opt at C=5.76e23 | {alloc.D_opt:.3g} | [{opt['D_opt'][0]:.3g}, {opt['D_opt'][1]:.3g}] | |")


def bench_distillation(args: argparse.Namespace) -> None:
    from laws.distillation import BUSBRIDGE_DISTILLATION_PARAMS as truth
    from laws.fit import Screen

    n, d, lt = (a.ravel() for a in np.meshgrid(np.geomspace(1.4e8, 7.75e9, 5), np.geomspace(2e9, 5e11, 5),
                                               np.array([2.0, 2.25, 2.5, 2.8, 3.2]), indexing="ij"))
    x = {"N": n, "D": d, "L_T": lt}
    target = {"N": np.array([546e6, 3e9]), "D": np.array([10.9e9, 1e12]), "L_T": np.array([2.2509, 2.0])}
    variants = [
        ("default: seeded 4096-start subset; all x 3 Newton steps, best 64 continued", 4096, None),
        ("full grid (162,000); all ranked by objective, best 256 continued", None, Screen(iterations=0, keep=256)),
        ("full grid (162,000); all ranked by objective, best 1024 continued", None, Screen(iterations=0, keep=1024)),
        ("full grid (162,000); all x 1 Newton step, best 64 continued", None, Screen(iterations=1, keep=64)),
    ]
    print(f"Machine: {machine()}\n")
    print("| seed | starts and screen | seconds (CPU) | objective | max prediction error at the targets | converged |")
    print("|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        law0 = laws.get_law("distillation")
        loss = law0.predict(truth, **x) * np.exp(np.random.default_rng(seed).normal(0.0, 0.005, n.size))
        for label, max_starts, screen in variants:
            law = laws.get_law("distillation", max_starts=max_starts)
            t0, c0 = time.perf_counter(), time.process_time()
            fit = laws.fit(law, x, loss, screen=screen)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            err = float(np.max(np.abs(fit.predict(**target) / law.predict(truth, **target) - 1)))
            print(f"| {seed} | {label} | {wall:.1f} ({cpu:.1f}) | {fit.objective:.10e} | {100 * err:.2f} % | "
                  f"{fit.report.converged} |")


def bench_custom(args: argparse.Namespace, inputs: dict[str, np.ndarray], loss: np.ndarray) -> None:
    """Custom-expression laws against the built-ins they restate, same grid, data and fitter:
    Chinchilla (a sum of power laws: the custom law takes the closed-form log-sum-exp path) and
    Busbridge et al.'s law with an outer exponent gamma (not a sum of power laws: the formula
    path, like the built-in)."""
    ab = [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    ex = [0.0, 0.5, 1.0, 1.5, 2.0]
    gab, gex = [0.0, 5.0, 10.0, 15.0, 20.0], [0.0, 0.5, 1.0, 1.5]
    pairs = [
        (laws.get_law("chinchilla"), {
            "name": "custom_chinchilla", "expression": "E + A / N**alpha + B / D**beta", "inputs": ["N", "D"],
            "params": {"E": {"log": True, "init": [-1.0, -0.5, 0.0, 0.5, 1.0]}, "A": {"log": True, "init": ab},
                       "B": {"log": True, "init": ab}, "alpha": ex, "beta": ex}}),
        (laws.get_law("chinchilla_gamma"), {
            "name": "custom_chinchilla_gamma", "expression": "E + (A / N**alpha + B / D**beta)**gamma",
            "inputs": ["N", "D"],
            "params": {"E": {"log": True, "init": [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]}, "A": {"log": True, "init": gab},
                       "B": {"log": True, "init": gab}, "alpha": gex, "beta": gex, "gamma": gex},
            "delta": 1e-4}),
    ]
    print(f"Data: {args.data.name}, {loss.size} points; machine: {machine()}\n")
    print(f"| law | path | starts | seconds (median of {args.repeat}; CPU) | best objective | custom / built-in |")
    print("|---|---|---|---|---|---|")
    for builtin, spec in pairs:
        custom = laws.custom_law(spec)
        torch.testing.assert_close(custom.init_grid(), builtin.init_grid())
        medians = []
        for law in (builtin, custom):
            laws.fit(law, inputs, loss)  # warm-up
            times, fit = timed(lambda law=law: laws.fit(law, inputs, loss), args.repeat)
            medians.append(float(np.median(times)))
            path = "closed-form log-sum-exp" if isinstance(law, laws.LinearLSELaw) else "formula (recorded tape)"
            ratio = "" if law is builtin else f"**{medians[1] / medians[0]:.2f}**"
            print(f"| {law.name} | {path} | {law.init_grid().shape[0]} | {medians[-1]:.2f} "
                  f"({float(np.median(CPU_TIMES)):.2f}) | {fit.objective:.11g} | {ratio} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--ref-starts", type=int, default=200, help="starts timed for the SciPy reference")
    ap.add_argument("--ref-gradient", choices=["exact", "numeric"], default="exact",
                    help="SciPy reference with the exact gradient or with SciPy's finite differences")
    ap.add_argument("--unscreened", action="store_true",
                    help="also time the batched fit with every start run to convergence (no screening)")
    ap.add_argument("--bootstrap", action="store_true", help="time the bootstrap instead of the fit")
    ap.add_argument("--distillation", action="store_true",
                    help="the distillation law: default start subset against the full 162,000-start grid")
    ap.add_argument("--seeds", type=int, default=3, help="noise seeds of --distillation")
    ap.add_argument("--custom", action="store_true", help="a custom-expression law against the built-in")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (median and best shown)")
    args = ap.parse_args()
    if args.distillation:
        with torch_threads(1):
            bench_distillation(args)
        return
    inputs, loss = replication_data(args.data)
    if args.custom:
        bench_custom(args, inputs, loss)
    elif args.bootstrap:
        bench_bootstrap(args, inputs, loss)
    else:
        bench_fit(args, inputs, loss)


if __name__ == "__main__":
    main()
