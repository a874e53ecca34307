"""The ``isoflop`` command line.

Exit codes: 0 success; 1 the study ran but some runs failed for good; 2 bad input (nothing was run
and nothing was written to the tracking store); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from orchestrator.errors import StudyError
from orchestrator.secrets import redact_text

EXIT_OK, EXIT_RUNS_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    # MLflow draws a progress bar on stderr for every artifact it downloads (a stored study, a
    # fit document): noise around isoflop's own lines
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        parser = _parser()  # imports that take seconds: Ctrl-C may come here already
    except KeyboardInterrupt:
        print("isoflop: interrupted", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:  # Ctrl-C: the study's state is in its store; no traceback
        running = args.handler in (_cmd_run, _cmd_resume)
        name = "NAME"
        with contextlib.suppress(Exception):  # the study's name, as resume takes it (overrides may rename it)
            overrides = getattr(args, "overrides", None) or ()
            name = _resolve(args.study, overrides).name if overrides else _study_name(args.study)
        print("isoflop: interrupted" + (f"; finished runs are kept: `isoflop resume {name}` continues the study" if running else ""),
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``isoflop validate ... | head``)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more is written
        return EXIT_OK
    except StudyError as exc:
        print(f"isoflop: error: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except LookupError as exc:
        print(f"isoflop: error: {redact_text(str(exc.args[0] if exc.args else exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="isoflop", description="Scaling-law studies on Ray, tracked in MLflow.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a study here or on the cluster it names")
    run.add_argument("study", help="study YAML")
    run.add_argument("overrides", nargs="*", help="key.path=value overrides")
    _address_option(run)
    run.set_defaults(handler=_cmd_run)

    resume = sub.add_parser("resume", help="continue a study; finished runs are not redone")
    resume.add_argument("study", help="study YAML, or the name of a study in the tracking store")
    _store_option(resume)
    _address_option(resume)
    resume.set_defaults(handler=_cmd_resume)

    validate = sub.add_parser("validate", help="check a study and list its runs without running anything")
    validate.add_argument("study")
    validate.add_argument("overrides", nargs="*")
    validate.set_defaults(handler=_cmd_validate)

    status = sub.add_parser("status", help="runs done/running/failed and the current law fits")
    status.add_argument("study", nargs="?", help="study YAML, or the name of a study in the tracking store")
    status.add_argument("--address", help="also list the study's jobs on this Ray cluster (http://HEAD:8265)")
    _store_option(status)
    status.set_defaults(handler=_cmd_status)

    submit = sub.add_parser("submit", help="send a study to a Ray cluster as a job (Jobs API)")
    submit.add_argument("study", help="study YAML inside the working directory")
    submit.add_argument("overrides", nargs="*", help="key.path=value overrides")
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    submit.add_argument("--working-dir", default=".", help="directory shipped to the cluster (default: .)")
    submit.set_defaults(handler=_cmd_submit)

    cancel = sub.add_parser("cancel", help="stop a submitted study's running jobs")
    cancel.add_argument("study", help="study name (or its YAML)")
    cancel.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    cancel.set_defaults(handler=_cmd_cancel)

    export = sub.add_parser("export", help="write the fitted laws, intervals and recipes")
    export.add_argument("study", help="study YAML, or the name of a study in the tracking store")
    _store_option(export)
    export.add_argument("--format", choices=["json", "yaml", "md"], default="json")
    export.add_argument("--output", "-o", help="file to write (default: standard output)")
    export.add_argument("--budgets", help="comma-separated FLOP budgets for N_opt and D_opt")
    export.add_argument(
        "--bootstrap", type=int, metavar="N",
        help="bootstrap resamples for percentile intervals (default: the study's export.bootstrap)",
    )
    export.set_defaults(handler=_cmd_export)

    fit = sub.add_parser("fit", help="fit a law to a CSV table of runs (no study needed)")
    from laws.cli import add_fit_arguments, run_fit

    add_fit_arguments(fit)
    fit.set_defaults(handler=run_fit)

    plan = sub.add_parser("distill-plan", help="distil a student from a teacher or train it supervised, on a FLOP budget")
    from laws.cli import add_distill_plan_arguments, run_distill_plan

    add_distill_plan_arguments(plan)
    plan.set_defaults(handler=run_distill_plan)

    ui = sub.add_parser("ui", help="serve the MLflow UI on the study's store (127.0.0.1)")
    ui.add_argument("study", nargs="?", help="study YAML, or a study's name (default: the local store)")
    _store_option(ui)
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1")
    ui.set_defaults(handler=_cmd_ui)
    return p


def _address_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        help="attach to this running Ray cluster (HEAD:6379, ray://HEAD:10001 or auto) instead of "
        "the study's cluster.address",
    )


def _on_cluster(study, address: str | None):  # noqa: ANN001, ANN202 - StudyConfig
    if address is None:
        return study
    import dataclasses

    return dataclasses.replace(study, cluster=dataclasses.replace(study.cluster, address=address))


def _store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        help="the tracking store to find the study in (an MLflow server, http://HOST:5000, or a "
        "database URI); default: $MLFLOW_TRACKING_URI, else the embedded store under ./.isoflop/. "
        "With a study YAML it replaces the YAML's tracking.uri",
    )


def _resolve(arg: str, overrides: Sequence[str] = (), store: str | None = None):  # noqa: ANN202 - StudyConfig
    from orchestrator.store import resolve_study_arg

    return resolve_study_arg(arg, overrides, store)


def _cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.grid import expand, trained_flops
    from orchestrator.selection import check_selection_budget

    study = _resolve(args.study, args.overrides)
    runs = expand(study)
    check_selection_budget(study, runs)
    total = sum(trained_flops(r) for r in runs)
    print(f"study {study.name!r}: {len(runs)} runs, {total:.3g} training FLOPs in all")
    if study.trainer.kind == "replay":
        from trainers.replay import load_replay_table

        dropped = load_replay_table(study.trainer.replay).dropped
        if dropped:
            print(f"  {dropped} rows of {study.trainer.replay.path} are left out: a loss or an input not a positive, "
                  "finite number, or a loss above trainer.replay.max_loss")
        # a replayed row is its table's inputs (S, h1.., L_T, ...) and group, not a trained shape
        print(f"{'run key':16}  {'N':>9}  {'D':>9}  {'FLOPs':>9}  {'group':12}  inputs")
        for r in runs:
            inputs = " ".join(f"{k}={v:.4g}" for k, v in r.spec.point.inputs) or "-"
            print(f"{r.spec.run_key:16}  {r.plan.n_params:9.3g}  {r.plan.tokens:9.3g}  {r.plan.flops:9.3g}  "
                  f"{r.spec.point.group or '-':12}  {inputs}")
        return EXIT_OK
    print(f"{'run key':16}  {'N':>9}  {'D':>9}  {'FLOPs':>9}  {'shape (L x d, heads)':>20}  {'S':>5}  {'mixture':12}  after")
    for r in runs:
        shape = r.plan.shape
        shape_s = f"{shape.n_layer} x {shape.d_model}, {shape.n_head}" if shape else "-"
        mix = ",".join(f"{w:.3g}" for w in r.spec.point.mixture) or "-"
        # a run that others start from says so; a run that starts from another names it
        after = r.stage if r.stage != "main" else " ".join(f"{use} {key}" for use, key in r.depends_on.items())
        print(
            f"{r.spec.run_key:16}  {r.plan.n_params:9.3g}  {r.plan.tokens:9.3g}  {r.plan.flops:9.3g}  {shape_s:>20}  "
            f"{r.spec.point.sparsity:5.3g}  {mix:12}  {after or '-'}"
        )
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    return _run(_on_cluster(_resolve(args.study, args.overrides), args.address))


def _cmd_resume(args: argparse.Namespace) -> int:
    return _run(_on_cluster(_resolve(args.study, store=args.tracking_uri), args.address))


def _run(study) -> int:  # noqa: ANN001
    from orchestrator.grid import expand
    from orchestrator.live import make_progress
    from orchestrator.study import run_study

    runs = expand(study)  # validated before anything starts
    sel = study.selection
    if sel.mode == "grid":
        print(f"isoflop: study {study.name!r}: {len(runs)} runs", flush=True)
    else:
        from orchestrator.live import grid_flops_of, selection_budget_of

        total, budget = grid_flops_of(runs), selection_budget_of(study, runs)
        print(
            f"isoflop: study {study.name!r}: {sel.mode} selection from {len(runs)} candidate runs, "
            f"budget {budget:.3g} of {total:.3g} FLOPs",
            flush=True,
        )
    progress = make_progress(study, runs)  # live block on a terminal, plain lines otherwise
    start = time.monotonic()
    try:
        outcome = run_study(
            study, on_event=progress, on_fit=progress.on_fit, on_selection=progress.on_selection, runs=runs
        )
    finally:
        progress.close()
    s = outcome.stats
    print(
        f"isoflop: {s.finished} runs finished, {s.skipped} already done, {s.failed} failed "
        f"({time.monotonic() - start:.1f}s)" + (f"; selection stopped: {outcome.stopped}" if outcome.stopped else ""),
        flush=True,
    )
    for law in outcome.laws:
        if law.fit is None:
            print(f"isoflop: law {law.name}: not fitted ({law.error})")
        else:
            print(f"isoflop: {fit_line(law.name, law.fit, law.n_points)}")
    return EXIT_RUNS_FAILED if s.failed else EXIT_OK


def fit_line(name: str, fit, n_runs: int) -> str:  # noqa: ANN001 - laws.LawFit
    """The law's parameters with their 95 % intervals, on one line."""
    from orchestrator.refit import RefitState, fit_summary

    return fit_summary(RefitState(law=name, fit=fit, n_runs=n_runs))


def _cmd_status(args: argparse.Namespace) -> int:
    if args.study is None and args.address is None:
        raise StudyError("study", "name a study, or give --address to list submitted studies")
    name = None
    if args.address is not None:
        from orchestrator.jobs import study_jobs

        name = _study_name(args.study) if args.study else None
        jobs = study_jobs(args.address, name)
        print(f"jobs on {args.address}:" if jobs else f"no isoflop jobs on {args.address}")
        for job in jobs:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time)) if job.start_time else "-"
            print(f"  {job.submission_id}  {job.status:9}  started {started}  {job.message[:100]}")
    if args.study is None:
        return EXIT_OK
    try:
        study = _resolve(args.study, store=args.tracking_uri)
    except LookupError as exc:
        if args.address is None:
            raise
        # its store is the cluster's tracking server, not this machine's
        print(f"isoflop: {redact_text(str(exc.args[0]))}; pass --tracking-uri to read its runs and fits")
        return EXIT_OK
    if args.study.endswith((".yaml", ".yml")) or Path(args.study).is_file():
        # the study as it was run (its overrides included), where its store has it
        from orchestrator.mlflow_tracker import tracking_uri
        from orchestrator.store import load_stored_study

        with contextlib.suppress(LookupError):  # not run yet: the YAML's own grid
            study = load_stored_study(study.name, tracking_uri(study))
    from orchestrator.status import status_lines

    for line in status_lines(study):
        print(line)
    return EXIT_OK


def _study_name(arg: str) -> str:
    if Path(arg).is_file() or arg.endswith((".yaml", ".yml")):
        return _resolve(arg).name
    return arg


def _cmd_submit(args: argparse.Namespace) -> int:
    from orchestrator.grid import expand
    from orchestrator.jobs import cluster_view, submit_study
    from orchestrator.study import plan_resources

    study = _resolve(args.study, args.overrides)
    runs = expand(study)  # rejected here, before anything reaches the cluster
    # every run must fit the cluster it goes to: a job whose runs never start would wait for ever
    view = cluster_view(args.address)
    if view.alive:
        plan_resources(study, runs, view)
    else:
        print(
            f"isoflop: warning: the cluster at {args.address} reports no alive node; the runs' "
            "resources are checked when the job starts",
            file=sys.stderr,
        )
    if study.tracking.uri is None or study.tracking.uri.startswith("sqlite:"):
        print(
            "isoflop: warning: tracking.uri is a local sqlite store: on the cluster it lives in the "
            "job's working directory on the head node; point it at an MLflow server to keep it",
            file=sys.stderr,
        )
    sid = submit_study(study, args.study, args.overrides, address=args.address, working_dir=Path(args.working_dir))
    print(f"isoflop: submitted study {study.name!r} ({len(runs)} runs) as job {sid}")
    print(f"isoflop: follow it with: isoflop status {study.name} --address {args.address}")
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace) -> int:
    from orchestrator.jobs import cancel_study

    name = _study_name(args.study)
    stopped = cancel_study(args.address, name)
    print(f"isoflop: stopped {len(stopped)} job(s) of study {name!r}" + (f": {', '.join(stopped)}" if stopped else ""))
    return EXIT_OK


def _check_writable(output: str) -> None:
    """``--output`` names a file that can be written (its folder is made if missing): checked
    before anything is computed or written, so a bad path leaves nothing behind."""
    path = Path(output)
    if path.is_dir():
        raise StudyError("--output", f"{output!r} is a directory: name the file to write")
    parent = next((p for p in (path.absolute().parent, *path.absolute().parents) if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise StudyError("--output", f"cannot write {output!r}: {parent} is not a writable folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise StudyError("--output", f"cannot write {output!r}: permission denied")


def _cmd_export(args: argparse.Namespace) -> int:
    from laws.bootstrap import MIN_RESAMPLES
    from orchestrator.export import export_by_name, export_with_runs

    study = _resolve(args.study, store=args.tracking_uri)
    budgets = None
    if args.budgets:
        try:
            budgets = [float(b) for b in args.budgets.split(",")]
        except ValueError:
            raise StudyError("--budgets", f"must be comma-separated numbers, got {args.budgets!r}") from None
        if any(not (b > 0 and math.isfinite(b)) for b in budgets):
            raise StudyError("--budgets", f"must be positive, finite FLOP counts, got {args.budgets!r}")
    if args.bootstrap is not None and (args.bootstrap < 0 or 0 < args.bootstrap < MIN_RESAMPLES):
        raise StudyError("--bootstrap", f"must be 0 or at least {MIN_RESAMPLES} resamples, got {args.bootstrap}")
    if args.output:
        _check_writable(args.output)
    document, runs = export_with_runs(study, budgets=budgets, bootstrap=args.bootstrap)
    outside = document["study"].get("outside_grid", 0)
    if outside:
        # a YAML exports with its own grid: runs of an earlier grid, or of overrides given to
        # ``isoflop run``, are not in it, and a JSON document's reader would not notice
        hint = f"; `{export_by_name(study)}` fits the study as it was last run" if args.study != study.name else ""
        print(
            f"isoflop: warning: {outside} stored runs of study {study.name!r} are not in this grid (a grid since "
            f"changed, or overrides given to isoflop run) and were not fitted{hint}",
            file=sys.stderr,
        )
    for law, why in document["study"].get("not_fitted", {}).items():
        print(f"isoflop: warning: law {law!r} is not fitted ({why}); the document has no entry for it", file=sys.stderr)
    if args.format == "md" and args.output:
        from orchestrator.export import fit_histories
        from orchestrator.report import write_report

        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        history = fit_histories(study, [e["name"] for e in document["laws"]])
        written = write_report(document, runs, out, history=history)
        print(f"isoflop: wrote {out} with {len(written) - 1} figures")
        return EXIT_OK
    if args.format == "md":
        from orchestrator.report import markdown_report

        text = markdown_report(document)
    elif args.format == "json":
        text = json.dumps(document, indent=2)
    else:
        import yaml

        text = yaml.safe_dump(document, sort_keys=False)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
        print(f"isoflop: wrote {args.output}")
    else:
        print(text)
    return EXIT_OK


def _cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from orchestrator.mlflow_tracker import default_tracking_uri
    from orchestrator.study import tracking_uri

    experiment = None
    if args.study:
        study = _resolve(args.study, store=args.tracking_uri)
        uri, experiment = tracking_uri(study), study.tracking.experiment or study.name
    else:
        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        # an MLflow server already serves its own UI: nothing to start here
        print(f"isoflop: the study's store is the MLflow server at {redact_text(uri)}: its UI is there")
        return EXIT_OK
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"isoflop: warning: serving the UI on {args.host}, reachable from other machines", file=sys.stderr)
    page = _experiment_page(uri, experiment) if experiment else ""
    host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address in a URL
    # MLflow 3's UI opens in its GenAI view unless told otherwise: the address asks for the
    # model-training view, where runs, their metrics and nested children are shown
    address = f"http://{host}:{args.port}/#/{page}?workflowType=machine_learning"
    print(f"isoflop: MLflow UI at {address} (store {redact_text(uri)})", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    return subprocess.call(cmd)


def _experiment_page(uri: str, experiment: str) -> str:
    """The UI route of a study's experiment (``experiments/ID/runs``), or "" when the store or
    the experiment does not exist yet (the study has not run): nothing is created to find it."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return ""
    from mlflow.tracking import MlflowClient

    try:
        found = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 - only the address's page is at stake; the UI reports the store's own errors
        return ""
    return f"experiments/{found.experiment_id}/runs" if found is not None else ""


if __name__ == "__main__":
    raise SystemExit(main())
