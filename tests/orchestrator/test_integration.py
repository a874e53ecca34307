"""A small study through a real local Ray and a real sqlite MLflow store."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

import laws
from orchestrator.api import latest_fits, study_runs
from orchestrator.cli import EXIT_BAD_INPUT, main
from orchestrator.errors import StudyError
from orchestrator.export import export_study
from orchestrator.live import duration
from orchestrator.loading import study_from_dict
from orchestrator.mlflow_tracker import PARENT_TAG, ROLE_TAG
from orchestrator.study import run_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """A freshly migrated MLflow database, made once (migrations take seconds) and copied."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    # the store runs in write-ahead-log mode: fold the log into the file before copying the file
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
def store(tmp_path: Path, migrated_db: Path) -> str:
    target = tmp_path / ".isoflop" / "mlflow.db"
    target.parent.mkdir()
    shutil.copy(migrated_db, target)
    return f"sqlite:///{target}"


def _children(client: MlflowClient, parent: str):
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")


def test_simulated_study_is_tracked_nested_deduplicated_and_exported(ray_local, store) -> None:
    study = study_from_dict(
        {
            "name": "integration-sim",
            "tracking": {"uri": store},
            "trainer": {"kind": "simulated"},
            "grid": {"isoflop": {"budgets": [1e18, 1e19, 1e20], "points_per_budget": 5}},
            "export": {"budgets": [1e21, 1e22]},
        }
    )
    outcome = run_study(study)
    assert outcome.stats.finished == 15 and outcome.stats.failed == 0
    client = MlflowClient(tracking_uri=store)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags[ROLE_TAG] == "study"
    assert parent.info.status == "FINISHED"
    assert {"law.chinchilla.E", "law.chinchilla.alpha"} <= set(parent.data.metrics)
    # the UI's description of the study run says what it is and ends with the final fit
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("**Scaling-law study `integration-sim`**: 15 runs")
    assert "Final fit: law chinchilla on 15 runs: E=" in note
    children = _children(client, outcome.parent_run_id)
    assert len(children) == 15
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"final_loss", "flops", "wall_time_s"} <= set(child.data.metrics)
        assert {"law.N", "law.D", "seed", "flop_convention"} <= set(child.data.params)
        # the worker streamed the loss curve into the child run
        history = client.get_metric_history(child.info.run_id, "train_loss")
        assert len(history) >= 2
        # and the host's use while it trained, in the UI's system-metrics section
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(child.data.metrics)
        assert len(client.get_metric_history(child.info.run_id, "system/system_memory_usage_megabytes")) >= 2

    again = run_study(study)
    assert again.stats.skipped == 15 and again.stats.finished == 0
    assert len(_children(client, outcome.parent_run_id)) == 15, "a re-run must not duplicate runs"

    document = export_study(study, bootstrap=40)
    import jsonschema

    jsonschema.validate(json.loads(json.dumps(document)), laws.document_schema())  # the published schema
    assert document["laws"][0]["bootstrap"]["n_resamples"] == 40
    assert document["study"]["finished_runs"] == 15
    assert len(document["runs"]) == 15
    # the exported law loads back and predicts without MLflow or Ray
    (fit,) = laws.load_document(json.loads(json.dumps(document)))
    assert fit.predict(N=1e9, D=2e10) == pytest.approx(document_prediction(document, 1e9, 2e10), rel=1e-12)

    # the parent run carries the figures, the fit documents and interval metrics
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id, "plots")}
    assert {"plots/loss_vs_compute.png", "plots/isoflop_curves.png", "plots/residuals_chinchilla.png"} <= artifacts
    assert {"law.chinchilla.alpha.lo", "law.chinchilla.alpha.hi"} <= set(parent.data.metrics)
    history = client.get_metric_history(outcome.parent_run_id, "law.chinchilla.alpha")
    assert len(history) >= 2 and max(m.step for m in history) == 15

    # the Python API: runs as a DataFrame, the latest fits as objects
    df = study_runs(study)
    assert len(df) == 15 and set(df["status"]) == {"FINISHED"}
    assert {"N", "D", "C", "final_loss", "run_key"} <= set(df.columns)
    fits = latest_fits(study)
    assert set(fits) == {"chinchilla"}
    assert fits["chinchilla"].params == pytest.approx(fit.params, rel=1e-6)


def document_prediction(document: dict, n: float, d: float) -> float:
    p = document["laws"][0]["params"]
    return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]


def test_real_dense_runs_train_through_ray(ray_local, store) -> None:
    study = study_from_dict(
        {
            "name": "integration-dense",
            "tracking": {"uri": store},
            "trainer": {"seq_len": 32, "batch_size": 4, "log_every": 2, "data": {"eval_tokens": 1024}},
            "grid": {"N": [3e4], "D": [8192, 16384]},
        }
    )
    outcome = run_study(study)
    assert outcome.stats.finished == 2
    client = MlflowClient(tracking_uri=store)
    for child in _children(client, outcome.parent_run_id):
        assert child.data.metrics["final_loss"] < 5.6  # better than uniform bytes, log(256) = 5.55
        assert int(child.data.params["n_layer"]) >= 1
        assert len(client.get_metric_history(child.info.run_id, "train_loss")) >= 2


def test_a_run_trains_on_data_parallel_workers_through_ray_train(ray_local, store, tmp_path: Path) -> None:
    from orchestrator.grid import expand
    from trainers import get_trainer
    from trainers.base import NullSink

    study = study_from_dict(
        {
            "name": "integration-ddp",
            "tracking": {"uri": store},
            "trainer": {"seq_len": 32, "batch_size": 4, "log_every": 2, "data": {"eval_tokens": 1024}},
            "grid": {"N": [3e4], "D": [8192]},
            "resources": {"workers_per_run": "2", "checkpoint_dir": str(tmp_path / "ckpt")},
        }
    )
    outcome = run_study(study)
    assert outcome.stats.finished == 1 and outcome.stats.failed == 0
    client = MlflowClient(tracking_uri=store)
    (child,) = _children(client, outcome.parent_run_id)
    assert child.data.tags["isoflop.workers"] == "2"
    assert len(client.get_metric_history(child.info.run_id, "train_loss")) >= 2  # rank 0 logged
    # two workers on half a batch each trained the run one process trains
    (run,) = expand(study)
    alone = get_trainer(run.spec.trainer).train(run.spec, NullSink())
    assert child.data.metrics["final_loss"] == pytest.approx(alone.final_loss, rel=1e-4)


def test_cli_bad_study_exits_2_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: {N: [-1], D: [10]}\n")
    assert main(["run", str(bad)]) == 2
    assert "grid.N[0]" in capsys.readouterr().err
    assert not (tmp_path / ".isoflop").exists()


def test_cli_validate_lists_runs(tmp_path: Path, capsys) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: v\ntrainer: {kind: simulated}\ngrid: {N: [1e6, 1e7], D: [1e8]}\n")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 runs" in out
    # a replayed row is listed with its table's inputs and group (it showed S = 0, no mixture)
    (tmp_path / "t.csv").write_text("N,D,S,h1,h2,family,loss\n1e6,1e8,0.5,0.3,0.7,small,3.0\n1e7,1e9,0.75,0.6,0.4,big,2.6\n")
    path.write_text(f"name: r\ntrainer: {{kind: replay, replay: {{path: '{tmp_path / 't.csv'}', inputs: [S, h1, h2], "
                    "group: family}}\n")
    assert main(["validate", str(path)]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split()[4:] for row in rows] == [["small", "S=0.5", "h1=0.3", "h2=0.7"], ["big", "S=0.75", "h1=0.6", "h2=0.4"]]


def _resolve_study(path: Path):  # noqa: ANN202 - StudyConfig
    from orchestrator.loading import load_study

    return load_study(str(path))


def test_cli_markdown_report_with_figures(ray_local, store, tmp_path: Path, capsys) -> None:
    path = tmp_path / "md.yaml"
    path.write_text(
        f"name: md\ntracking: {{uri: '{store}'}}\ntrainer: {{kind: simulated}}\n"
        "grid: {isoflop: {budgets: [1e18, 1e19], points_per_budget: 4}}\n"
    )
    assert main(["run", str(path)]) == 0
    out = tmp_path / "report" / "md.md"
    assert main(["export", str(path), "--format", "md", "--output", str(out), "--bootstrap", "200"]) == 0
    text = out.read_text()
    assert "## Law `chinchilla`" in text and "| alpha |" in text and "N_opt" in text
    assert "of 200 resamples)" in text  # percentile intervals beside the parametric
    recipe = next(line for line in text.splitlines() if line.startswith("| 1e+") and "; [" in line)
    assert recipe.count("[") == 4  # N_opt and D_opt, each with a parametric and a bootstrap interval
    figures = sorted((tmp_path / "report" / "md_files").glob("*.png"))
    assert len(figures) >= 3 and all(f.stat().st_size > 5000 for f in figures)
    assert all(f"md_files/{f.name}" in text for f in figures)
    # the parameters' trajectories come from every fit logged on the parent run (online refits
    # land at a step each as runs finish, as fast as these runs do, then the final fit)
    from orchestrator.export import fit_histories

    steps = fit_histories(_resolve_study(path), ["chinchilla"])["chinchilla"]
    assert steps and max(steps) == 8
    assert ("md_files/trajectory_chinchilla.png" in text) == (len(steps) >= 2)
    assert main(["export", str(path), "--budgets", "1e20,-3"]) == 2
    assert main(["export", str(path), "--bootstrap", "-1"]) == 2
    capsys.readouterr()
    # an infinite budget, too few resamples for any interval (9 gave every interval null and
    # no warning), an output that is a folder or cannot be written: exit 2 naming the option,
    # with nothing written (a folder as --output left the report's figures beside it)
    assert main(["export", str(path), "--budgets", "1e20,inf"]) == 2
    assert "isoflop: error: --budgets: must be positive, finite FLOP counts" in capsys.readouterr().err
    assert main(["export", str(path), "--bootstrap", "9"]) == 2
    assert "isoflop: error: --bootstrap: must be 0 or at least 10 resamples, got 9" in capsys.readouterr().err
    folder = tmp_path / "a-folder"
    folder.mkdir()
    before = sorted(tmp_path.rglob("*"))
    assert main(["export", str(path), "--format", "md", "--output", str(folder)]) == 2
    assert f"isoflop: error: --output: {str(folder)!r} is a directory" in capsys.readouterr().err
    assert main(["export", str(path), "--output", str(out / "under-a-file.json")]) == 2
    assert "isoflop: error: --output: cannot write" in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before


def test_dependency_stages_and_inputs_survive_the_store(store, tmp_path: Path) -> None:
    """A resumed study reads back from MLflow which runs were teachers and each student's L_T."""
    from orchestrator.grid import expand
    from orchestrator.mlflow_tracker import MlflowTracker
    from orchestrator.scheduler import CheckpointPolicy, Scheduler
    from orchestrator.tracking import STAGE_TAG
    from tests.orchestrator.test_dependencies import FakeTrainingExecutor, _distill_study

    runs = expand(study_from_dict(_distill_study()))
    tracker = MlflowTracker(store, "deps")
    parent = tracker.open_study("deps", "")
    policy = CheckpointPolicy(root=tmp_path / "ckpt")
    live = Scheduler(runs, executor=FakeTrainingExecutor(), tracker=tracker, max_concurrent=2, max_retries=0, checkpoints=policy)
    live.run(timeout=0)
    stored = MlflowTracker(store, "deps")
    stored.attach("deps")
    back = stored.finished_runs()
    assert set(back) == set(live.finished)
    for key, run in live.finished.items():
        assert back[key].stage == run.stage
        assert back[key].inputs == pytest.approx(run.inputs)
    assert {r.stage for r in back.values()} == {"teacher", "main"}
    assert all("L_T" in r.inputs for r in back.values() if r.stage == "main")
    tags = {c.data.tags[STAGE_TAG] for c in _children(MlflowClient(tracking_uri=store), parent)}
    assert tags == {"teacher", "main"}


def test_an_active_study_logs_its_selection_and_status_shows_it(store, capsys) -> None:
    from orchestrator.executors import InlineExecutor
    from orchestrator.mlflow_tracker import MlflowTracker

    raw = {
        "name": "integration-active",
        "tracking": {"uri": store},
        "trainer": {"kind": "simulated", "simulated": {"noise": 0.01}},
        "grid": {"isoflop": {"budgets": [1e17, 1e18, 1e19], "points_per_budget": 6}},
        "selection": {"mode": "active", "budget_fraction": 0.5, "target": {"budget": 1e21}, "initial_runs": 6},
    }
    study = study_from_dict(raw)
    views, started = [], []
    outcome = run_study(
        study,
        tracker=MlflowTracker(store, study.name),
        executor=InlineExecutor(),
        background_refit=False,
        on_event=lambda e: started.append(e.run.spec.run_key) if e.kind == "start" else None,
        on_selection=lambda v: views.append((v, set(started))),
    )
    assert outcome.stats.finished > 6
    planned = [(v, seen) for v, seen in views if v.next_runs]
    assert planned, "the criterion's next choices are shown once it takes over"
    for v, seen in planned:  # what is shown next has not been started yet
        assert not {r.spec.run_key for r in v.next_runs} & seen
    assert views[-1][0].metrics["selection.spent_flops"] <= views[-1][0].metrics["selection.budget_flops"]
    # ... and `isoflop status` reads the same from the store
    path = Path(store.removeprefix("sqlite:///")).parent.parent / "active.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(s for s in out if "selection:" in s)
    assert "FLOPs" in line and "misfit" in line and "cost exponent" in line
    # the same block as the live view: runs by state, FLOPs against the budget, fits with intervals
    done = outcome.stats.finished
    assert any(f"{done} done, 0 failed" in s and "candidates left" in s for s in out), out
    assert any("of budget" in s and "mean run" in s for s in out), out
    fit_line = next(s for s in out if s.strip().startswith("law chinchilla on"))
    assert f"on {done} runs" in fit_line and "[" in fit_line


def test_another_studys_finished_runs_are_found_for_teachers(store) -> None:
    from orchestrator.executors import InlineExecutor
    from orchestrator.grid import expand
    from orchestrator.study import adopted_runs

    donor = study_from_dict(
        {"name": "donor", "tracking": {"uri": store}, "trainer": {"kind": "simulated"}, "grid": {"N": [1e6], "D": [1e8, 2e8]}}
    )
    run_study(donor, executor=InlineExecutor(), background_refit=False)
    student = study_from_dict(
        {
            "name": "student",
            "tracking": {"uri": store},
            "trainer": {"kind": "distill", "seq_len": 32, "batch_size": 4},
            "grid": {"N": [1e4], "D": [4e3], "teachers": {"N": [2e4], "D": [8e3], "from_studies": ["donor"]}},
            "laws": [{"family": "chinchilla", "runs": "teacher"}],
        }
    )
    adopted = adopted_runs(student)
    assert set(adopted) == {r.key for r in expand(donor)}
    assert all(run.final_loss > 0 for run in adopted.values())


@pytest.mark.slow
def test_mixture_laws_of_one_study_are_bootstrapped_jointly_for_the_optimal_mixture() -> None:
    """Two target domains' mixture laws fitted to the same runs: the export resamples the same
    runs for both (one resample digest), and gives the optimal mixture at export.mixture_at with
    parametric and joint-bootstrap intervals that hold the optimum; a law of another kind gets a
    bootstrap of its own."""
    import numpy as np

    from laws.optimal import optimal_mixture
    from orchestrator.export import _bootstraps
    from orchestrator.fitting import LawOutcome, StudyLaw
    from orchestrator.tracking import FinishedRun
    from tests.laws.test_optimal_intervals import AT, DOMAIN_A, DOMAIN_B, mixture_fits

    law, x, losses, fits = mixture_fits(1)
    runs = [
        FinishedRun(run_key=f"r{i:03d}", run_id=str(i), inputs={k: float(v[i]) for k, v in x.items()},
                    final_loss=float((losses[0][i] + losses[1][i]) / 2),
                    metrics={"eval_loss/a": float(losses[0][i]), "eval_loss/b": float(losses[1][i])})
        for i in range(len(x["N"]))
    ]
    chin = laws.get_law("chinchilla")
    chin_fit = laws.fit(chin, {"N": x["N"], "D": x["D"]}, np.array([r.final_loss for r in runs]))
    studied = [
        (StudyLaw(name="mix_a", law=law, loss="eval_loss/a"), LawOutcome(name="mix_a", fit=fits[0], n_points=len(runs))),
        (StudyLaw(name="mix_b", law=law, loss="eval_loss/b"), LawOutcome(name="mix_b", fit=fits[1], n_points=len(runs))),
        (StudyLaw(name="chinchilla", law=chin), LawOutcome(name="chinchilla", fit=chin_fit, n_points=len(runs))),
    ]
    by_key = {r.run_key: r for r in runs}
    ordered = [by_key[k] for k in sorted(by_key)]  # the order StudyLaw.select gives
    assert [r.inputs["N"] for r in ordered] == list(studied[0][0].table(runs)[0]["N"])
    boots, failed = _bootstraps(studied, runs, 20, seed=0)
    assert not failed and all(b is not None for b in boots)
    assert boots[0].resample_digest == boots[1].resample_digest != boots[2].resample_digest
    document = laws.export_document(fits, bootstrap=boots[:2], mixture_at=[AT])
    import jsonschema

    jsonschema.validate(json.loads(json.dumps(document)), laws.document_schema())
    (row,) = document["optimal_mixture"]
    truth = optimal_mixture([laws.LawFit(law="mixture_additive", params=t, objective=0.0, report=fits[0].report,
                                         law_spec=fits[0].law_spec) for t in (DOMAIN_A, DOMAIN_B)], **AT).weights[0]
    assert row["weights_interval"][0][0] < truth < row["weights_interval"][0][1]
    assert row["bootstrap_weights_interval"] is not None, row["warnings"]
    assert row["bootstrap_weights_interval"][0][0] <= row["weights"][0] <= row["bootstrap_weights_interval"][0][1]
    from orchestrator.report import markdown_report

    text = markdown_report(document)
    assert f"## Optimal mixture at N = {AT['N']:.3g}, D = {AT['D']:.3g}" in text and "Weight intervals: [" in text


def test_status_of_a_yaml_shows_the_study_as_it_was_run(store, capsys) -> None:
    """``isoflop status STUDY.yaml`` after a run with overrides: the grid the run had (stored on
    its parent run), not the YAML's own."""
    from orchestrator.executors import InlineExecutor
    from orchestrator.mlflow_tracker import MlflowTracker

    raw = {"name": "status-overrides", "tracking": {"uri": store}, "trainer": {"kind": "simulated"},
           "grid": {"N": [1e6, 1e7, 1e8], "D": [1e8, 1e9]}}
    study = study_from_dict(raw, ["grid.D=[1e8]"])
    run_study(study, tracker=MlflowTracker(store, study.name), executor=InlineExecutor(), background_refit=False)
    path = Path(store.removeprefix("sqlite:///")).parent.parent / "status.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "runs 3/3" in out and "runs 3/6" not in out, out


def test_status_times_the_latest_invocation_and_counts_them(store, capsys) -> None:
    """A resumed study's elapsed time is its latest invocation's (it counted from the first, days
    earlier for a study resumed after a weekend), and the head line says how many there were."""
    import time

    from orchestrator.executors import InlineExecutor
    from orchestrator.mlflow_tracker import MlflowTracker, study_status
    from orchestrator.status import status_lines

    raw = {"name": "resumed-twice", "tracking": {"uri": store}, "trainer": {"kind": "simulated"},
           "grid": {"N": [1e6, 1e7], "D": [1e8]}}
    study = study_from_dict(raw)
    run_study(study, tracker=MlflowTracker(store, study.name), executor=InlineExecutor(), background_refit=False)
    first = study_status(store, study.name, study.name)
    assert first.invocations == 1 and first.elapsed_s == pytest.approx(first.since_first_s)
    assert "invocation" not in status_lines(study)[0]
    time.sleep(1.5)
    again = run_study(study, tracker=MlflowTracker(store, study.name), executor=InlineExecutor(), background_refit=False)
    assert again.stats.skipped == 2
    second = study_status(store, study.name, study.name)
    assert second.invocations == 2 and second.study_status == "FINISHED"
    assert second.since_first_s >= second.elapsed_s + 1.0
    assert status_lines(study)[0].endswith(f"; 2 invocations over {duration(second.since_first_s)}")
    # a third invocation, still running: timed to now, not to the end time the parent run kept
    time.sleep(1.0)
    MlflowTracker(store, study.name).open_study(study.name, "name: resumed-twice\n")
    third = study_status(store, study.name, study.name)
    assert third.study_status == "RUNNING" and third.invocations == 3
    assert 0.0 <= third.elapsed_s < 2.0
    assert third.since_first_s > second.since_first_s
    assert ", the first began " in status_lines(study)[0]


def test_status_tells_a_study_whose_driver_died_from_a_running_one(store, capsys) -> None:
    """A driver killed outright (SIGKILL, out of memory, Ray aborting) leaves its parent run
    RUNNING: status said 'running' with an ETA forever. The driver's heartbeat tells them apart."""
    import time

    from orchestrator.executors import InlineExecutor
    from orchestrator.mlflow_tracker import MlflowTracker
    from orchestrator.status import status_lines
    from orchestrator.tracking import DRIVER_TAG, HEARTBEAT_TAG, SILENT_S

    raw = {"name": "heartbeat", "tracking": {"uri": store}, "trainer": {"kind": "simulated"},
           "grid": {"N": [1e6, 1e7], "D": [1e8, 1e9]}}
    study = study_from_dict(raw)
    t0 = time.time()
    outcome = run_study(study, tracker=MlflowTracker(store, study.name), executor=InlineExecutor(), background_refit=False)
    client = MlflowClient(tracking_uri=store)
    assert t0 - 1 <= float(client.get_run(outcome.parent_run_id).data.tags[HEARTBEAT_TAG]) <= time.time() + 1
    # a driver that reopened the study and reported just now is running
    tracker = MlflowTracker(store, study.name)
    parent = tracker.open_study(study.name, "name: heartbeat\n")
    client.set_tag(parent, HEARTBEAT_TAG, f"{time.time():.0f}")
    assert "heartbeat' (parent run" in status_lines(study)[0] and ", running)" in status_lines(study)[0]
    # a driver on another machine, silent for longer than SILENT_S, has stopped, though its run
    # still says RUNNING
    client.set_tag(parent, DRIVER_TAG, "elsewhere:123")
    client.set_tag(parent, HEARTBEAT_TAG, f"{time.time() - SILENT_S - 100:.0f}")
    lines = status_lines(study)
    assert f"running in the store, but its driver has not reported for {SILENT_S + 100:.0f} s" in lines[0], lines[0]
    assert "`isoflop resume` continues it" in lines[0]
    assert not any("ETA" in line for line in lines), lines
    # one on this host whose process is gone is known to have stopped at once
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    client.set_tag(parent, DRIVER_TAG, f"{socket.gethostname()}:{gone.pid}")
    client.set_tag(parent, HEARTBEAT_TAG, f"{time.time():.0f}")
    assert f"but its driver (process {gone.pid} on this host) is gone" in status_lines(study)[0]
    # ... so it may be run again at once (a driver killed outright, resumed)
    MlflowTracker(store, study.name).open_study(study.name, "name: heartbeat\n")
    # while a live driver elsewhere, which reported lately, is in the way: both would train the
    # same runs, and each take the other's runs in flight for a dead driver's
    client.set_tag(parent, DRIVER_TAG, "elsewhere:123")
    with pytest.raises(StudyError, match=r"study 'heartbeat' is running \(driver elsewhere:123, parent run .*reported \d+ s ago"):
        MlflowTracker(store, study.name).open_study(study.name, "name: heartbeat\n")
    # `isoflop run` says so before it starts anything, and writes nothing
    path = Path(store.removeprefix("sqlite:///")).parent.parent / "heartbeat.yaml"
    path.write_text(yaml.safe_dump(raw))
    stored = client.list_artifacts(parent, "study")
    capsys.readouterr()
    assert main(["run", str(path)]) == EXIT_BAD_INPUT
    assert "isoflop: error: name: study 'heartbeat' is running (driver elsewhere:123" in capsys.readouterr().err
    assert client.list_artifacts(parent, "study") == stored and client.get_run(parent).data.tags[DRIVER_TAG] == "elsewhere:123"
    # as is a live process of this host
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        client.set_tag(parent, DRIVER_TAG, f"{socket.gethostname()}:{alive.pid}")
        with pytest.raises(StudyError, match=f"driver {socket.gethostname()}:{alive.pid}"):
            MlflowTracker(store, study.name).open_study(study.name, "name: heartbeat\n")
    finally:
        alive.kill()
        alive.wait()
    # a study that ended is never in the way, whoever ran it
    client.set_terminated(parent, status="FINISHED")
    client.set_tag(parent, DRIVER_TAG, "elsewhere:123")
    MlflowTracker(store, study.name).open_study(study.name, "name: heartbeat\n")


def test_a_replayed_parquet_table_with_inputs_losses_and_groups(store, tmp_path: Path, capsys) -> None:
    """A replayed table as the replay trainer takes one: Parquet, an input column beyond N and D
    that a custom law fits, a second loss column with a law of its own, and a group column that
    the exported bootstrap resamples whole."""
    import numpy as np
    import pandas as pd

    from orchestrator.executors import InlineExecutor
    from orchestrator.export import export_study
    from orchestrator.mlflow_tracker import MlflowTracker

    table = pd.read_csv(Path(__file__).resolve().parents[1] / "data" / "epoch_chinchilla.csv")
    table = table[table["loss"] <= 3.44].iloc[::6]  # 40 runs
    n = table["Model Size"].to_numpy()
    base = pd.DataFrame({"N": n, "D": table["Training FLOP"].to_numpy() / (6 * n), "loss": table["loss"].to_numpy()})
    # the same runs at Q = 2 lose 0.05 more; a second loss column; six families of model sizes
    rows = pd.concat([base.assign(Q=1.0), base.assign(Q=2.0, loss=base["loss"] + 0.05)], ignore_index=True)
    rows["code"] = 1.1 * rows["loss"]
    rows["family"] = pd.qcut(np.log(rows["N"]), 6, labels=False).map(lambda i: f"size-{i}")
    path = tmp_path / "runs.parquet"
    rows.to_parquet(path)
    raw = {
        "name": "replay-parquet", "tracking": {"uri": store},
        "trainer": {"kind": "replay", "replay": {"path": str(path), "inputs": ["Q"], "losses": ["code"],
                                                 "group": "family", "cost": "6*N*D*Q"}},
        "laws": [
            {"family": "custom", "name": "with_q", "expression": "E + A/N**alpha + B/D**beta + G*(Q - 1)",
             "inputs": ["N", "D", "Q"],
             "params": {"E": [1.5, 2.0], "A": {"log": True, "init": [4.0, 7.0]},
                        "B": {"log": True, "init": [4.0, 7.0]}, "alpha": [0.3], "beta": [0.3], "G": [0.01]}},
            {"family": "chinchilla", "name": "code", "loss": "eval_loss/code"},
        ],
        "export": {"budgets": [1e22]},
    }
    study = study_from_dict(raw)
    outcome = run_study(study, tracker=MlflowTracker(store, study.name), executor=InlineExecutor(), background_refit=False)
    assert outcome.stats.finished == 80 and outcome.stats.failed == 0
    fits = {o.name: o.fit for o in outcome.laws}
    assert None not in fits.values(), [o.error for o in outcome.laws]
    assert fits["with_q"].params["G"] == pytest.approx(0.05, abs=0.005)
    assert fits["code"].report.n_points == 80
    document = export_study(study, bootstrap=20)
    code = next(e for e in document["laws"] if e["name"] == "code")
    assert code["bootstrap"]["n_groups"] == 6  # whole families resampled, not 40 configurations
    # the recipes count C = 6ND; these runs cost 6NDQ: the export says so
    assert any("this study's runs cost 6*N*D*Q" in w for w in code["report"]["warnings"])
    # a law that takes an input, or is fitted to a loss, the table does not give: refused up front
    bad = {**raw, "laws": [{**raw["laws"][0], "inputs": ["N", "D", "P"], "expression": "E + A/N**alpha + B/D**beta + G*P"}]}
    with pytest.raises(StudyError, match=r"laws\[0\]\.inputs: the law takes \['P'\]"):
        study_from_dict(bad)
    with pytest.raises(StudyError, match=r"laws\[0\]\.loss: replayed runs record loss, eval_loss/code, not 'eval_loss/prose'"):
        study_from_dict({**raw, "laws": [{"family": "chinchilla", "loss": "eval_loss/prose"}]})
    # and no grid axis applies to a table's rows (a sparsity axis made each row several runs)
    with pytest.raises(StudyError, match=r"grid\.sparsity: a replay study's runs are the rows"):
        study_from_dict({**raw, "grid": {"sparsity": [0.5]}})


def test_a_replayed_table_edited_since_its_runs_is_refused(store, tmp_path: Path, capsys) -> None:
    """A run key names a row's point, not its loss: resumed after its table was edited, a study
    kept the old losses of its finished runs beside the new ones of its new runs, without a
    word. Refused, naming the table, before anything is written."""
    from orchestrator.executors import InlineExecutor
    from orchestrator.mlflow_tracker import MlflowTracker

    table = tmp_path / "runs.csv"
    original = "N,D,loss,code\n1e6,1e8,3.0,3.3\n1e6,1e9,2.8,3.1\n1e7,1e9,2.6,2.9\n"
    table.write_text(original)
    raw = {"name": "edited", "tracking": {"uri": store},
           "trainer": {"kind": "replay", "replay": {"path": str(table), "losses": ["code"]}}}
    study = study_from_dict(raw)

    def run():  # noqa: ANN202 - StudyOutcome
        return run_study(study, tracker=MlflowTracker(store, study.name), executor=InlineExecutor(), background_refit=False)

    assert run().stats.finished == 3
    client = MlflowClient(tracking_uri=store)
    parent = client.search_runs([client.get_experiment_by_name("edited").experiment_id],
                                filter_string="tags.`isoflop.role` = 'study'")[0].info.run_id
    stored = client.list_artifacts(parent, "study")
    table.write_text(original.replace("2.8,", "3.8,"))
    with pytest.raises(StudyError, match=r"trainer\.replay\.path: 1 finished runs of study 'edited' have other losses in the "
                                         r"table now \(N=1e\+06, D=1e\+09, column 'loss': 2\.8 when it ran, 3\.8 now\)"):
        run()
    table.write_text(original.replace("3.1\n", "4.1\n"))  # a second loss column's edit too
    with pytest.raises(StudyError, match=r"column 'code': 3\.1 when it ran, 4\.1 now"):
        run()
    assert client.list_artifacts(parent, "study") == stored and client.get_run(parent).info.status == "FINISHED"
    # a row added, the others as they were: its run is new, the finished ones stand
    table.write_text(original + "1e7,1e10,2.4,2.7\n")
    again = run()
    assert (again.stats.finished, again.stats.skipped) == (1, 3)
    # four runs do not fit a 5-parameter law: the export says so on stderr, not only in its JSON
    capsys.readouterr()
    assert main(["export", "edited", "--tracking-uri", store, "-o", str(tmp_path / "edited.json")]) == 0
    assert "isoflop: warning: law 'chinchilla' is not fitted (" in capsys.readouterr().err
    # exported by name where the table is not (another machine than the study's): from the
    # store's runs, all 4 of them (it failed: no such file)
    table.rename(tmp_path / "elsewhere.csv")
    assert main(["export", "edited", "--tracking-uri", store, "-o", str(tmp_path / "away.json")]) == 0
    assert json.loads((tmp_path / "away.json").read_text())["study"]["finished_runs"] == 4
    # and its status reads the grid's size and FLOPs its last run recorded (it needed the table)
    capsys.readouterr()
    assert main(["status", "edited", "--tracking-uri", store]) == 0
    shown = capsys.readouterr().out
    assert "runs 4/4" in shown and "finished" in shown.splitlines()[0], shown
    assert client.get_run(parent).data.tags["isoflop.grid.runs"] == "4"
    # a YAML naming a table that is not there is still an error, naming the key
    yaml_path = tmp_path / "edited.yaml"
    yaml_path.write_text(yaml.safe_dump(raw))
    assert main(["export", str(yaml_path)]) == 2
    assert "trainer.replay.path: no such file" in capsys.readouterr().err


def test_runs_of_a_grid_since_shrunk_are_not_counted_or_fitted(store, tmp_path, capsys) -> None:
    """A study rerun on a smaller grid: status counts the runs of the grid it now has (it showed
    '6/4' done), and export fits those runs, as the run's own final fit does, saying how many
    stored runs it left out."""
    from orchestrator.executors import InlineExecutor
    from orchestrator.export import export_with_runs
    from orchestrator.mlflow_tracker import MlflowTracker

    raw = {"name": "shrunk", "tracking": {"uri": store}, "trainer": {"kind": "simulated"},
           "grid": {"N": [1e6, 1e7, 1e8], "D": [1e8, 1e9]}, "laws": ["chinchilla"]}
    big = study_from_dict(raw)
    run_study(big, tracker=MlflowTracker(store, big.name), executor=InlineExecutor(), background_refit=False)
    small = study_from_dict(raw, ["grid.N=[1e7,1e8]"])
    outcome = run_study(small, tracker=MlflowTracker(store, small.name), executor=InlineExecutor(), background_refit=False)
    assert outcome.stats.skipped == 4
    from orchestrator.status import status_lines

    lines = status_lines(small)
    assert any("runs 4/4" in line for line in lines), lines
    assert lines[-1] == "2 stored runs are not in this grid (it changed since they ran): not counted, not fitted"
    document, runs = export_with_runs(small)
    assert len(runs) == 4 and document["study"]["finished_runs"] == 4 and document["study"]["outside_grid"] == 2
    assert {r["N"] for r in document["runs"]} == {r.inputs["N"] for r in runs}
    assert min(r["N"] for r in document["runs"]) > 5e6
    from orchestrator.report import markdown_report

    assert "- finished runs: 4 (2 more in the store, of a grid since changed: not fitted)" in markdown_report(document)
    # the CLI says so, where a reader of the JSON would not look. A YAML exports with its own
    # grid (here N = 1e8 alone: 4 of the 6 stored runs are not in it); by name, the grid it was
    # last run with (the rerun's N = 1e7, 1e8: the 2 runs of N = 1e6 are left out)
    path = tmp_path / "shrunk.yaml"
    path.write_text(yaml.safe_dump({**raw, "grid": {"N": [1e8], "D": [1e8, 1e9]}}))
    capsys.readouterr()
    assert main(["export", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: 4 stored runs of study 'shrunk' are not in this grid" in err, err
    assert f"`isoflop export shrunk --tracking-uri {store}` fits the study as it was last run" in err, err
    assert main(["export", "shrunk", "--tracking-uri", store]) == 0
    err = capsys.readouterr().err
    assert "warning: 2 stored runs of study 'shrunk' are not in this grid" in err and "isoflop export shrunk" not in err
    # a YAML none of whose runs are stored (a pacing option or an override changed every run key)
    path.write_text(yaml.safe_dump({**raw, "grid": {"N": [1e9], "D": [1e8]}}))
    assert main(["export", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no finished runs of its grid to fit yet (6 stored runs belong to another grid" in err, err
    assert f"`isoflop export shrunk --tracking-uri {store}` uses the study as it was last run" in err, err
    # the FLOPs status shows are the grid's runs' (it showed 1009 % of the grid)
    assert any("FLOPs" in line and "(100.0%)" in line for line in lines), lines
