"""``isoflop fit DATA.csv --law NAME|LAW.yaml``: fit a law to a table someone already has.

Prints the exported-law document (:func:`laws.export_document`, the schema ``isoflop export``
writes) as JSON or YAML. ``isoflop distill-plan --student-n N --budget C``: distil or train
supervised (:func:`laws.plan_distillation`), with the published law or an exported one. Exit
codes: 0 success, 2 bad input (the message on stderr names the bad key or value).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``fit`` command's arguments to ``parser``."""
    parser.add_argument("data", help="CSV file with one row per run: the law's inputs and a loss column")
    parser.add_argument("--law", required=True,
                        help="a built-in law name (chinchilla, chinchilla_gamma, ...) or a YAML file defining a custom law")
    parser.add_argument("--columns", default="",
                        help="law name = CSV column, comma-separated, e.g. N='Model Size',C='Training FLOP',loss=loss; "
                             "C gives D = C/(6N)")
    parser.add_argument("--format", choices=["json", "yaml"], default="json")
    parser.add_argument("--output", "-o", help="file to write (default: standard output)")
    parser.add_argument("--budgets", default="", help="comma-separated FLOP budgets for N_opt and D_opt")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="R",
                        help="also give bootstrap intervals from R resamples of the runs (default 0: off)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a built-in law's option, e.g. k=3 for mixture laws (repeatable)")
    parser.add_argument("--where", action="append", default=[], metavar="COLUMN<OP>NUMBER",
                        help="keep only rows meeting the condition, e.g. 'loss<=3.44' (repeatable, all must "
                             "hold; OP one of <, <=, >, >=, ==, !=; COLUMN a CSV column or a --columns name)")


def run_fit(args: argparse.Namespace) -> int:
    """Run ``isoflop fit``; returns the exit code (messages for bad input go to stderr)."""
    import laws

    try:
        law = _law(args.law, args.option)
        columns = _columns(args.columns)
        budgets = _budgets(args.budgets)
        path = Path(args.data)
        if not path.is_file():
            raise ValueError(f"data: no such file {str(path)!r}")
        inputs, loss = laws.load_table(path, columns or None, where=_conditions(args.where))
        inputs = _select_inputs(law, inputs)
        from laws.bootstrap import MIN_RESAMPLES

        if args.bootstrap < 0 or 0 < args.bootstrap < MIN_RESAMPLES:
            raise ValueError(f"--bootstrap: expected 0 or at least {MIN_RESAMPLES} resamples, got {args.bootstrap}")
        fit = laws.fit(law, inputs, loss)
        boot = None
        if args.bootstrap:
            from laws.bootstrap import bootstrap

            boot = [bootstrap(fit, inputs, loss, n_resamples=args.bootstrap, seed=args.seed)]
        document = laws.export_document([fit], budgets=budgets, bootstrap=boot)
    except ValueError as exc:  # includes CustomLawError
        print(f"isoflop fit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    text = _render(document, args.format)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _law(spec: str, options: list[str]):  # noqa: ANN202 - laws.ScalingLaw, imported lazily
    import yaml

    import laws

    if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"--law: no such file {spec!r}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"--law: {spec} is not valid YAML ({exc})") from None
        if not isinstance(loaded, Mapping):
            raise ValueError(f"--law: {spec} must hold a mapping with expression, inputs and params")
        if "expression" not in loaded and "name" in loaded:
            return laws.law_from_spec(loaded)  # a built-in law with options
        return laws.custom_law(loaded)
    opts: dict[str, Any] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option: expected KEY=VALUE, got {item!r}")
        opts[key.strip()] = yaml.safe_load(value)
    try:
        return laws.get_law(spec, **opts)
    except TypeError:
        raise ValueError(f"--option: law {spec!r} does not take options {sorted(opts)}") from None


def _columns(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        value = value.strip().strip("'\"")
        if not sep or not key.strip() or not value:
            raise ValueError(f"--columns: expected NAME=COLUMN, got {item!r}")
        out[key.strip()] = value
    return out


def _conditions(items: list[str]):  # noqa: ANN202 - list[laws.io.Condition], imported lazily
    from laws.io import parse_condition

    out = []
    for item in items:
        try:
            out.append(parse_condition(item))
        except ValueError as exc:
            raise ValueError(f"--where: {exc}") from None
    return out


def _budgets(text: str) -> list[float]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            out.append(float(item))
        except ValueError:
            raise ValueError(f"--budgets: {item!r} is not a number") from None
    return out


def _select_inputs(law, inputs: Mapping[str, Any]) -> dict[str, Any]:  # noqa: ANN001 - laws.ScalingLaw
    missing = [k for k in law.inputs if k not in inputs]
    if missing:
        raise ValueError(
            f"data: law {law.name!r} needs inputs {list(law.inputs)}; columns {missing} were not found "
            f"(the table has {sorted(inputs)}); map them with --columns NAME=COLUMN"
        )
    return {k: inputs[k] for k in law.inputs}


def _render(document: Mapping[str, Any], fmt: str) -> str:
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(json.loads(json.dumps(document)), sort_keys=False)
    return json.dumps(document, indent=2) + "\n"


def add_distill_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``distill-plan`` command's arguments to ``parser``."""
    from laws.distill_plan import SCENARIOS

    parser.add_argument("--student-n", type=float, required=True, metavar="N",
                        help="student size N_S (non-embedding parameters), e.g. 1.82e9")
    parser.add_argument("--budget", type=float, required=True, metavar="C",
                        help="total FLOPs for teacher pretraining, teacher inference and student training")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS), default=None,
                        help="what the teacher costs (repeatable; default: all four scenarios of Busbridge et al. 2025)")
    parser.add_argument("--law", metavar="FILE",
                        help="an exported document or law entry (JSON or YAML, e.g. from isoflop fit/export) holding a "
                             "distillation law; its supervised law gives the teacher and the baseline "
                             "(default: the published coefficients, Busbridge et al. 2025, Table 6)")
    parser.add_argument("--format", choices=["json", "table"], default="json")


def run_distill_plan(args: argparse.Namespace) -> int:
    """Run ``isoflop distill-plan``; returns the exit code (messages for bad input go to stderr)."""
    import laws
    from laws.distill_plan import SCENARIOS

    try:
        law: Any = None
        if args.law:
            law = _load_law_file(args.law)
        scenarios = args.scenario or list(SCENARIOS)
        plans = [laws.plan_distillation(law, N_S=args.student_n, budget=args.budget, scenario=s) for s in scenarios]
    except ValueError as exc:
        print(f"isoflop distill-plan: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    document = {
        "N_S": args.student_n,
        "budget": args.budget,
        "law": args.law or "published (Busbridge et al. 2025, Table 6)",
        "plans": [p.to_dict() for p in plans],
    }
    sys.stdout.write(_plan_table(document) if args.format == "table" else json.dumps(document, indent=2) + "\n")
    return EXIT_OK


def _load_law_file(spec: str) -> Mapping[str, Any]:
    """The exported document or law entry in the ``--law`` file, its shape checked (ValueError
    naming ``--law``, the file and the bad key)."""
    import yaml

    from laws.distill_plan import recorded_range, resolve_distillation

    path = Path(spec)
    if not path.exists():
        raise ValueError(f"--law: no such file {spec!r}")
    if not path.is_file():
        raise ValueError(f"--law: {spec!r} is not a file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--law: cannot read {spec!r} ({exc})") from None
    try:
        loaded = json.loads(text)
    except ValueError:  # not JSON: YAML (JSON is read as JSON first: YAML reads 1e-05 as text)
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"--law: {spec} is neither JSON nor YAML ({exc})") from None
    if not isinstance(loaded, Mapping) or not ("laws" in loaded or "params" in loaded):
        raise ValueError(f"--law: {spec} must hold an exported document (with 'laws') or one law entry (with 'params')")
    try:
        resolve_distillation(loaded)
        recorded_range(loaded)
    except ValueError as exc:
        raise ValueError(f"--law: {spec}: {exc}") from None
    return loaded


def _plan_table(document: Mapping[str, Any]) -> str:
    """The plans as a small fixed-width table, then their warnings."""
    head = (f"{'scenario':<30} {'decision':<10} {'L_student':>9} {'L_superv':>9} {'N_T':>9} {'D_T':>9} {'D_S':>9} "
            f"{'teacher_pre':>11} {'teacher_inf':>11} {'student':>8}")
    lines = [f"student N_S = {document['N_S']:.3g}, budget C = {document['budget']:.3g} FLOPs, law: {document['law']}",
             head, "-" * len(head)]
    warnings = []
    for p in document["plans"]:
        split = p["compute_split"]
        fmt = [f"{v:9.3g}" if v is not None else f"{'-':>9}" for v in (p["N_T"], p["D_T"], p["D_S"])]
        lines.append(
            f"{p['scenario']:<30} {p['decision']:<10} {p['student_loss']:9.4f} {p['supervised_loss']:9.4f} "
            f"{' '.join(fmt)} {split['teacher_pretraining']['share']:11.1%} "
            f"{split['teacher_inference']['share']:11.1%} {split['student']['share']:8.1%}"
        )
        warnings += [f"{p['scenario']}: {w}" for w in p["warnings"]]
    lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m laws.cli DATA.csv --law NAME``)."""
    parser = argparse.ArgumentParser(prog="isoflop fit", description=__doc__.splitlines()[0])
    add_fit_arguments(parser)
    return run_fit(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
