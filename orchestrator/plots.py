"""Figures of a study: what the MLflow UI shows on the parent run and the Markdown report embeds.

Every function takes the finished runs (and fits) and returns a matplotlib Figure; nothing here
touches MLflow. The Agg backend is used, so figures render without a display.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import laws  # noqa: E402
from laws.recipes import budget_groups  # noqa: E402
from orchestrator.fitting import StudyLaw, law_table  # noqa: E402
from orchestrator.tracking import FinishedRun  # noqa: E402


def _column(runs: Sequence[FinishedRun], key: str) -> np.ndarray:
    return np.array([float(r.inputs.get(key, np.nan)) for r in runs])


def flops_per_token(runs: Sequence[FinishedRun]) -> Callable[[np.ndarray], np.ndarray]:
    """The runs' own training FLOPs per token as a function of model size N.

    Runs count their FLOPs as they train (a dense run's attention included: about 7.7 N per token
    at small sizes, not 6 N), so a law drawn at D = C / (6 N) would sit off the very runs it was
    fitted to. Between the sizes trained, C / (N D) is interpolated in log N; beyond them the
    nearest size's holds. Without runs that give C, N and D, 6 N."""
    c, n, d = _column(runs, "C"), _column(runs, "N"), _column(runs, "D")
    ok = np.isfinite(c) & np.isfinite(n) & np.isfinite(d) & (c > 0) & (n > 0) & (d > 0)
    if not ok.any():
        return lambda size: 6.0 * np.asarray(size, dtype=float)
    sizes = np.unique(n[ok])
    per_param = np.array([np.median(c[ok & (n == s)] / (s * d[ok & (n == s)])) for s in sizes])

    def per_token(size: np.ndarray) -> np.ndarray:
        size = np.asarray(size, dtype=float)
        return size * np.interp(np.log(size), np.log(sizes), per_param)

    return per_token


def loss_vs_compute(runs: Sequence[FinishedRun], fit_: laws.LawFit | None, budgets: Sequence[float] = ()) -> Figure:
    """Final loss against training FLOPs, with the fitted law along each model size's runs
    (L(N, C / FLOPs per token) for the sizes trained, see :func:`flops_per_token`) and its
    compute-optimal frontier out to the budgets."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    c, n, y = _column(runs, "C"), _column(runs, "N"), np.array([r.final_loss for r in runs])
    norm = matplotlib.colors.Normalize(*(np.log10([np.nanmin(n), np.nanmax(n)]) if len(n) else (0, 1)))
    sc = ax.scatter(c, y, c=np.log10(n), cmap="viridis", norm=norm, s=18, label="runs")
    fig.colorbar(sc, ax=ax, label="log10 N")
    if fit_ is not None and {"N", "D"} == set(fit_.get_law().inputs) and len(c):
        per_token = flops_per_token(runs)
        sizes = np.unique(n[np.isfinite(n)])
        for size in sizes if len(sizes) <= 12 else sizes[:: int(np.ceil(len(sizes) / 12))]:
            at = n == size
            cs = np.logspace(np.log10(c[at].min()) - 0.3, np.log10(c[at].max()) + 0.3, 30)
            ax.plot(cs, _finite(fit_.predict(N=np.full_like(cs, size), D=cs / per_token(size))), lw=0.8, alpha=0.7,
                    color=plt.cm.viridis(norm(np.log10(size))))
        hi = max([float(np.nanmax(c)), *budgets])
        grid = np.logspace(np.log10(np.nanmin(c)), np.log10(hi), 60)
        frontier = laws.compute_optimal(fit_, grid)
        ax.plot(grid, _finite([a.loss for a in frontier]), color="crimson", lw=1.5, label=f"{fit_.law}: compute-optimal loss (C = 6ND)")
        for b in budgets:
            a = laws.compute_optimal(fit_, [b])[0]
            ax.plot([b], [a.loss], marker="*", color="crimson", ms=10)
            ax.annotate(f"N*={a.N_opt:.2g}", (b, a.loss), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="final loss", title="Loss against compute")
    ax.legend(fontsize=8)
    return fig


def isoflop_curves(runs: Sequence[FinishedRun], fit_: laws.LawFit | None) -> Figure:
    """Loss against N at each compute budget, with the fitted law along each isoFLOP curve
    (D = C / the runs' own FLOPs per token at each N, see :func:`flops_per_token`)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    c, n, y = _column(runs, "C"), _column(runs, "N"), np.array([r.final_loss for r in runs])
    groups = budget_groups(c)
    per_token = flops_per_token(runs)
    colors = plt.cm.plasma(np.linspace(0, 0.9, max(len(groups), 1)))
    for g, color in zip(groups, colors, strict=False):
        budget = float(np.exp(np.mean(np.log(c[g]))))
        ax.scatter(n[g], y[g], color=color, s=16, label=f"C={budget:.2g}")
        if fit_ is not None and set(fit_.get_law().inputs) == {"N", "D"} and len(g) > 1:
            ns = np.logspace(np.log10(n[g].min()) - 0.2, np.log10(n[g].max()) + 0.2, 50)
            ax.plot(ns, _finite(fit_.predict(N=ns, D=budget / per_token(ns))), color=color, lw=1)
    ax.set(xscale="log", xlabel="parameters N", ylabel="final loss", title="IsoFLOP curves")
    if groups:
        ax.legend(fontsize=7, ncol=2)
    return fig


def residuals(runs: Sequence[FinishedRun], fit_: laws.LawFit, study_law: StudyLaw | None = None) -> Figure:
    """log(predicted / observed) per run against FLOPs: structure here means a misfit. With the
    ``study_law`` it was fitted as, only its runs and its loss are shown."""
    law = fit_.get_law()
    if study_law is not None:
        runs = study_law.select(runs)
        inputs, y = law_table(law, runs, loss=study_law.loss)
    else:
        inputs = {k: _column(runs, k) for k in law.inputs}
        y = np.array([r.final_loss for r in runs])
    r = np.log(fit_.predict(**inputs) / y)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    ax.axhline(0, color="grey", lw=0.8)
    ax.scatter(_column(runs, "C"), r, s=14)
    ax.set(xscale="log", xlabel="training FLOPs C", ylabel="log(predicted / observed)", title=f"Residuals of {fit_.law}")
    return fig


def parameter_trajectories(law: str, history: Mapping[int, Mapping[str, float]]) -> Figure:
    """Each parameter of ``law`` against the number of finished runs, with its 95 % interval
    (``history``: step -> the fit's metrics ``law.<law>.<param>`` and ``.lo``/``.hi``, as
    :meth:`~orchestrator.tracking.Tracker.fit_history` gives them)."""
    steps = sorted(history)
    prefix = f"law.{law}."
    names = [
        k.removeprefix(prefix)
        for k in history[steps[-1]]
        if k.startswith(prefix) and f"{k}.lo" in history[steps[-1]]
    ]
    cols = max(min(len(names), 3), 1)
    rows = max(int(np.ceil(len(names) / cols)), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), layout="constrained", squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        key = prefix + name
        at = [s for s in steps if key in history[s]]
        # an interval without an end (an unidentified parameter's: inf) is not drawn there; on a
        # log axis an infinite value broke the tick labels, and the figure with them
        ax.fill_between(
            at,
            _finite([history[s].get(f"{key}.lo", np.nan) for s in at]),
            _finite([history[s].get(f"{key}.hi", np.nan) for s in at]),
            alpha=0.25,
        )
        values = list(_finite([history[s][key] for s in at]))
        ax.plot(at, values, marker=".")
        if _spans_decades([*values, *(history[s].get(f"{key}{e}", np.nan) for s in at for e in (".lo", ".hi"))]):
            ax.set_yscale("log")  # A, B and the like: on a linear axis all but the largest look flat
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("finished runs", fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(f"{law}: parameters as runs finish", fontsize=10)
    return fig


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``values`` with every infinite or overflowing one as NaN (left out of a line)."""
    v = np.asarray(values, dtype=float)
    return np.where(np.isfinite(v) & (np.abs(v) < 1e300), v, np.nan)


def _spans_decades(values: Sequence[float], ratio: float = 10.0) -> bool:
    """True when every finite value is positive and the largest is ``ratio`` times the smallest
    or more: a log axis shows them all; a linear one flattens the small ones."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return bool(len(v)) and bool((v > 0).all()) and float(v.max()) >= ratio * float(v.min())


def _by_size(ax, runs: Sequence[FinishedRun], x: np.ndarray, y: np.ndarray) -> None:  # noqa: ANN001 - Axes
    """Scatter ``y`` against ``x``, one colour per model size N."""
    n = _column(runs, "N")
    for size in np.unique(n[np.isfinite(n)]):
        sel = n == size
        ax.scatter(x[sel], y[sel], s=16, label=f"N={size:.3g}")
    if len(np.unique(n)) > 1:
        ax.legend(fontsize=7)


def domain_losses(runs: Sequence[FinishedRun]) -> Figure | None:
    """Each domain's held-out loss against that domain's weight h_i (mixture studies)."""
    domains = sorted({k.removeprefix("eval_loss/") for r in runs for k in r.metrics if k.startswith("eval_loss/")})
    weights = [f"h{i + 1}" for i in range(len(domains))]
    if len(domains) < 2 or not all(any(w in r.inputs for r in runs) for w in weights):
        return None
    fig, axes = plt.subplots(1, len(domains), figsize=(3.2 * len(domains), 3.0), layout="constrained", squeeze=False)
    for ax, domain, w in zip(axes[0], domains, weights, strict=True):
        y = np.array([r.metrics.get(f"eval_loss/{domain}", np.nan) for r in runs], dtype=float)
        _by_size(ax, runs, _column(runs, w), y)
        ax.set(xlabel=f"weight of {domain} ({w})", ylabel="held-out loss", title=domain)
    fig.suptitle("Per-domain loss against the mixture weights", fontsize=10)
    return fig


def loss_vs_sparsity(runs: Sequence[FinishedRun]) -> Figure | None:
    """Loss against MoE sparsity S, one colour per total size (sparsity studies)."""
    s = _column(runs, "S")
    if len(np.unique(s[np.isfinite(s)])) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    _by_size(ax, runs, s, np.array([r.final_loss for r in runs]))
    ax.set(xlabel="sparsity S = (E - K) / E", ylabel="final loss", title="Loss against sparsity")
    return fig


def student_vs_teacher(runs: Sequence[FinishedRun]) -> Figure | None:
    """Student loss against its teacher's loss L_T (distillation studies): the capacity gap shows
    as students that stop improving, or get worse, with stronger teachers."""
    students = [r for r in runs if "L_T" in r.inputs]
    if not students:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    _by_size(ax, students, _column(students, "L_T"), np.array([r.final_loss for r in students]))
    lt = _column(students, "L_T")
    ax.plot([lt.min(), lt.max()], [lt.min(), lt.max()], color="grey", lw=0.8, ls="--", label="L_S = L_T")
    ax.set(xlabel="teacher loss L_T", ylabel="student loss L_S", title="Distillation: student against teacher")
    return fig


def study_figures(
    runs: Sequence[FinishedRun],
    fits: Mapping[str, laws.LawFit],
    *,
    budgets: Sequence[float] = (),
    history: Mapping[str, Mapping[int, Mapping[str, float]]] | None = None,
    study_laws: Mapping[str, StudyLaw] | None = None,
) -> dict[str, Figure]:
    """Every figure that applies to this study, by artifact file name (``study_laws``: how each
    fitted law was fitted, by name, for its residuals; ``history``: each law's logged fits by
    step, for its parameter trajectories)."""
    runs = [r for r in runs if r.stage != "trunk"]  # a trunk's end point is not a cooled-down run
    # the N-D figures draw the first law of N and D alone (chinchilla-type)
    first = next((f for f in fits.values() if set(f.get_law().inputs) == {"N", "D"}), None)
    figures = {
        "loss_vs_compute.png": loss_vs_compute(runs, first, budgets),
        "isoflop_curves.png": isoflop_curves(runs, first),
    }
    for name, figure in (
        ("domain_losses.png", domain_losses(runs)),
        ("loss_vs_sparsity.png", loss_vs_sparsity(runs)),
        ("student_vs_teacher.png", student_vs_teacher(runs)),
    ):
        if figure is not None:
            figures[name] = figure
    for name, fit_ in fits.items():
        try:
            figures[f"residuals_{name}.png"] = residuals(runs, fit_, (study_laws or {}).get(name))
        except ValueError:  # its runs no longer give its table (they always should): no figure
            continue
    for name, hist in (history or {}).items():
        if len(hist) >= 2:
            figures[f"trajectory_{name}.png"] = parameter_trajectories(name, hist)
    return figures


def close(figures: Mapping[str, Figure]) -> None:
    for fig in figures.values():
        plt.close(fig)
