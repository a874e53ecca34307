"""``isoflop submit``/``status``/``cancel`` against a real Ray head with its Jobs API."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.jobs import study_jobs

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head with its dashboard on 127.0.0.1 and token authentication, stopped with its own
    processes only."""
    bin_dir = str(Path(sys.executable).parent)
    # token authentication on, whatever the machine's defaults (the token is ~/.ray/auth_token)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    port, dash = _free_port(), _free_port()
    temp = tmp_path_factory.mktemp("ray")
    proc = subprocess.Popen(
        [
            f"{bin_dir}/ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
            f"--temp-dir={temp}", "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 90
    while True:
        try:
            study_jobs(address)
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("the Ray head did not come up")
            time.sleep(1)
    yield address
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)  # `ray start --block` often ignores SIGTERM while its children exit
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _wait(address: str, study: str, states: set[str], timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = study_jobs(address, study)
        if jobs and jobs[-1].status in states:
            return jobs[-1].status
        time.sleep(1)
    pytest.fail(f"job of {study} did not reach {states}: {study_jobs(address, study)}")


def test_submit_runs_the_study_on_the_cluster(ray_head: str, tmp_path: Path, capsys) -> None:
    store = tmp_path / "store" / "mlflow.db"
    study = tmp_path / "sub.yaml"
    study.write_text(
        f"name: submitted\ntracking: {{uri: 'sqlite:///{store}'}}\ntrainer: {{kind: simulated}}\n"
        "grid: {N: [1e6, 1e7, 1e8], D: [1e8, 1e9]}\n"
    )
    assert main(["submit", str(study), "--address", ray_head, "--working-dir", str(tmp_path)]) == 0
    assert "submitted study 'submitted'" in capsys.readouterr().out
    assert _wait(ray_head, "submitted", {"SUCCEEDED", "FAILED", "STOPPED"}) == "SUCCEEDED"
    assert main(["status", str(study), "--address", ray_head]) == 0
    out = capsys.readouterr().out
    assert "SUCCEEDED" in out and "6 done" in out


def test_cancel_stops_a_running_study(ray_head: str, tmp_path: Path, capsys) -> None:
    study = tmp_path / "long.yaml"
    store = tmp_path / "mlflow.db"
    # real (tiny) trainings: long enough to be running when cancelled
    study.write_text(
        f"name: long\ntracking: {{uri: 'sqlite:///{store}'}}\n"
        "trainer: {seq_len: 32, batch_size: 4, data: {eval_tokens: 1024}}\n"
        "grid: {N: [3e4], D: [2e6, 3e6, 4e6]}\n"
    )
    assert main(["submit", str(study), "--address", ray_head, "--working-dir", str(tmp_path)]) == 0
    _wait(ray_head, "long", {"RUNNING"})
    assert main(["cancel", "long", "--address", ray_head]) == 0
    assert "stopped 1 job" in capsys.readouterr().out
    assert _wait(ray_head, "long", {"STOPPED", "FAILED", "SUCCEEDED"}) == "STOPPED"


def test_the_cluster_view_reports_the_heads_resources(ray_head: str) -> None:
    from orchestrator.jobs import cluster_view

    view = cluster_view(ray_head)
    assert len(view.nodes()) == 1
    assert view.cluster_resources()["CPU"] == 2  # the head was started with --num-cpus=2
    assert view.cluster_resources().get("GPU", 0) == 0
    assert view.cluster_resources()["memory"] > 0


@pytest.mark.parametrize(
    ("override", "key"),
    [("resources.gpus_per_run=1", "resources.gpus_per_run"), ("resources.cpus_per_run=4", "resources.cpus_per_run")],
)
def test_submit_refuses_runs_the_cluster_cannot_hold(
    ray_head: str, tmp_path: Path, capsys, override: str, key: str
) -> None:
    """A study whose runs need more than any node of the cluster has is refused at submit,
    naming the key, and no job is sent (it would wait for ever on the cluster)."""
    name = f"infeasible-{key.rsplit('.', 1)[-1]}"
    study = tmp_path / "big.yaml"
    study.write_text(f"name: {name}\ntrainer: {{kind: simulated}}\ngrid: {{N: [1e6], D: [1e8]}}\n")
    code = main(["submit", str(study), override, "--address", ray_head, "--working-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and key in err, err
    assert study_jobs(ray_head, name) == []


def test_submit_rejects_a_bad_study_before_contacting_the_cluster(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\ngrid: {N: [1e6], D: [0]}\n")
    assert main(["submit", str(bad), "--address", "http://127.0.0.1:1"]) == 2
    assert "grid.D[0]" in capsys.readouterr().err


def test_submit_to_an_unreachable_cluster_exits_2(tmp_path: Path, capsys) -> None:
    ok = tmp_path / "ok.yaml"
    ok.write_text("name: ok\ntrainer: {kind: simulated}\ngrid: {N: [1e6], D: [1e8]}\n")
    assert main(["submit", str(ok), "--address", "http://127.0.0.1:1", "--working-dir", str(tmp_path)]) == 2
    assert "--address" in capsys.readouterr().err


def test_a_refused_token_is_bad_input_naming_the_address(ray_head: str) -> None:
    """A client with the wrong token gets one clear line and exit 2, and the token is not in it."""
    token = "wrong-token-0123456789abcdef0123456789abcdef"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_AUTH_TOKEN_PATH": "/nonexistent"}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "status", "--address", ray_head],
        env=env, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )
    assert proc.returncode == 2, proc.stderr
    assert "--address" in proc.stderr and "refused" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert token not in proc.stderr + proc.stdout


def test_a_submission_waits_for_the_clusters_job_agent(tmp_path: Path, monkeypatch) -> None:
    """A cluster just started, or busy, answers 'No available agent to submit job, please try
    again later': the submission tries again (it failed the study's submission at once)."""
    import orchestrator.jobs as jobs
    from orchestrator.loading import study_from_dict

    calls = []

    class Client:
        def submit_job(self, **kwargs):  # noqa: ANN003, ANN202
            calls.append(kwargs["submission_id"])
            if len(calls) < 3:
                raise RuntimeError("Request failed with status code 500: No available agent to submit job, please try again later..")
            return kwargs["submission_id"]

    monkeypatch.setattr(jobs, "_client", lambda address: Client())
    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    (tmp_path / "s.yaml").write_text("name: s\n")
    study = study_from_dict({"name": "s", "trainer": {"kind": "simulated"}, "grid": {"N": [1e6], "D": [1e8]}})
    sid = jobs.submit_study(study, str(tmp_path / "s.yaml"), [], address="http://127.0.0.1:1", working_dir=tmp_path)
    assert calls == [sid] * 3
    # any other refusal is not retried
    calls.clear()
    monkeypatch.setattr(Client, "submit_job", lambda self, **kw: calls.append(1) or (_ for _ in ()).throw(RuntimeError("bad entrypoint")))
    with pytest.raises(RuntimeError, match="bad entrypoint"):
        jobs.submit_study(study, str(tmp_path / "s.yaml"), [], address="http://127.0.0.1:1", working_dir=tmp_path)
    assert calls == [1]
