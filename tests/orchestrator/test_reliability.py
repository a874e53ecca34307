"""Failure drills: a driver killed mid-study and resumed, a worker node lost mid-study, trainings
that diverge. Each checks that every run finishes exactly once (or fails for good with its
reason), that nothing is left RUNNING in the store, and what the fits see."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.loading import study_from_dict
from orchestrator.mlflow_tracker import KEY_TAG, PARENT_TAG, ROLE_TAG

pytestmark = pytest.mark.slow

ISOFLOP = str(Path(sys.executable).parent / "isoflop")


def _children(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(exps, filter_string=f"tags.`{ROLE_TAG}` = 'study'")
    assert len(parents) == 1
    return client.search_runs(exps, filter_string=f"tags.`{PARENT_TAG}` = '{parents[0].info.run_id}'")


def _finished_once(children: list, expected: int) -> None:
    finished = Counter(c.data.tags[KEY_TAG] for c in children if c.info.status == "FINISHED")
    assert len(finished) == expected and set(finished.values()) == {1}, finished
    assert not [c for c in children if c.info.status == "RUNNING"], "no run may be left RUNNING"


def _study_yaml(path: Path, name: str, store: Path, sleep_s: float) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "seed": 5,
                "tracking": {"uri": f"sqlite:///{store}"},
                "trainer": {"kind": "simulated", "simulated": {"sleep_s": sleep_s}},
                "grid": {"isoflop": {"budgets": [1e18, 1e19, 1e20], "points_per_budget": 4, "span": 20}},
                "resources": {"max_concurrent": 2},
            }
        )
    )
    return path


def test_killed_driver_resumes_without_redoing_runs_and_fits_the_same_law(tmp_path: Path) -> None:
    store = tmp_path / "a" / "mlflow.db"
    study = _study_yaml(tmp_path / "study.yaml", "drill", store, sleep_s=1.5)
    proc = subprocess.Popen(
        [ISOFLOP, "run", str(study)], cwd=tmp_path, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    uri = f"sqlite:///{store}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            done = [c for c in _children(uri) if c.info.status == "FINISHED"]
        except Exception:  # the store is still being created
            continue
        if len(done) >= 4:
            break
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the study did not get going")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    before = _children(uri)
    finished_before = {c.data.tags[KEY_TAG] for c in before if c.info.status == "FINISHED"}
    assert 4 <= len(finished_before) < 12
    assert any(c.info.status == "RUNNING" for c in before), "a run was in flight when the driver died"

    assert subprocess.run([ISOFLOP, "resume", str(study)], cwd=tmp_path, capture_output=True).returncode == 0
    after = _children(uri)
    _finished_once(after, 12)
    killed = [c for c in after if c.info.status == "KILLED"]
    assert killed and all("driver stopped" in c.data.tags.get("isoflop.failure", "") for c in killed)
    # runs finished before the crash were not redone: their FINISHED run is the original one
    assert {c.info.run_id for c in before if c.info.status == "FINISHED"} <= {c.info.run_id for c in after}

    # the same study, uninterrupted, in another store (in this process, at once: the pace is not
    # part of a run): the same law to the last digit
    from orchestrator.executors import InlineExecutor
    from orchestrator.loading import load_study
    from orchestrator.mlflow_tracker import MlflowTracker
    from orchestrator.study import run_study

    clean = _study_yaml(tmp_path / "clean.yaml", "drill", tmp_path / "b" / "mlflow.db", sleep_s=0.0)
    uninterrupted = load_study(str(clean))
    run_study(uninterrupted, tracker=MlflowTracker(uninterrupted.tracking.uri, "drill"), executor=InlineExecutor(),
              background_refit=False)
    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    for path, out in ((study, out_a), (clean, out_b)):
        assert main(["export", str(path), "-o", str(out)]) == 0
    law_a, law_b = (json.loads(p.read_text())["laws"][0]["params"] for p in (out_a, out_b))
    assert law_a == law_b


def test_losing_a_worker_node_mid_study_loses_no_run(tmp_path: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.study import run_study

    if ray.is_initialized():  # a Ray left by an earlier test of this process
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        store = tmp_path / "mlflow.db"
        study = study_from_dict(
            {
                "name": "node-loss",
                "cluster": {"address": cluster.address},  # the driver attaches to the running cluster
                "tracking": {"uri": f"sqlite:///{store}"},
                "trainer": {"kind": "simulated", "simulated": {"sleep_s": 4.0}},
                "grid": {"N": [1e7, 1e8, 1e9], "D": [1e9, 1e10]},
                "resources": {"max_concurrent": 2, "max_retries": 3},
            }
        )
        events = []

        def kill_node() -> None:
            # both runs of the second wave (4 s each) are placed, one per node, and running (a
            # task still being placed when its node dies is quietly placed elsewhere)
            time.sleep(2.0)
            cluster.remove_node(workers[1], allow_graceful=False)

        def on_event(event) -> None:  # noqa: ANN001
            events.append(event.kind)
            # the second wave is in flight once both slots freed by the first wave are refilled
            if event.kind == "start" and events.count("start") == 4 and "finish" in events:
                threading.Thread(target=kill_node, daemon=True).start()

        outcome = run_study(study, on_event=on_event)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert outcome.stats.finished == 6 and outcome.stats.failed == 0
    assert outcome.stats.attempts_failed >= 1, "the lost node's run failed once and was retried"
    children = _children(f"sqlite:///{store}")
    _finished_once(children, 6)
    failed = [c for c in children if c.info.status == "FAILED"]
    assert failed and all(c.data.tags.get("isoflop.failure") for c in failed)


def test_diverging_trainings_fail_with_their_reason_and_exit_1(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "mlflow.db"
    study = tmp_path / "div.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "diverge",
                "tracking": {"uri": f"sqlite:///{store}"},
                "cluster": {"num_cpus": 2},
                "trainer": {"seq_len": 32, "batch_size": 4, "optim": {"lr": 1.0e6, "grad_clip": 0.0},
                            "data": {"eval_tokens": 512}},
                "grid": {"N": [3e4], "D": [4096, 8192]},
                "resources": {"max_retries": 1},
            }
        )
    )
    import ray

    try:
        assert main(["run", str(study)]) == 1
    finally:
        ray.shutdown()  # the CLI started a local Ray in this process
    out = capsys.readouterr().out
    assert "2 failed" in out and "not fitted" in out
    children = _children(f"sqlite:///{store}")
    assert len(children) == 4 and {c.info.status for c in children} == {"FAILED"}  # 2 runs x 2 attempts
    assert all("iverge" in c.data.tags["isoflop.failure"] for c in children)
