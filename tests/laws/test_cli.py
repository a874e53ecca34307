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
    assert "--bootstrap: expected a number of resamples >= 0, got -3" in capsys.readouterr().err


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
