"""System metrics of a training: CPU, memory, disk, network and (NVIDIA) GPU use while it runs.

MLflow's own collectors (``mlflow.system_metrics.metrics``: psutil for the host, NVML through
``nvidia-ml-py`` for GPUs) take the samples, and they are logged as ``system/<name>`` metrics,
MLflow's convention, so the UI shows them in the run's *System metrics* section. Unlike
``mlflow.start_run(log_system_metrics=True)``, whose monitor thread opens the tracking store from
the worker and polls the run's status at every sample, the samples go through the run's own
metric sink: buffered with the training's curves and, for a short run, handed to the driver at
the end (a short run never opens the store from its worker).

One sample is taken when the training starts, one every ``interval`` seconds while it runs and
one when it ends, so every run has its use recorded, however short. The sampler only adds its
samples to the sink's buffer (``MlflowSink.buffer``); the training's own logging writes them out
with its curves, so a failing write surfaces in the training, never silently in the sampler's
thread. Sampling is on by default (MLflow's own default for ``log_system_metrics`` is off);
MLflow's variables apply: ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`` turns it off and
``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` sets the interval (default 10 s).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from trainers import MetricSink
from trainers.base import NullSink

PREFIX = "system/"
DEFAULT_INTERVAL_S = 10.0


class LockedSink:
    """A sink that two threads (the training and the sampler) can log into: every call on the
    wrapped sink holds one lock. The sampler records with :meth:`record`, which only buffers."""

    def __init__(self, sink: MetricSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        with self._lock:
            self._sink.log_metrics(metrics, step=step)

    def record(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Add rows without writing anything out (a sink without a buffer logs them)."""
        with self._lock:
            getattr(self._sink, "buffer", self._sink.log_metrics)(metrics, step=step)

    def flush(self) -> None:
        with self._lock:
            getattr(self._sink, "flush", lambda: None)()

    def drain(self) -> list[Any]:
        with self._lock:
            return list(getattr(self._sink, "drain", list)())


def _monitors() -> list[Any]:
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    found: list[Any] = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    with contextlib.suppress(Exception):  # no NVML library or no NVIDIA GPU: host metrics only
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        found.append(GPUMonitor())
    return found


def enabled() -> bool:
    return os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").strip().lower() not in ("0", "false", "no")


def interval_s() -> float:
    raw = os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        value = DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


class SystemSampler:
    """Samples the host (and its GPUs) into ``sink`` as ``system/*`` metrics, step = sample."""

    def __init__(self, sink: LockedSink, interval: float | None = None) -> None:
        import psutil

        self.sink = sink
        self.interval = interval if interval is not None else interval_s()
        self.monitors = _monitors()
        psutil.cpu_percent()  # its first reading is meaningless: the samples measure from here
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="isoflop-system-metrics", daemon=True)

    def sample(self) -> dict[str, float]:
        """Take one sample of every monitor and log it."""
        metrics: dict[str, float] = {}
        for monitor in self.monitors:
            with contextlib.suppress(Exception):  # a probe that fails skips this sample
                monitor.collect_metrics()
                metrics.update({PREFIX + k: float(v) for k, v in monitor.aggregate_metrics().items()})
            monitor.clear_metrics()
        if metrics:
            self.sink.record(metrics, step=self.samples)
            self.samples += 1
        return metrics

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


@contextlib.contextmanager
def sampled(sink: MetricSink) -> Iterator[MetricSink]:
    """The sink the training logs into, with the host's use sampled into it meanwhile."""
    if not enabled() or isinstance(sink, NullSink):  # nothing keeps them (data-parallel ranks > 0)
        yield sink
        return
    shared = LockedSink(sink)
    try:
        sampler = SystemSampler(shared)
        sampler.start()
    except Exception:  # monitoring must never stop a training
        yield sink
        return
    try:
        yield shared
    finally:
        sampler.stop()


__all__ = ["PREFIX", "LockedSink", "SystemSampler", "enabled", "interval_s", "sampled"]
