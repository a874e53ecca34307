"""The MLflow UI that ``isoflop ui`` serves, looked at through a real headless Chromium.

A small simulated study is written to a real sqlite MLflow store (parent run, nested child runs,
law fits and plots), ``isoflop ui STUDY.yaml --port P`` serves it, and Chromium renders the React
app: the experiment's runs page must show the study's parent run, the parent run's page must list
every child run and the fitted law's metrics, and the parent run's plot must be served as a PNG.
A screenshot of the parent run's page is kept (printed path; copied to ``$ISOFLOP_TEST_ARTIFACTS``
when that is set). Skipped when no Chromium is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STUDY_YAML = """\
name: ui-browser
seed: 0
tracking: {{uri: "{uri}"}}
trainer: {{kind: simulated}}
grid: {{N: [1.0e6, 1.0e7, 1.0e8, 1.0e9], tokens_per_param: [5, 40]}}
laws: [chinchilla]
"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass(frozen=True)
class ServedStudy:
    """A finished study in a sqlite store and the ``isoflop ui`` server in front of it."""

    url: str
    experiment_id: str
    parent_run_id: str
    parent_name: str
    child_names: list[str]
    workdir: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 10.0) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - a local test server
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"isoflop ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if _get(f"{url}/health", timeout=2.0)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(
        f"isoflop ui did not answer at {url} within {timeout_s:.0f}s:\n{log.read_text()[-3000:]}"
    )


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and everything it started (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    with contextlib.suppress(
        ProcessLookupError
    ):  # workers the server forked may outlive it briefly
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedStudy]:
    if _chromium() is None:
        why = "no Chromium on this machine (Debian: apt-get install chromium); the UI is not rendered"
        if os.environ.get("ISOFLOP_REQUIRE_SERVICES"):  # CI installs it: a skip would hide a failure
            pytest.fail(why)
        pytest.skip(why)
    from mlflow.tracking import MlflowClient

    from orchestrator.executors import InlineExecutor
    from orchestrator.loading import load_study
    from orchestrator.study import run_study

    workdir = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{workdir / 'store' / 'mlflow.db'}"
    (workdir / "store").mkdir()
    study_path = workdir / "study.yaml"
    study_path.write_text(STUDY_YAML.format(uri=uri))
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments()  # create the database here: the server must not migrate it concurrently

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    script = Path(sys.executable).with_name("isoflop")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator.cli"]
    log = workdir / "ui.log"
    # MLflow's background job runner (GenAI jobs) is not needed to browse runs: left off, the
    # server starts faster on a small machine.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "ui", str(study_path), "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: the server and its workers stop together
        )
    try:
        # the study runs while the server starts
        outcome = run_study(load_study(str(study_path)), executor=InlineExecutor())
        assert outcome.stats.finished == 8 and outcome.stats.failed == 0
        parent = client.get_run(outcome.parent_run_id)
        experiment_id = parent.info.experiment_id
        children = client.search_runs(
            [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        assert len(children) == 8
        _wait_until_up(url, proc, log)
        yield ServedStudy(
            url=url,
            experiment_id=experiment_id,
            parent_run_id=parent.info.run_id,
            parent_name=parent.info.run_name,
            child_names=sorted(c.info.run_name for c in children),
            workdir=workdir,
        )
    finally:
        _stop(proc)


def _browser(args: list[str], workdir: Path, timeout_s: float = 60.0) -> bytes:
    """Run headless Chromium once (a fresh profile) and return its standard output."""
    profile = workdir / f"profile-{time.monotonic_ns()}"
    cmd = [
        _chromium() or "chromium",
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    assert done.returncode == 0, (
        f"chromium failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}"
    )
    return done.stdout


def _visible_text(dom: str) -> str:
    """The page's text as rendered (scripts and styles dropped, whitespace collapsed)."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    text = re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"\s+", " ", html.unescape(text))


#: the model-training view of MLflow 3's UI (it opens in its GenAI view otherwise)
VIEW = "?workflowType=machine_learning"


def test_ui_prints_the_study_page_in_the_model_training_view(served: ServedStudy) -> None:
    """``isoflop ui STUDY`` prints the address of the study's experiment in the model-training
    view, and that page shows runs, not MLflow's GenAI evaluation pages."""
    printed = re.search(r"MLflow UI at (\S+)", (served.workdir / "ui.log").read_text())
    assert printed, (served.workdir / "ui.log").read_text()[-2000:]
    page = f"{served.url}/#/experiments/{served.experiment_id}/runs{VIEW}"
    assert printed.group(1) == page
    text = _visible_text(_browser(["--dump-dom", page], served.workdir).decode())
    assert "Model registry" in text and "Evaluation runs" not in text, text[:1500]


def test_runs_page_shows_the_study_parent_run(served: ServedStudy) -> None:
    page = f"{served.url}/#/experiments/{served.experiment_id}/runs{VIEW}"
    text = _visible_text(_browser(["--dump-dom", page], served.workdir).decode())
    assert "Run Name" in text, f"the runs table did not render: {text[:500]}"
    assert served.parent_name in text
    # the parent and its 8 nested children
    assert re.search(r"\b9 matching runs\b", text), text[:2000]


def test_parent_run_page_lists_child_runs_and_fit(served: ServedStudy) -> None:
    page = f"{served.url}/#/experiments/{served.experiment_id}/runs/{served.parent_run_id}{VIEW}"
    text = _visible_text(_browser(["--dump-dom", page], served.workdir).decode())
    assert served.parent_name in text
    assert "Child runs" in text, text[:2000]
    missing = [name for name in served.child_names if name not in text]
    assert not missing, f"child runs not shown on the parent's page: {missing}"
    for metric in ("law.chinchilla.alpha", "law.chinchilla.alpha.lo", "law.chinchilla.alpha.hi"):
        assert metric in text

    shot = served.workdir / "mlflow-ui-parent-run.png"
    _browser([f"--screenshot={shot}", "--window-size=1400,900", page], served.workdir)
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1400, 900)
    from PIL import Image

    with Image.open(shot) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, "the screenshot is (almost) blank"
    _keep(shot)


def _keep(shot: Path) -> None:
    """Copy a screenshot to ``$ISOFLOP_TEST_ARTIFACTS`` (CI keeps that folder) and say where."""
    kept = os.environ.get("ISOFLOP_TEST_ARTIFACTS")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(kept) / shot.name)
    print(f"screenshot of the MLflow UI: {shot}" + (f" (copied to {kept})" if kept else ""))


def test_the_ui_renders_the_parent_runs_plot(served: ServedStudy) -> None:
    """The artifact view of a plot: the UI fetched the PNG and shows it (an <img> of the file,
    its data in a blob: URL the app made from the bytes it received)."""
    page = (
        f"{served.url}/#/experiments/{served.experiment_id}/runs/{served.parent_run_id}"
        f"/artifacts/plots/loss_vs_compute.png{VIEW}"
    )
    dom = _browser(["--dump-dom", page], served.workdir).decode()
    images = re.findall(r"<img\b[^>]*>", dom)
    shown = [tag for tag in images if 'alt="plots/loss_vs_compute.png"' in tag]
    assert shown, f"no image of the plot on its artifact page: {images[:5]}"
    assert re.search(r'src="blob:http://127\.0\.0\.1:\d+/[0-9a-f-]+"', shown[0]), shown[0]
    shot = served.workdir / "mlflow-ui-plot.png"
    _browser([f"--screenshot={shot}", "--window-size=1400,900", page], served.workdir)
    assert shot.read_bytes().startswith(PNG_MAGIC)
    _keep(shot)


def test_parent_run_plot_is_served_as_png(served: ServedStudy) -> None:
    query = urllib.parse.urlencode({"run_id": served.parent_run_id, "path": "plots"})
    status, _, body = _get(f"{served.url}/ajax-api/2.0/mlflow/artifacts/list?{query}")
    assert status == 200
    assert "plots/loss_vs_compute.png" in body.decode()

    query = urllib.parse.urlencode(
        {"path": "plots/loss_vs_compute.png", "run_uuid": served.parent_run_id}
    )
    status, ctype, body = _get(f"{served.url}/get-artifact?{query}")
    assert status == 200
    assert ctype.startswith("image/png")
    assert body.startswith(PNG_MAGIC) and len(body) > 1000
