"""System metrics of a training: sampled from MLflow's collectors into the run's own sink."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.executors import execute
from orchestrator.sysmetrics import PREFIX, LockedSink, SystemSampler, sampled


class ListSink:
    """Keeps every logged row and the threads that logged them."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.threads: set[str] = set()

    def log_metrics(self, metrics, *, step: int) -> None:  # noqa: ANN001
        self.threads.add(threading.current_thread().name)
        self.rows.append((step, dict(metrics)))


def _system_rows(sink: ListSink) -> list[tuple[int, dict[str, float]]]:
    return [(step, m) for step, m in sink.rows if any(k.startswith(PREFIX) for k in m)]


def test_samples_at_start_every_interval_and_at_the_end() -> None:
    sink = ListSink()
    sampler = SystemSampler(LockedSink(sink), interval=0.05)
    sampler.start()
    time.sleep(0.4)
    sampler.stop()
    rows = _system_rows(sink)
    assert len(rows) >= 5  # start, several ticks, end
    assert [step for step, _ in rows] == list(range(len(rows)))  # one step per sample
    for _, metrics in rows:
        assert set(metrics) >= {f"{PREFIX}cpu_utilization_percentage", f"{PREFIX}system_memory_usage_megabytes",
                                f"{PREFIX}disk_usage_percentage", f"{PREFIX}network_receive_megabytes"}
        assert 0.0 <= metrics[f"{PREFIX}system_memory_usage_percentage"] <= 100.0
    assert "isoflop-system-metrics" in sink.threads  # the ticks come from the sampler's thread


def test_mlflow_switch_turns_sampling_off(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    sink = ListSink()
    with sampled(sink) as inner:
        inner.log_metrics({"train_loss": 1.0}, step=0)
    assert _system_rows(sink) == [] and sink.rows == [(0, {"train_loss": 1.0})]


def test_a_training_records_its_system_metrics_even_when_short(monkeypatch) -> None:
    from orchestrator.grid import expand
    from orchestrator.loading import study_from_dict

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "3600")
    study = study_from_dict({"name": "sys", "trainer": {"kind": "simulated"}, "grid": {"N": [1e7], "D": [1e9]}})
    (run,) = expand(study)
    sink = ListSink()
    result, leftover = execute(run.spec, lambda: sink)
    assert result.final_loss > 0 and leftover == ()
    rows = _system_rows(sink)
    assert [step for step, _ in rows] == [0, 1]  # the start and the end of the run


@pytest.mark.parametrize("raw", ["abc", "-1", "0"])
def test_a_bad_interval_falls_back_to_the_default(monkeypatch, raw: str) -> None:
    from orchestrator.sysmetrics import DEFAULT_INTERVAL_S, interval_s

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raw)
    assert interval_s() == DEFAULT_INTERVAL_S


def test_the_sampler_only_buffers_and_never_writes_to_the_store() -> None:
    """Writes happen when the training logs (its errors surface there), never from the
    sampler's thread, where they would go unnoticed."""
    from orchestrator.sysmetrics import LockedSink

    class BufferedSink(ListSink):
        def __init__(self) -> None:
            super().__init__()
            self.buffered: list[tuple[int, dict]] = []

        def buffer(self, metrics, *, step: int) -> None:  # noqa: ANN001
            self.buffered.append((step, dict(metrics)))

    sink = BufferedSink()
    sampler = SystemSampler(LockedSink(sink), interval=0.05)
    sampler.start()
    time.sleep(0.2)
    sampler.stop()
    assert sink.rows == [] and len(sink.buffered) >= 3
    assert all(k.startswith(PREFIX) for _, m in sink.buffered for k in m)
    # the first CPU reading measures from the sampler's start, not since boot or never
    assert sink.buffered[-1][1][f"{PREFIX}cpu_utilization_percentage"] >= 0.0
