"""Study loading and validation: every kind of bad input names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import StudyError
from orchestrator.loading import load_study, study_from_dict, to_yaml
from tests.orchestrator.conftest import SIMULATED_STUDY
from trainers.config import TrainerConfig


def test_loads_typed_frozen_config_with_overrides(study_file) -> None:
    study = load_study(study_file(SIMULATED_STUDY), ["trainer.seq_len=64", "seed=9"])
    assert study.name == "sim-small"
    assert study.seed == 9
    assert isinstance(study.trainer, TrainerConfig)
    assert study.trainer.seq_len == 64
    assert study.trainer.kind == "simulated"
    assert study.grid.N == [1.0e6, 1.0e7, 1.0e8]
    with pytest.raises(AttributeError):
        study.seed = 1  # type: ignore[misc]


def test_round_trips_through_yaml(study_file) -> None:
    study = load_study(study_file(SIMULATED_STUDY))
    import yaml

    again = study_from_dict(yaml.safe_load(to_yaml(study)))
    assert again == study


def _base() -> dict:
    return {"name": "s", "trainer": {"kind": "simulated"}, "grid": {"N": [1e6], "D": [1e8]}}


def _with(path: str, value) -> dict:
    raw = _base()
    node = raw
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return raw


BAD_STUDIES = [
    ("unknown key", _with("trainer.seq_lenn", 3), "trainer.seq_lenn"),
    ("unknown top-level key", _with("gird", {}), "gird"),
    ("wrong type", _with("trainer.seq_len", "abc"), "trainer.seq_len"),
    ("bad literal", _with("trainer.model.attention", "cosine"), "trainer.model.attention"),
    ("negative size", _with("grid.N", [1e6, -5]), "grid.N[1]"),
    ("zero tokens", _with("grid.D", [0]), "grid.D[0]"),
    ("empty grid", {"name": "s", "trainer": {"kind": "simulated"}}, "grid"),
    ("N without D", {"name": "s", "trainer": {"kind": "simulated"}, "grid": {"N": [1e6]}}, "grid.D"),
    ("empty budgets", {"name": "s", "grid": {"isoflop": {"budgets": []}}}, "grid.isoflop.budgets"),
    ("negative budget", {"name": "s", "grid": {"isoflop": {"budgets": [-1.0]}}}, "grid.isoflop.budgets[0]"),
    ("non-positive batch", _with("trainer.batch_size", 0), "trainer.batch_size"),
    ("lr negative", _with("trainer.optim.lr", -1.0), "trainer.optim.lr"),
    ("fraction above one", _with("trainer.optim.warmup_frac", 1.5), "trainer.optim.warmup_frac"),
    ("nan value", _with("trainer.optim.lr", float("nan")), "trainer.optim.lr"),
    ("mixture length", _with("grid.mixture", [[0.5, 0.25, 0.25]]), "grid.mixture[0]"),
    ("mixture sum", _with("grid.mixture", [[0.5, 0.6]]), "grid.mixture[0]"),
    ("unknown trainer", _with("trainer.kind", "quantum"), "trainer.kind"),
    ("unknown law", _with("laws", ["chinchila"]), "laws[0].family"),
    ("ema of 1", _with("trainer", {"kind": "simulated", "optim": {"ema": 1.0}}), "trainer.optim.ema"),
    ("no laws", _with("laws", []), "laws"),
    ("bad gpus", _with("resources.gpus_per_run", "lots"), "resources.gpus_per_run"),
    ("negative retries", _with("resources.max_retries", -1), "resources.max_retries"),
    ("empty name", _with("name", " "), "name"),
]


@pytest.mark.parametrize(("label", "raw", "key"), BAD_STUDIES, ids=[b[0] for b in BAD_STUDIES])
def test_bad_study_names_the_key(label: str, raw: dict, key: str) -> None:
    with pytest.raises(StudyError) as info:
        study_from_dict(raw)
    assert info.value.key == key, str(info.value)
    assert str(info.value).startswith(f"{key}:")


def test_missing_name() -> None:
    with pytest.raises(StudyError) as info:
        study_from_dict({"grid": {"N": [1e6], "D": [1e8]}, "trainer": {"kind": "simulated"}})
    assert info.value.key == "name"


def test_unknown_key_suggests_the_near_miss() -> None:
    with pytest.raises(StudyError, match="Did you mean"):
        study_from_dict(_with("trainer.seq_lenn", 3))


def test_bad_override() -> None:
    with pytest.raises(StudyError) as info:
        study_from_dict(_base(), ["trainer.seq_len"])
    assert info.value.key == "trainer.seq_len"
    with pytest.raises(StudyError) as info:
        study_from_dict(_base(), ["trainer.nope=3"])
    assert info.value.key == "trainer.nope"


def test_malformed_yaml_and_non_mapping(study_file) -> None:
    with pytest.raises(StudyError, match="not valid YAML"):
        load_study(study_file("name: [unclosed\n"))
    with pytest.raises(StudyError, match="mapping"):
        load_study(study_file("- a\n- b\n"))
    with pytest.raises(StudyError, match="not found"):
        load_study("/nonexistent/study.yaml")


def test_domains_replace_the_default_pair() -> None:
    raw = _with("trainer.data.domains", {"prose": {"source": "pydoc"}})
    study = study_from_dict(raw)
    assert list(study.trainer.data.domains) == ["prose"]


STUDIES = sorted((Path(__file__).resolve().parents[2] / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_example_study_loads_and_expands(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.fitting import study_laws
    from orchestrator.grid import expand

    monkeypatch.chdir(path.parents[1])  # paths in a study are relative to where isoflop runs
    study = load_study(path)
    runs = expand(study)
    assert runs and len({r.key for r in runs}) == len(runs)
    planned = {r.key for r in runs}
    assert all(dep in planned for r in runs for dep in r.depends_on.values())
    assert [law.name for law in study_laws(study)]
    readme = (path.parents[1] / "README.md").read_text()
    assert path.name in readme, f"the README does not mention studies/{path.name}"


def test_laws_are_bare_family_names_or_entries_also_from_overrides() -> None:
    base = {"name": "s", "trainer": {"kind": "simulated"}, "grid": {"N": [1e6, 1e7], "D": [1e8]}}
    custom = {
        "family": "custom",
        "name": "power",
        "expression": "E + A / N**alpha",
        "inputs": ["N"],
        "params": {"E": [1, 2], "A": {"log": True, "init": [0, 5]}, "alpha": [0.3, 0.6]},
    }
    study = study_from_dict({**base, "laws": ["chinchilla", custom]})
    assert [(c.family, c.name) for c in study.laws] == [("chinchilla", None), ("custom", "power")]
    overridden = study_from_dict(base, ["laws=[chinchilla_gamma,sparsity]"])
    assert [c.family for c in overridden.laws] == ["chinchilla_gamma", "sparsity"]
    with pytest.raises(StudyError) as info:
        study_from_dict({**base, "laws": [{**custom, "expression": "E + __import__('os')"}]})
    assert info.value.key == "laws[0].expression"
    with pytest.raises(StudyError) as info:
        study_from_dict({**base, "laws": [{"family": "chinchilla", "expression": "E"}]})
    assert info.value.key == "laws[0].expression"


def test_a_relative_sqlite_store_is_made_absolute_and_a_password_is_never_echoed(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = {"name": "s", "trainer": {"kind": "simulated"}, "grid": {"N": [1e6, 1e7], "D": [1e8]}}
    study = study_from_dict({**base, "tracking": {"uri": "sqlite:///stores/rel.db"}})
    assert study.tracking.uri == f"sqlite:///{tmp_path / 'stores' / 'rel.db'}"
    assert study_from_dict({**base, "tracking": {"uri": "sqlite:////abs/x.db"}}).tracking.uri == "sqlite:////abs/x.db"
    with pytest.raises(StudyError) as err:
        study_from_dict({**base, "tracking": {"uri": "postgres://mlflow:hunter2@db/mlflow"}})
    assert err.value.key == "tracking.uri" and "hunter2" not in str(err.value)
    assert study_from_dict({**base, "tracking": {"uri": "postgresql+psycopg2://u@db/m"}}).tracking.uri.startswith("postgresql")
