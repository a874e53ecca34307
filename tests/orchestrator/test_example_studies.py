"""The example studies that need no training, end to end through the ``isoflop`` command line.

They run in one fresh working directory (its own embedded store under ``./.isoflop/``), in this
process so that they share one local Ray (starting it is most of the time on two cores), as a
user runs them; then ``status`` and every ``export`` format read one of them back by name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import laws
from orchestrator.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "studies"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh working directory holding what the studies read relative to it (replay's table),
    with no tracking store named in the environment and plain progress lines."""
    import ray

    started_here = not ray.is_initialized()
    root = tmp_path_factory.mktemp("examples")
    (root / "tests" / "data").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "data" / "epoch_chinchilla.csv", root / "tests" / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("ISOFLOP_PLAIN", "1")
        yield root
    if started_here and ray.is_initialized():  # the CLI started it: leave the next module a clean slate
        ray.shutdown()


@pytest.fixture(scope="module")
def replayed(workdir: Path) -> Path:
    """``replay.yaml`` run once (an active selection over the Chinchilla replication's table)."""
    assert main(["run", str(STUDIES / "replay.yaml")]) == 0
    return workdir


@pytest.mark.parametrize("name", ["simulated", "active", "active_space"])
def test_simulated_example_study_runs_end_to_end(name: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(STUDIES / f"{name}.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"isoflop: study {name!r}: " in out and " 0 failed" in out
    assert "law chinchilla on" in out  # fitted, with its intervals
    if name != "simulated":  # a budgeted selection stops when its budget is spent
        assert "selection stopped: budget spent" in out
    assert main(["status", name]) == 0
    assert f"study {name!r} (parent run " in capsys.readouterr().out


def _without_timings(doc: Any) -> Any:
    """The document less the fits' wall-clock seconds, which differ from one export to the next."""
    if isinstance(doc, dict):
        return {k: _without_timings(v) for k, v in doc.items() if k != "seconds"}
    if isinstance(doc, list):
        return [_without_timings(v) for v in doc]
    return doc


def test_replay_is_read_back_by_status_and_every_export(replayed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["status", "replay"]) == 0
    status = capsys.readouterr().out
    assert status.startswith("study 'replay' (parent run ") and "finished)" in status.splitlines()[0]
    assert "0 failed" in status and "law chinchilla on" in status

    assert main(["export", "replay", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    jsonschema.validate(document, laws.document_schema())
    assert document["study"]["name"] == "replay" and [e["name"] for e in document["laws"]] == ["chinchilla"]
    assert len(document["runs"]) == document["study"]["finished_runs"] > 0

    assert main(["export", "replay", "--format", "yaml"]) == 0
    from_yaml = yaml.safe_load(capsys.readouterr().out)
    jsonschema.validate(from_yaml, laws.document_schema())
    assert _without_timings(from_yaml) == _without_timings(document)

    report = replayed / "out" / "replay.md"
    assert main(["export", "replay", "--format", "md", "-o", str(report)]) == 0
    assert f"wrote {report}" in capsys.readouterr().out
    text = report.read_text()
    assert text.startswith("# Scaling-law study `replay`") and "## Law `chinchilla`" in text
    figures = sorted((replayed / "out" / "replay_files").glob("*.png"))
    assert figures and all(f"replay_files/{f.name}" in text for f in figures)
