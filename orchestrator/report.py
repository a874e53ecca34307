"""The Markdown report of ``isoflop export --format md``: fitted laws with intervals, the recipes
they imply, the runs behind them and the study's figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import laws
from orchestrator.tracking import FinishedRun


def _g(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if isinstance(x, int | float) else str(x)


def _interval(iv: Sequence[float] | None) -> str:
    return f"[{_g(iv[0], 3)}, {_g(iv[1], 3)}]" if iv else "-"


def markdown_report(document: Mapping[str, Any], *, figures: Sequence[str] = ()) -> str:
    """Render an export document (see ``laws.export``); ``figures`` are relative image paths."""
    study = document.get("study", {})
    lines = [f"# Scaling-law study `{study.get('name', '?')}`", ""]
    if study:
        lines += [
            f"- finished runs: {study.get('finished_runs')}"
            + (f" ({study['outside_grid']} more in the store, of a grid since changed: not fitted)" if study.get("outside_grid") else ""),
            f"- tracking store: `{study.get('tracking_uri')}` (parent run `{study.get('parent_run_id')}`)",
            f"- export schema version: {document.get('schema_version')}",
            *(f"- law `{name}` not fitted: {why}" for name, why in (study.get("not_fitted") or {}).items()),
            "",  # the list ends before the next heading or paragraph
        ]
    for entry in document.get("laws", []):
        name = entry.get("name", entry["law"])
        title = f"## Law `{name}`" + (f" ({entry['law']})" if name != entry["law"] else "")
        lines += [title, "", f"`L = {entry.get('formula') or '?'}`", ""]
        fitted_to = entry.get("fitted_to")
        if fitted_to:
            lines += [f"Fitted to `{fitted_to['loss']}` of {fitted_to['n_runs']} runs ({fitted_to['runs']}).", ""]
        intervals = entry.get("intervals") or {}
        boot = entry.get("bootstrap") or {}
        level = int(100 * entry.get("level", 0.95))
        head = f"| parameter | value | {level} % interval (parametric) |"
        rule = "|---|---:|---|"
        if boot:
            head += f" {level} % interval (bootstrap, {boot.get('n_converged')} of {boot.get('n_resamples')} resamples) |"
            rule += "---|"
        lines += [head, rule]
        for k, v in entry["params"].items():
            row = f"| {k} | {_g(v)} | {_interval(intervals.get(k))} |"
            if boot:
                row += f" {_interval((boot.get('intervals') or {}).get(k))} |"
            lines.append(row)
        report = entry.get("report", {})
        lines += [
            "",
            f"Intervals: {entry.get('interval_method', '-')}. Fit: objective {_g(entry.get('objective'))}, "
            f"{report.get('n_points')} points, {report.get('n_best')} of {report.get('n_starts')} starts reached the "
            f"best optimum, gradient norm {_g(report.get('grad_norm'), 2)}, {_g(report.get('seconds'), 2)} s.",
        ]
        for w in report.get("warnings", []):
            lines.append(f"> warning: {w}")
        if entry.get("bootstrap_error"):
            lines.append(f"> no bootstrap: {entry['bootstrap_error']}")
        if entry.get("compute_optimal"):
            boot_rows = {row["C"]: row for row in boot.get("compute_optimal", [])}
            lines += [
                "",
                f"Compute-optimal recipes (C = 6ND), {level} % intervals: parametric"
                + (", then bootstrap." if boot_rows else "."),
                "",
                "| budget C (FLOPs) | N_opt | interval | D_opt | interval | tokens / parameter | predicted loss |",
                "|---:|---:|---|---:|---|---:|---:|",
            ]
            for row in entry["compute_optimal"]:
                b = boot_rows.get(row["C"], {})
                n_iv = _interval(row.get("N_opt_interval")) + (f"; {_interval(b['N_opt'])}" if b else "")
                d_iv = _interval(row.get("D_opt_interval")) + (f"; {_interval(b['D_opt'])}" if b else "")
                lines.append(
                    f"| {row['C']:.3g} | {row['N_opt']:.3g} | {n_iv} | {row['D_opt']:.3g} | {d_iv} | "
                    f"{row['tokens_per_param']:.1f} | {row['loss']:.4f} |"
                )
        if entry.get("optimal_sparsity"):
            lines += [
                "",
                f"Optimal sparsity at each budget (total size N, sparsity S, tokens D), {level} % intervals:",
                "",
                "| budget C (FLOPs) | N | S | D | predicted loss |",
                "|---:|---|---|---|---|",
            ]
            for row in entry["optimal_sparsity"]:
                cells = [f"{row[k]:.3g} {_interval(row.get(f'{k}_interval'))}" for k in ("N", "S", "D")]
                lines.append(f"| {row['C']:.3g} | " + " | ".join(cells) + f" | {row['loss']:.4f} {_interval(row.get('loss_interval'))} |")
        lines.append("")
    for row in document.get("optimal_mixture") or []:
        weights = ", ".join(f"{w:.3f}" for w in row["weights"])
        ivs = row.get("bootstrap_weights_interval") or row.get("weights_interval")
        lines += [
            f"## Optimal mixture at N = {row['N']:.3g}, D = {row['D']:.3g}",
            "",
            f"Weights ({weights}) minimise the mean loss of {', '.join(f'`{n}`' for n in row['laws'])}: "
            f"predicted loss {row['loss']:.4f} {_interval(row.get('loss_interval'))}."
            + (f" Weight intervals: {'; '.join(_interval(iv) for iv in ivs)}." if ivs else ""),
            *[f"> {w}" for w in row.get("warnings", [])],
            "",
        ]
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    else:
        lines += ["Figures: write the report to a file (`isoflop export STUDY --format md -o REPORT.md`) to",
                  "get them beside it.", ""]
    runs = _in_budget_order(document.get("runs") or [])
    if runs:
        keys = [k for k in ("N", "D", "C") if any(k in r for r in runs)]
        # MoE sparsity only when some run is sparse: a dense study's S is 0 on every run
        keys += ["S"] if any(r.get("S", 0.0) for r in runs) else []
        lines += ["## Runs", "", "| run | " + " | ".join(keys) + " | loss |", "|---|" + "---:|" * (len(keys) + 1)]
        for r in runs:
            lines.append(f"| `{r['run_key'][:8]}` | " + " | ".join(_g(r.get(k), 3) for k in keys) + f" | {r['loss']:.4f} |")
    return "\n".join(lines) + "\n"


def _in_budget_order(runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Runs by compute budget, then by size within a budget. An isoFLOP budget's runs count
    slightly different FLOPs (their shapes differ), so runs are grouped by budget as the fits
    group them (C within 5 %) rather than sorted by their exact C, which would interleave sizes."""
    from laws.recipes import budget_groups

    def size(r: Mapping[str, Any]) -> float:
        return float(r.get("N", 0.0))

    with_c = [r for r in runs if isinstance(r.get("C"), int | float)]
    without_c = [r for r in runs if not isinstance(r.get("C"), int | float)]
    ordered = [
        run
        for group in budget_groups([float(r["C"]) for r in with_c])
        for run in sorted((with_c[i] for i in group), key=size)
    ]
    return ordered + sorted(without_c, key=size)


def write_report(
    document: Mapping[str, Any],
    runs: Sequence[FinishedRun],
    output: Path,
    *,
    history: Mapping[str, Mapping[int, Mapping[str, float]]] | None = None,
) -> list[Path]:
    """Write ``output`` (Markdown) and its figures beside it in ``<stem>_files/``; returns all
    paths. ``history``: each law's logged fits by step, for its parameter trajectories."""
    from orchestrator import plots
    from orchestrator.fitting import StudyLaw

    entries = document.get("laws", [])
    fits = {e.get("name", e["law"]): laws.LawFit.from_dict(e) for e in entries}
    how = {
        name: StudyLaw(name=name, law=fit_.get_law(), loss=e["fitted_to"]["loss"], runs=e["fitted_to"]["runs"])
        for (name, fit_), e in zip(fits.items(), entries, strict=True)
        if e.get("fitted_to")
    }
    budgets = document.get("budgets", [])
    figures = plots.study_figures(runs, fits, budgets=budgets, study_laws=how, history=history)
    folder = output.parent / f"{output.stem}_files"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for name, fig in figures.items():
            fig.savefig(folder / name, dpi=110)
            written.append(folder / name)
    finally:
        plots.close(figures)
    output.write_text(markdown_report(document, figures=[f"{folder.name}/{p.name}" for p in written]))
    return [output, *written]
