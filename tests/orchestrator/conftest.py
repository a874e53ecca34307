"""Fixtures for orchestrator tests: study files and a fake executor."""

from __future__ import annotations

from collections import defaultdict, deque
from pathlib import Path

import pytest

from orchestrator.executors import Completion, Executor, RunTask
from trainers import RunResult, get_trainer

SIMULATED_STUDY = """
name: sim-small
seed: 3
trainer:
  kind: simulated
grid:
  N: [1.0e6, 1.0e7, 1.0e8]
  tokens_per_param: [5, 20, 80]
laws: [chinchilla]
"""


@pytest.fixture
def study_file(tmp_path: Path):
    """Write a study YAML into tmp_path and return its path."""

    def write(text: str, name: str = "study.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


class ScriptedExecutor(Executor):
    """Runs tasks in submission order through the real trainer, failing the attempts a test
    scripts, and records the largest number of tasks in flight."""

    def __init__(self, failures: dict[str, int] | None = None) -> None:
        self.queue: deque[RunTask] = deque()
        self.failures = defaultdict(int, failures or {})  # run key -> attempts to fail
        self.max_in_flight = 0
        self.submitted: list[str] = []

    def submit(self, task: RunTask) -> None:
        self.queue.append(task)
        self.submitted.append(task.spec.run_key)
        self.max_in_flight = max(self.max_in_flight, len(self.queue))

    def wait(self, timeout: float) -> list[Completion]:
        if not self.queue:
            return []
        task = self.queue.popleft()
        key = task.spec.run_key
        if self.failures[key] > 0:
            self.failures[key] -= 1
            return [Completion(task=task, error=f"RuntimeError: scripted failure of {key}")]
        result: RunResult = get_trainer(task.spec.trainer).train(task.spec, task.sink_factory())
        return [Completion(task=task, result=result)]

    def in_flight(self) -> int:
        return len(self.queue)


@pytest.fixture(scope="module")
def ray_local():
    """A fresh local Ray for one test module (2 CPUs, no dashboard), shut down after it. Any Ray
    an earlier test left initialised in this process (the CLI starts one) is shut down first."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
