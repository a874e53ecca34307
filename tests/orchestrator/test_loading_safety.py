"""Study loading never lets a study pull in values from elsewhere (``${...}`` interpolation), and a
replay table that is there but cannot be read is a user error naming ``trainer.replay.path``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.errors import StudyError
from orchestrator.loading import load_study, study_from_dict, to_yaml

SECRET = "hunter2-do-not-store"
_SIM = {"name": "s", "trainer": {"kind": "simulated"}, "grid": {"N": [1e6, 1e7], "D": [1e8]}}


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOFLOP_TEST_SECRET", SECRET)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({**_SIM, "name": "x${oc.env:ISOFLOP_TEST_SECRET}"}, "name"),
        ({**_SIM, "tracking": {"experiment": "${oc.env:ISOFLOP_TEST_SECRET}"}}, "tracking.experiment"),
        ({**_SIM, "name": "x${seed}"}, "name"),  # a plain reference to another key is refused too
        ({**_SIM, "grid": {"N": [1e6, "${oc.env:ISOFLOP_TEST_SECRET,1}"], "D": [1e8]}}, "grid.N[1]"),
        ({**_SIM, "laws": [{"family": "chinchilla", "name": "${oc.env:ISOFLOP_TEST_SECRET}"}]}, "laws[0].name"),
        ({**_SIM, "trainer": {"kind": "simulated", "data": {"domains": {"${oc.env:ISOFLOP_TEST_SECRET}": {}}}}},
         "trainer.data.domains.${oc.env:ISOFLOP_TEST_SECRET}"),
        ({**_SIM, "name": "x\\${oc.env:ISOFLOP_TEST_SECRET}"}, "name"),  # escaped: stored unescaped
    ],
    ids=["env in name", "env in nested key", "reference", "in a list", "in a law entry", "in a mapping key", "escaped"],
)
def test_interpolation_in_the_yaml_is_refused_naming_the_key(raw: dict, key: str, tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert info.value.key == key, str(info.value)
    assert "interpolation" in info.value.message and SECRET not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("name=x${oc.env:ISOFLOP_TEST_SECRET}", "name"),
        ("tracking.uri=${oc.env:ISOFLOP_TEST_SECRET}", "tracking.uri"),
        ("grid.N=[1e6,'${oc.env:ISOFLOP_TEST_SECRET}']", "grid.N"),  # the override's key
        ("grid.N=[1e6,${oc.env:ISOFLOP_TEST_SECRET}]", "grid.N"),  # not even valid YAML
        ("tracking.uri=${oops", "tracking.uri"),  # not even valid interpolation
        ("name=x\\${oc.env:ISOFLOP_TEST_SECRET}", "name"),
    ],
)
def test_interpolation_in_an_override_is_refused_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(StudyError) as info:
        study_from_dict(_SIM, [override])
    assert info.value.key == key, str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("override", ["grid.N=[1e6,", "name={a: [}"])
def test_an_override_value_yaml_cannot_parse_names_its_key(override: str) -> None:
    key = override.partition("=")[0]
    with pytest.raises(StudyError) as info:
        study_from_dict(_SIM, ["seed=4", override])
    assert info.value.key == key and "not a valid value" in info.value.message, str(info.value)


def test_a_literal_dollar_is_an_ordinary_character(tmp_path: Path) -> None:
    raw = {**_SIM, "name": "budget$5", "tracking": {"experiment": "$ISOFLOP_TEST_SECRET {not} $(this)"}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    study = load_study(path, ["tracking.uri=sqlite:////srv/$HOME/x.db"])
    assert study.name == "budget$5"
    assert study.tracking.experiment == "$ISOFLOP_TEST_SECRET {not} $(this)"
    assert study.tracking.uri == "sqlite:////srv/$HOME/x.db"
    assert SECRET not in to_yaml(study)
    assert study_from_dict(yaml.safe_load(to_yaml(study))) == study  # the stored study reads back the same


def _replay(path: Path | str) -> dict:
    return {"name": "r", "trainer": {"kind": "replay", "replay": {"path": str(path)}}}


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\xff\xfe\x00N\x00,\x00D\x00\n", "not a text table"),
        (b"", "no data rows"),  # the table reader names the file; the error names the key
        (b"N,D,loss\n", "no data rows"),
    ],
    ids=["undecodable", "empty", "header only"],
)
def test_replay_table_that_cannot_be_used_names_the_path_key(content: bytes, needle: str, tmp_path: Path) -> None:
    table = tmp_path / "runs.csv"
    table.write_bytes(content)
    with pytest.raises(StudyError) as info:
        study_from_dict(_replay(table))
    assert info.value.key == "trainer.replay.path" and needle in info.value.message, str(info.value)


def test_replay_path_that_is_a_directory_or_unreadable_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StudyError) as info:
        study_from_dict(_replay(tmp_path))
    assert info.value.key == "trainer.replay.path" and "directory" in info.value.message
    import laws.io

    table = tmp_path / "runs.csv"
    table.write_text("N,D,loss\n1e6,1e8,3.0\n")

    def failing(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise OSError(5, "Input/output error", str(path))

    with monkeypatch.context() as m:
        m.setattr(laws.io, "read_rows", failing)  # root reads a chmod-000 file: fail the reader itself
        with pytest.raises(StudyError) as info:
            study_from_dict(_replay(table))
    assert info.value.key == "trainer.replay.path" and "Input/output error" in info.value.message
    assert study_from_dict(_replay(table)).trainer.replay.path == str(table)  # the same file, readable, loads


def test_replicates_of_a_replayed_point_need_as_many_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Three replicates of a point with one row were three runs with one loss: refused; and
    validate says how many rows of the table are left out (they vanished without a word)."""
    from orchestrator.cli import main

    table = tmp_path / "runs.csv"
    table.write_text("N,D,loss\n1e6,1e8,3.0\n1e6,1e8,3.1\n1e7,1e8,2.9\n1e7,1e9,nan\n1e8,1e9,-1\n")
    assert len(study_from_dict({**_replay(table), "grid": {"replicates": 1}}).trainer.replay.path) > 0
    with pytest.raises(StudyError) as info:
        study_from_dict({**_replay(table), "grid": {"replicates": 2}})
    assert info.value.key == "grid.replicates" and "N=1e+07, D=1e+08 has 1" in info.value.message
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_replay(table)))
    assert main(["validate", str(path)]) == 0
    assert f"2 rows of {table} are left out" in capsys.readouterr().out


def test_a_replayed_tables_inputs_decide_its_laws(tmp_path: Path) -> None:
    """A mixture law takes as many weights as the table gives (it fitted h1 and h2 of three and
    dropped h3); a sparsity law needs the table's S (it ran every row, then could not fit); a
    column mapping nothing is read through is refused (a typo was ignored)."""
    from orchestrator.fitting import study_laws

    table = tmp_path / "mix.csv"
    table.write_text("N,D,h1,h2,h3,loss\n1e6,1e8,0.6,0.2,0.2,3.0\n1e6,1e8,0.2,0.6,0.2,3.1\n")
    raw = {"name": "m", "trainer": {"kind": "replay", "replay": {"path": str(table), "inputs": ["h1", "h2", "h3"]}},
           "laws": ["mixture_additive"]}
    (law,) = study_laws(study_from_dict(raw))
    assert list(law.law.inputs) == ["N", "D", "h1", "h2", "h3"]
    with pytest.raises(StudyError) as info:
        study_from_dict({**raw, "laws": ["sparsity"]})
    assert info.value.key == "laws[0]" and "['S']" in info.value.message
    with pytest.raises(StudyError) as info:
        study_from_dict({**raw, "trainer": {"kind": "replay", "replay": {"path": str(table), "inputs": ["h1", "h2", "h3"],
                                                                          "columns": {"S": "sparsity"}}}})
    assert info.value.key == "trainer.replay.columns.S"
