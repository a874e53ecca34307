"""The Python API finds a study where the CLI does: by name in any tracking store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.api import latest_fits, resolve_study, study_runs
from orchestrator.executors import InlineExecutor
from orchestrator.loading import study_from_dict
from orchestrator.mlflow_tracker import MlflowTracker
from orchestrator.study import run_study

NAME = "api-elsewhere"


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished study in a sqlite store at a path of its own (not ``./.isoflop/``)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('custom') / 'stores' / 'team.db'}"
    Path(uri.removeprefix("sqlite:///")).parent.mkdir()
    study = study_from_dict({
        "name": NAME,
        "tracking": {"uri": uri},
        "trainer": {"kind": "simulated"},
        "grid": {"N": [1e6, 1e7, 1e8], "tokens_per_param": [5, 20, 80]},
        "laws": ["chinchilla"],
    })
    run_study(study, tracker=MlflowTracker(uri, NAME), executor=InlineExecutor(), background_refit=False)
    return uri


@pytest.fixture
def elsewhere_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no store of its own, and no store named in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_a_study_is_found_by_name_in_the_store_passed(elsewhere: str, elsewhere_dir: Path) -> None:
    df = study_runs(NAME, tracking_uri=elsewhere)
    assert len(df) == 9 and set(df["status"]) == {"FINISHED"}
    assert list(df["C"]) == sorted(df["C"])
    fits = latest_fits(NAME, tracking_uri=elsewhere)
    assert set(fits) == {"chinchilla"} and fits["chinchilla"].report.n_points == 9
    assert resolve_study(NAME, tracking_uri=elsewhere).tracking.uri == elsewhere
    # nothing was created where the study is not
    assert not (elsewhere_dir / ".isoflop").exists()


def test_a_study_is_found_by_name_in_the_store_of_the_environment(
    elsewhere: str, elsewhere_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(LookupError, match="no tracking store"):
        study_runs(NAME)  # the embedded store here has never been written
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    assert len(study_runs(NAME)) == 9
    assert set(latest_fits(NAME)) == {"chinchilla"}


def test_the_store_passed_replaces_a_yaml_s(elsewhere: str, elsewhere_dir: Path) -> None:
    path = elsewhere_dir / "s.yaml"
    path.write_text(f"name: {NAME}\ntrainer: {{kind: simulated}}\ngrid: {{N: [1e6], D: [1e8]}}\n")
    with pytest.raises(LookupError):
        study_runs(path)  # its tracking.uri: the embedded store here
    assert len(study_runs(path, tracking_uri=elsewhere)) == 9


def test_an_unfitted_law_is_left_out_but_an_unreadable_fit_raises(elsewhere: str, elsewhere_dir: Path) -> None:
    study = resolve_study(NAME, tracking_uri=elsewhere)
    from dataclasses import replace

    from orchestrator.config import LawConfig

    more = replace(study, laws=[*study.laws, LawConfig(family="chinchilla_gamma")])
    assert set(latest_fits(more)) == {"chinchilla"}  # chinchilla_gamma was never fitted: no fit yet

    # a fit that is there but cannot be read is an error, not a law without a fit
    def unreachable(*args: object, **kwargs: object) -> str:
        raise OSError("artifact store unreachable")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MlflowClient, "download_artifacts", unreachable)
        with pytest.raises(OSError, match="unreachable"):
            latest_fits(study)

    client = MlflowClient(tracking_uri=elsewhere)
    tracker = MlflowTracker(elsewhere, NAME)
    parent = tracker.attach(NAME)
    good = json.loads(Path(client.download_artifacts(parent, "fits/chinchilla.json", str(elsewhere_dir))).read_text())
    try:
        client.log_text(parent, "{not json", "fits/chinchilla.json")
        with pytest.raises(json.JSONDecodeError):
            latest_fits(NAME, tracking_uri=elsewhere)
    finally:
        client.log_text(parent, json.dumps(good), "fits/chinchilla.json")


def test_no_progress_bars_on_stderr(
    elsewhere: str, elsewhere_dir: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    # unset, as in a fresh interpreter (the CLI, run in-process by other tests, sets it for good)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    latest_fits(NAME, tracking_uri=elsewhere)
    assert "Downloading artifacts" not in capfd.readouterr().err
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # the caller's setting is kept
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # a value the caller chose stays
    latest_fits(NAME, tracking_uri=elsewhere)
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"
