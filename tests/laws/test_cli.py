"""``isoflop fit`` (laws.cli): the exported-document schema on stdout, clear errors with code 2."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import yaml

import laws
from laws.cli import add_fit_arguments, run_fit
from tests.laws.conftest import DATA

COLUMNS = "N=Model Size,C=Training FLOP,loss=loss"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="isoflop fit")
    add_fit_arguments(parser)
    return run_fit(parser.parse_args(argv))


def test_fit_prints_the_export_schema(capsys):
    assert run([str(DATA), "--law", "chinchilla", "--columns", COLUMNS, "--budgets", "5.76e23"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (fit,) = laws.load_document(doc)
    # all 245 rows (the replication's 240 drop 5): a fit, with intervals and a recipe
    assert fit.report.n_points == 245
    entry = doc["laws"][0]
    assert entry["intervals"] and entry["compute_optimal"][0]["C"] == 5.76e23


def test_bootstrap_option(capsys):
    argv = [str(DATA), "--law", "chinchilla", "--columns", COLUMNS, "--budgets", "1e23", "--bootstrap", "50"]
    assert run(argv) == 0
    entry = json.loads(capsys.readouterr().out)["laws"][0]["bootstrap"]
    assert entry["n_resamples"] == 50 and entry["seed"] == 0
    assert set(entry["intervals"]) == {"E", "A", "B", "alpha", "beta"}
    assert run([*argv[:-1], "-3"]) == 2
    assert "--bootstrap: expected 0 or at least 10 resamples, got -3" in capsys.readouterr().err
    assert run([*argv[:-1], "4"]) == 2
    assert "--bootstrap: expected 0 or at least 10 resamples, got 4" in capsys.readouterr().err


def test_custom_law_yaml_and_yaml_output(tmp_path, capsys):
    law_file = tmp_path / "law.yaml"
    law_file.write_text(yaml.safe_dump({
        "name": "two_terms",
        "expression": "E + A / N**alpha",
        "inputs": ["N"],
        "params": {"E": {"log": True, "init": [0.0, 0.5]}, "A": {"log": True, "init": [0.0, 5.0]},
                   "alpha": [0.0, 0.5]},
    }))
    out = tmp_path / "fit.yaml"
    assert run([str(DATA), "--law", str(law_file), "--columns", "N=Model Size,loss=loss", "--format", "yaml",
                "--output", str(out)]) == 0
    assert capsys.readouterr().out == ""
    (fit,) = laws.load_document(yaml.safe_load(out.read_text()))
    assert fit.law == "two_terms" and set(fit.params) == {"E", "A", "alpha"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--law", "chinchila"], "unknown law 'chinchila'; valid laws: chinchilla"),
        (["--law", "chinchilla"], r"columns \['N', 'D'\] were not found"),
        (["--law", "chinchilla", "--columns", "N=Size"], r"columns \['Size'\] not found"),
        (["--law", "chinchilla", "--columns", "N"], "--columns: expected NAME=COLUMN, got 'N'"),
        (["--law", "chinchilla", "--columns", COLUMNS, "--budgets", "1e23,lots"], "--budgets: 'lots' is not a number"),
        (["--law", "missing.yaml"], "--law: no such file 'missing.yaml'"),
        (["--law", "mixture_additive", "--option", "k=1"], "k >= 2"),
        (["--law", "chinchilla", "--option", "k=3"], "does not take options"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(argv, message, capsys):
    assert run([str(DATA), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("isoflop fit: error:")
    assert re.search(message, err), err


def test_missing_data_file(capsys):
    assert run(["nowhere.csv", "--law", "chinchilla"]) == 2
    assert "data: no such file 'nowhere.csv'" in capsys.readouterr().err


def test_unsafe_custom_law_is_rejected(tmp_path, capsys):
    law_file = tmp_path / "evil.yaml"
    law_file.write_text(yaml.safe_dump({"expression": "__import__('os').getcwd()", "inputs": ["N"],
                                        "params": {"A": [1.0]}}))
    assert run([str(DATA), "--law", str(law_file), "--columns", "N=Model Size,loss=loss"]) == 2
    assert "only the functions" in capsys.readouterr().err


def test_where_reproduces_the_replication_fit(capsys, replication_fit):
    """``--where loss<=3.44`` keeps the replication's 240 of the 245 rows: the same fit."""
    assert run([str(DATA), "--law", "chinchilla", "--columns", COLUMNS, "--where", "loss<=3.44"]) == 0
    (fit,) = laws.load_document(json.loads(capsys.readouterr().out))
    assert fit.report.n_points == 240
    assert abs(fit.objective - 0.00101827402) <= 1e-9
    assert fit.objective == pytest.approx(replication_fit.objective, rel=1e-9)
    for k, v in replication_fit.params.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-6), k
    # repeatable, all conditions hold; CSV names with spaces and law names both work
    argv = [str(DATA), "--law", "chinchilla", "--columns", COLUMNS, "--where", "loss <= 3.44",
            "--where", "Model Size>1e8", "--where", "N<1e12"]
    assert run(argv) == 0
    (fit,) = laws.load_document(json.loads(capsys.readouterr().out))
    assert 0 < fit.report.n_points < 240


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("lost<=3.44", r"names column 'lost', which the file does not have"),
        ("loss=>3.44", r"--where: 'loss=>3.44': unknown operator '=>'"),
        ("loss=3.44", r"--where: 'loss=3.44': unknown operator '='"),
        ("loss<<3.44", r"--where: 'loss<<3.44': unknown operator"),
        ("loss 3.44", r"--where: 'loss 3.44' is not COLUMN OP NUMBER"),
        ("loss<=low", r"--where: 'loss<=low': 'low' is not a number"),
        ("loss<=__import__('os')", r"is not a number"),
        ("loss<0", r"no row meets loss<0"),
    ],
)
def test_bad_where_exits_2_naming_it(where, message, capsys):
    assert run([str(DATA), "--law", "chinchilla", "--columns", COLUMNS, "--where", where]) == 2
    err = capsys.readouterr().err
    assert err.startswith("isoflop fit: error:") and re.search(message, err), err


# -- isoflop distill-plan -------------------------------------------------------------------------
def plan_cli(argv: list[str]) -> int:
    from orchestrator.cli import main

    return main(["distill-plan", *argv])


def test_distill_plan_prints_decision_allocation_and_compute_split(capsys):
    assert plan_cli(["--student-n", "546e6", "--budget", "1e21"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["law"].startswith("published") and doc["N_S"] == 546e6 and doc["budget"] == 1e21
    plans = {p["scenario"]: p for p in doc["plans"]}
    assert list(plans) == list(laws.DISTILLATION_SCENARIOS)
    # Busbridge et al. 2025: an existing teacher helps at this budget; one that must be trained does not
    assert plans["best_case"]["decision"] == "distil"
    assert plans["teacher_pretraining_inference"]["decision"] == "supervised"
    ref = laws.plan_distillation(N_S=546e6, budget=1e21, scenario="teacher_pretraining_inference")
    assert plans["teacher_pretraining_inference"] == json.loads(json.dumps(ref.to_dict()))
    split = plans["teacher_pretraining_inference"]["compute_split"]
    assert sum(v["flops"] for v in split.values()) == pytest.approx(1e21, rel=1e-9)
    assert all(v["share"] > 0.05 for v in split.values())


def test_distill_plan_with_an_exported_law_and_a_table(tmp_path, capsys):
    from laws.distillation import BUSBRIDGE_DISTILLATION_PARAMS, Distillation

    params = {**BUSBRIDGE_DISTILLATION_PARAMS, "d1": 1.2}  # a law other than the published one
    report = laws.FitReport(n_points=50, n_starts=1, n_best=1, best_tol=1e-6, grad_norm=0.0, converged=True)
    fit = laws.LawFit(law="distillation", params=params, objective=0.0, report=report,
                      law_spec=Distillation().spec())
    path = tmp_path / "distillation.json"
    path.write_text(json.dumps(laws.export_document([fit])))
    assert plan_cli(["--student-n", "1.82e9", "--budget", "1e19", "--law", str(path), "--scenario", "best_case"]) == 0
    (p,) = json.loads(capsys.readouterr().out)["plans"]
    # a law of the user's without the runs it was fitted to: not checked against the paper's runs
    assert p["warnings"][0].startswith("the range of the runs this distillation law was fitted to is unknown")
    assert p["student_loss"] == pytest.approx(
        laws.plan_distillation(fit, N_S=1.82e9, budget=1e19, scenario="best_case").student_loss, rel=1e-12)
    assert p["student_loss"] != pytest.approx(
        laws.plan_distillation(N_S=1.82e9, budget=1e19, scenario="best_case").student_loss, rel=1e-6)
    argv = ["--student-n", "1.82e9", "--budget", "1e19", "--scenario", "teacher_pretraining_inference",
            "--scenario", "best_case", "--format", "table"]
    assert plan_cli(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("teacher_pretraining_inference ", "best_case "))]
    assert [r[0] for r in rows] == ["teacher_pretraining_inference", "best_case"]
    split = laws.plan_distillation(N_S=1.82e9, budget=1e19, scenario="teacher_pretraining_inference").compute_split
    assert rows[0][1] == "distil"
    assert rows[0][-3:] == [f"{split[k]['share']:.1%}" for k in ("teacher_pretraining", "teacher_inference", "student")]
    # extrapolated: the table says so
    assert "warning: teacher_pretraining_inference: the supervised baseline trains on 0.5 tokens per parameter" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--student-n", "-1", "--budget", "1e21"], "N_S and budget must be positive"),
    (["--student-n", "1e9", "--budget", "1e21", "--law", "missing.json"], "--law: no such file 'missing.json'"),
])
def test_distill_plan_bad_input_exits_2(argv, message, capsys):
    assert plan_cli(argv) == 2
    assert message in capsys.readouterr().err


def test_distill_plan_needs_a_distillation_law(tmp_path, capsys, replication_fit):
    path = tmp_path / "chinchilla.json"
    path.write_text(json.dumps(laws.export_document([replication_fit])))
    assert plan_cli(["--student-n", "1e9", "--budget", "1e21", "--law", str(path)]) == 2
    assert "the document holds no distillation law (it has ['chinchilla'])" in capsys.readouterr().err


def own_law_document() -> dict:
    """An exported study document with a distillation law fitted to students of 1M-100M parameters."""
    from laws.chinchilla import BUSBRIDGE_SUPERVISED_PARAMS
    from laws.distillation import BUSBRIDGE_DISTILLATION_PARAMS, Distillation

    report = laws.FitReport(n_points=3, n_starts=1, n_best=1, best_tol=1e-6, grad_norm=0.0, converged=True)
    fit = laws.LawFit(law="distillation", params={**BUSBRIDGE_DISTILLATION_PARAMS, "d1": 1.2}, objective=0.0,
                      report=report, law_spec=Distillation(supervised=BUSBRIDGE_SUPERVISED_PARAMS).spec())
    document = laws.export_document([fit])
    document["runs"] = [{"run_key": f"s{i}", "run_id": f"s{i}", "N": n, "D": 20 * n, "C": 120 * n * n, "L_T": 3.5,
                         "loss": 4.0} for i, n in enumerate([1e6, 1e7, 1e8])]
    return document


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_distill_plan_checks_a_users_law_against_its_own_runs(tmp_path, capsys, fmt):
    path = tmp_path / f"study.{fmt}"
    document = own_law_document()
    path.write_text(json.dumps(document) if fmt == "json" else yaml.safe_dump(document))
    base = ["--budget", "1e17", "--law", str(path), "--scenario", "best_case"]
    assert plan_cli(["--student-n", "1e7", *base]) == 0
    (p,) = json.loads(capsys.readouterr().out)["plans"]
    assert not [w for w in p["warnings"] if "N_S" in w or "unknown" in w]  # 10M: inside its runs, not the paper's
    assert plan_cli(["--student-n", "1e9", *base]) == 0
    (p,) = json.loads(capsys.readouterr().out)["plans"]
    assert ("the student size N_S = 1B is outside the range of students the law was fitted to (1M to 100M "
            "parameters)") in p["warnings"]


def test_distill_plan_reports_an_optimum_on_a_search_bound(capsys):
    argv = ["--student-n", "1e5", "--budget", "1e15", "--scenario", "teacher_pretraining_inference", "--format", "table"]
    assert plan_cli(argv) == 0
    assert ("warning: teacher_pretraining_inference: the teacher size N_T = 10M is at the lower bound of its search "
            "range (10M to 10T parameters): a smaller teacher may be best") in capsys.readouterr().out


DISTILLATION_ENTRY = "law: distillation\nlaw_spec: {name: distillation}\n"


@pytest.mark.parametrize(("text", "message"), [
    ("laws:\n  - law: distillation\n    params: {A: null}\n",
     "laws[0].params.A: expected a number, got None"),
    ("laws: [chinchilla]\n", "laws[0]: expected a law entry (a mapping with law, params and law_spec), got 'chinchilla'"),
    ("laws: 3\n", "laws: expected a list of law entries, got 3"),
    (DISTILLATION_ENTRY + "params: [1, 2]\n", "params: expected a mapping of parameter names to numbers, got [1, 2]"),
    (DISTILLATION_ENTRY + "params: {A: 1.0}\n", "params: missing distillation parameters ['B', 'alpha'"),
    (DISTILLATION_ENTRY + "params: {A: many}\n", "params.A: expected a number, got 'many'"),
    ("laws:\n  - {law: distillation, params: {A: 1}, law_spec: distillation}\n",
     "laws[0].law_spec: expected a mapping with the law's name, got 'distillation'"),
])
def test_distill_plan_malformed_law_file_exits_2(tmp_path, capsys, text, message):
    path = tmp_path / "law.yaml"
    path.write_text(text)
    assert plan_cli(["--student-n", "1e9", "--budget", "1e21", "--law", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"isoflop distill-plan: error: --law: {path}: {message}")
    assert len(err.splitlines()) == 1  # one line, no traceback


def test_distill_plan_unreadable_law_file_exits_2(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    path = tmp_path / "law.json"
    path.write_text("{}")

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    assert plan_cli(["--student-n", "1e9", "--budget", "1e21", "--law", str(path)]) == 2
    assert f"isoflop distill-plan: error: --law: cannot read {str(path)!r} ([Errno 13] Permission denied" in (
        capsys.readouterr().err)
    # a folder, and bytes that are not text
    assert plan_cli(["--student-n", "1e9", "--budget", "1e21", "--law", str(tmp_path)]) == 2
    assert f"--law: {str(tmp_path)!r} is not a file" in capsys.readouterr().err
    monkeypatch.undo()
    path.write_bytes(b"\xff\xfe\x00")
    assert plan_cli(["--student-n", "1e9", "--budget", "1e21", "--law", str(path)]) == 2
    assert f"--law: cannot read {str(path)!r} ('utf-8' codec can't decode" in capsys.readouterr().err


def test_a_parquet_table_fits_as_its_csv_does(tmp_path, capsys):
    import pandas as pd

    path = tmp_path / "runs.parquet"
    pd.read_csv(DATA).to_parquet(path)
    fitted = []
    for data in (DATA, path):
        assert run([str(data), "--law", "chinchilla", "--columns", COLUMNS, "--where", "loss<=3.44"]) == 0
        fitted.append(json.loads(capsys.readouterr().out)["laws"][0]["params"])
    assert fitted[0] == pytest.approx(fitted[1], rel=1e-9)
    (tmp_path / "bad.parquet").write_text("N,D,loss\n1,2,3\n")  # a CSV under a Parquet name
    assert run([str(tmp_path / "bad.parquet"), "--law", "chinchilla"]) == 2
    assert "not a readable Parquet file" in capsys.readouterr().err
