"""Studies as Ray jobs: ``isoflop submit`` sends a study to a cluster's Jobs API, ``isoflop
status --address`` and ``isoflop cancel`` find it again by its study name.

The job ships the working directory (the project and its studies) as its runtime environment
and runs ``python -m orchestrator.cli run STUDY`` on the head node, where the driver attaches to
the cluster it runs in. Ray jobs run once; a job that died is continued with ``isoflop submit``
again (or ``isoflop resume``): finished runs are never redone.

Token authentication (on by default in Ray 2.60): the Jobs client sends the cluster's token when
``RAY_AUTH_MODE=token`` is set, which is done here when a token is at hand: ``RAY_AUTH_TOKEN``
in the environment, or a token file (``RAY_AUTH_TOKEN_PATH``, default ``~/.ray/auth_token``). A
cluster that refuses the token (or wants one and gets none) is a clear error naming
``--address`` (exit 2), not a traceback. Tokens are never written into params, tags or logs.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import StudyConfig
from orchestrator.errors import StudyError

STUDY_META = "isoflop.study"
#: never shipped to the cluster: environments, local stores, caches, build output
EXCLUDES = [".venv/", ".isoflop/", ".git/", "**/__pycache__/", "*.egg-info/", "benchmarks/out/", ".pytest_cache/", ".ruff_cache/"]


@dataclass(frozen=True, kw_only=True)
class StudyJob:
    """A submitted study."""

    submission_id: str
    study: str
    status: str
    message: str
    start_time: float | None


def _client(address: str) -> Any:
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"
    from ray.job_submission import JobSubmissionClient

    with _refusals(address):
        try:
            return JobSubmissionClient(address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise StudyError("--address", f"cannot reach the Ray Jobs API at {address!r}: {exc}") from None


@contextmanager
def _refusals(address: str) -> Iterator[None]:
    """A cluster that refuses this client's token is bad input naming ``--address``."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        # Ray's message says which (no token, or a wrong one) and never holds the token itself
        reason = exc.message.splitlines()[0] if exc.message else "authentication failed"
        raise StudyError(
            "--address",
            f"the Ray cluster at {address!r} refused this client: {reason} (set RAY_AUTH_TOKEN, or "
            "RAY_AUTH_TOKEN_PATH to a file holding the cluster's token)",
        ) from None


@dataclass(frozen=True)
class ClusterView:
    """A remote cluster's nodes as the Ray state API reports them, shaped like ``ray.nodes()``
    and ``ray.cluster_resources()`` so that a study's feasibility is checked there before it is
    submitted (:func:`orchestrator.study.plan_resources`)."""

    alive: tuple[dict[str, float], ...]

    def nodes(self) -> list[dict[str, Any]]:
        return [{"Alive": True, "Resources": dict(resources)} for resources in self.alive]

    def cluster_resources(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for resources in self.alive:
            for name, amount in resources.items():
                total[name] = total.get(name, 0.0) + amount
        return total


def cluster_view(address: str) -> ClusterView:
    """The alive nodes of the cluster whose dashboard is at ``address``."""
    _client(address)  # reachability and the token, with their clear errors
    from ray.util.state import list_nodes

    with _refusals(address):
        try:
            nodes = list_nodes(address=address, limit=10_000, raise_on_missing_output=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise StudyError("--address", f"cannot list the nodes of the Ray cluster at {address!r}: {exc}") from None
    alive = []
    for node in nodes:
        state = node.get("state") if isinstance(node, dict) else getattr(node, "state", None)
        resources = node.get("resources_total") if isinstance(node, dict) else getattr(node, "resources_total", None)
        if state == "ALIVE" and resources:
            alive.append({str(k): float(v) for k, v in resources.items()})
    return ClusterView(alive=tuple(alive))


#: how long a submission waits for the cluster's job agent ("No available agent to submit job")
AGENT_WAIT_S = 60.0


def submission_id(study: str, now: float | None = None) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", study)
    return f"isoflop-{safe}-{int(now if now is not None else time.time())}"


def submit_study(
    study: StudyConfig, study_path: str, overrides: Sequence[str], *, address: str, working_dir: Path
) -> str:
    """Submit ``study`` (already validated) as a Ray job; returns the submission id."""
    path = Path(study_path).resolve()
    try:
        relative = path.relative_to(working_dir.resolve())
    except ValueError:
        raise StudyError(
            "study", f"{study_path} is outside the working directory {working_dir} that is shipped to the cluster"
        ) from None
    client = _client(address)
    entrypoint = " ".join(
        shlex.quote(a) for a in ["python", "-m", "orchestrator.cli", "run", str(relative), *overrides]
    )
    sid = submission_id(study.name)
    deadline = time.monotonic() + AGENT_WAIT_S
    with _refusals(address):
        while True:
            try:
                return client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=sid,
                    runtime_env={"working_dir": str(working_dir), "excludes": EXCLUDES},
                    metadata={STUDY_META: study.name},
                )
            except RuntimeError as exc:
                # a cluster just started (or busy) has no job agent up yet: Ray says to try again
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(2.0)


def study_jobs(address: str, study: str | None = None) -> list[StudyJob]:
    """Submitted studies (all, or one study's jobs), oldest first."""
    client = _client(address)
    out = []
    with _refusals(address):
        jobs = client.list_jobs()
    for job in jobs:
        name = (job.metadata or {}).get(STUDY_META)
        if name is None or (study is not None and name != study):
            continue
        out.append(
            StudyJob(
                submission_id=job.submission_id or "",
                study=name,
                status=str(job.status.value if hasattr(job.status, "value") else job.status),
                message=job.message or "",
                start_time=(job.start_time / 1000.0) if job.start_time else None,
            )
        )
    return sorted(out, key=lambda j: j.start_time or 0.0)


def cancel_study(address: str, study: str) -> list[str]:
    """Stop every pending or running job of ``study``; returns the submission ids stopped."""
    client = _client(address)
    stopped = []
    for job in study_jobs(address, study):
        if job.status not in ("PENDING", "RUNNING"):
            continue
        with _refusals(address):
            if client.stop_job(job.submission_id):
                stopped.append(job.submission_id)
    return stopped
