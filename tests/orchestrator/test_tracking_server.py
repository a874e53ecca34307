"""Tracking at cluster scale: a real ``mlflow server`` backed by a real PostgreSQL on 127.0.0.1,
concurrent Ray workers logging to it over HTTP, and a server outage in the middle of a study."""

from __future__ import annotations

import glob
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.loading import study_from_dict
from orchestrator.mlflow_tracker import KEY_TAG, PARENT_TAG
from orchestrator.study import run_study

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory) -> str:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (run as the postgres user when we are root)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        why = "PostgreSQL is not installed (Debian: apt-get install postgresql)"
        if os.environ.get("ISOFLOP_REQUIRE_SERVICES"):  # CI installs it: a skip would hide a failure
            pytest.fail(why)
        pytest.skip(why)
    root = tmp_path_factory.mktemp("pg")
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        os.chmod(root.parent, 0o755)
        for parent in root.parents:
            if str(parent) == "/":
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o055)
    data, port = root / "data", _free_port()
    subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "isoflop"], check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", options, "-w", "-l", str(root / "log"), "start"],
                   check=True, capture_output=True)
    subprocess.run([*prefix, _pg_bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "isoflop", "mlflow"],
                   check=True, capture_output=True)
    yield f"postgresql://isoflop@127.0.0.1:{port}/mlflow"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 over a backend store; can be killed and restarted."""

    def __init__(self, backend: str, artifacts: Path) -> None:
        self.backend, self.artifacts, self.port = backend, artifacts, _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend,
             "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "2"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.kill()
        pytest.fail("mlflow server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def server(postgres: str, tmp_path_factory):
    srv = MlflowServer(postgres, tmp_path_factory.mktemp("artifacts"))
    srv.start()
    yield srv
    srv.kill()


def _children(uri: str, parent: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")


def _study(name: str, uri: str, sleep_s: float = 0.0, flush_every_s: float = 5.0):  # noqa: ANN202 - StudyConfig
    return study_from_dict(
        {
            "name": name,
            "tracking": {"uri": uri, "flush_every_s": flush_every_s},
            "trainer": {"kind": "simulated", "simulated": {"sleep_s": sleep_s}},
            "grid": {"isoflop": {"budgets": [1e18, 1e19, 1e20], "points_per_budget": 4, "span": 20}},
            "resources": {"max_concurrent": 2},
        }
    )


def test_concurrent_workers_log_to_a_postgres_backed_server(server: MlflowServer, ray_local) -> None:
    """The workers themselves write their curves over HTTP while they train (runs of 1 s that
    flush every 0.2 s): a poller sees RUNNING children that already have a loss curve."""
    client = MlflowClient(tracking_uri=server.uri)
    seen_live: list[str] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            exp = client.get_experiment_by_name("pg-study")
            if exp is not None:
                for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'"):
                    if PARENT_TAG in run.data.tags and "train_loss" in run.data.metrics:
                        seen_live.append(run.info.run_id)
            time.sleep(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        outcome = run_study(_study("pg-study", server.uri, sleep_s=1.0, flush_every_s=0.2))
    finally:
        done.set()
        poller.join()
    assert seen_live, "no worker wrote to the server while its run was training"
    assert outcome.stats.finished == 12
    children = _children(server.uri, outcome.parent_run_id)
    assert len(children) == 12 and {c.info.status for c in children} == {"FINISHED"}
    assert all(len(client.get_metric_history(c.info.run_id, "train_loss")) >= 2 for c in children[:3])
    parent = client.get_run(outcome.parent_run_id)
    assert "law.chinchilla.alpha" in parent.data.metrics
    assert {a.path for a in client.list_artifacts(outcome.parent_run_id, "plots")} >= {"plots/loss_vs_compute.png"}
    # re-running against the server skips everything
    again = run_study(_study("pg-study", server.uri, sleep_s=1.0, flush_every_s=0.2))
    assert again.stats.skipped == 12 and again.stats.finished == 0


def test_a_brief_server_outage_loses_nothing(server: MlflowServer, ray_local) -> None:
    events: list[str] = []
    window: list[float] = []  # when the server went down and came back (ms since the epoch)

    def back_up() -> None:
        time.sleep(4.0)
        server.start()
        window.append(time.time() * 1000)

    def on_event(event) -> None:  # noqa: ANN001
        events.append(event.kind)
        if event.kind == "finish" and events.count("finish") == 3:
            # down now, on the driver's thread: its next writes (the next run's creation) meet it
            server.kill()
            window.append(time.time() * 1000)
            threading.Thread(target=back_up, daemon=True).start()

    outcome = run_study(_study("pg-outage", server.uri, sleep_s=1.0), on_event=on_event)
    assert outcome.stats.finished == 12 and outcome.stats.failed == 0 and outcome.stats.attempts_failed == 0
    children = _children(server.uri, outcome.parent_run_id)
    assert {c.info.status for c in children} == {"FINISHED"}, "no attempt failed or was duplicated"
    # the driver went on creating runs while the server was down: those writes were retried, not lost
    # (MLflow stamps a run in whole milliseconds: a creation in the very millisecond of the outage
    # reads as floor(down))
    down, up = math.floor(window[0]), window[1]
    assert any(down <= c.info.start_time <= up for c in children), (window, sorted(c.info.start_time for c in children))
    finished = Counter(c.data.tags[KEY_TAG] for c in children if c.info.status == "FINISHED")
    assert len(finished) == 12 and set(finished.values()) == {1}
    assert not [c for c in children if c.info.status == "RUNNING"]
    client = MlflowClient(tracking_uri=server.uri)
    for child in children:
        if child.info.status == "FINISHED":
            assert "final_loss" in child.data.metrics
            assert len(client.get_metric_history(child.info.run_id, "train_loss")) == 10
    parent = client.get_run(outcome.parent_run_id)  # the study's fits and figures are all there too
    assert parent.info.status == "FINISHED" and "law.chinchilla.alpha" in parent.data.metrics
    assert "plots/loss_vs_compute.png" in {a.path for a in client.list_artifacts(outcome.parent_run_id, "plots")}


def test_credentials_in_the_tracking_uri_are_never_written_or_printed(
    server: MlflowServer, ray_local, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A tracking URI with a password: the study runs against it, and the password is in no
    param, tag, artifact, export or line of output (status and export find it by name too)."""
    secret = "s3cret-Pa55word"
    uri = server.uri.replace("http://", f"http://isoflop:{secret}@")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "secret.yaml"
    path.write_text(
        f"name: pg-secret\ntracking: {{uri: '{uri}'}}\ntrainer: {{kind: simulated}}\n"
        "grid: {N: [1e6, 1e7, 1e8], D: [1e8, 1e9]}\n"
    )
    from orchestrator.cli import main

    assert main(["run", str(path)]) == 0
    assert main(["status", "pg-secret", "--tracking-uri", uri]) == 0
    assert main(["export", "pg-secret", "--tracking-uri", uri, "--format", "json"]) == 0
    assert main(["ui", "pg-secret", "--tracking-uri", uri]) == 0  # a server serves its own UI
    out = capsys.readouterr()
    assert "6 done" in out.out and '"params"' in out.out and "isoflop:***@" in out.out
    assert secret not in out.out + out.err

    client = MlflowClient(tracking_uri=server.uri)
    exp = client.get_experiment_by_name("pg-secret")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 7
    for run in runs:
        assert secret not in repr(run.data.params) + repr(run.data.tags)
    parent = next(r for r in runs if PARENT_TAG not in r.data.tags)
    stored = [a.path for a in client.list_artifacts(parent.info.run_id, "study")]
    text = Path(client.download_artifacts(parent.info.run_id, stored[-1], str(tmp_path))).read_text()
    assert "tracking" in text and secret not in text and "isoflop:***@" in text
