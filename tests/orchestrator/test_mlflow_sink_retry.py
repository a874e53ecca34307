"""A worker's metric sink keeps what MLflow did not take: a failed ``log_batch`` loses no row,
and the next successful flush writes each row exactly once, in order."""

from __future__ import annotations

import contextlib

import pytest
from mlflow.exceptions import MlflowException

import orchestrator.mlflow_tracker as mlflow_tracker
from orchestrator.mlflow_tracker import _MAX_BATCH, MlflowSink


class FlakyClient:
    """Stands for ``MlflowClient``: ``log_batch`` call number ``fail_on`` (1-based) fails, as when
    the HTTP retries run out; every other call is recorded."""

    fail_on = 1
    made: list[FlakyClient] = []

    def __init__(self, tracking_uri: str) -> None:
        self.calls = 0
        self.logged: list[tuple[str, float, int]] = []
        FlakyClient.made.append(self)

    def log_batch(self, run_id: str, metrics: list) -> None:  # noqa: ANN001 - MLflow's Metric rows
        self.calls += 1
        if self.calls == self.fail_on:
            raise MlflowException("API request to /api/2.0/mlflow/runs/log-batch failed: max retries exceeded")
        assert len(metrics) <= _MAX_BATCH
        self.logged.extend((m.key, m.value, m.step) for m in metrics)


def _rows(start: int, stop: int) -> list[tuple[str, float, int]]:
    return [("train_loss", float(step), step) for step in range(start, stop)]


@pytest.mark.parametrize(
    ("fail_on", "first"),
    [(1, 10), (2, _MAX_BATCH + 10)],
    ids=["the only chunk fails", "the second chunk fails after the first was written"],
)
def test_failed_flush_keeps_the_batch_and_the_next_writes_it_once(
    fail_on: int, first: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FlakyClient, "fail_on", fail_on)
    monkeypatch.setattr(FlakyClient, "made", [])
    monkeypatch.setattr(mlflow_tracker, "MlflowClient", FlakyClient)
    sink = MlflowSink("http://mlflow.invalid:5000", "run-1", flush_every_s=3600.0)
    for key, value, step in _rows(0, first):
        sink.log_metrics({key: value}, step=step)
    with pytest.raises(MlflowException):
        sink.flush()  # the error reaches the caller as before
    for key, value, step in _rows(first, first + 5):
        sink.buffer({key: value}, step=step)
    sink.flush()
    (client,) = FlakyClient.made  # one client for the sink's life
    assert client.logged == _rows(0, first + 5)  # nothing lost, nothing twice, in order
    assert sink.drain() == []


def test_rows_a_failed_flush_kept_are_handed_over_by_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that ends right after a failed flush gives the driver every row still unwritten."""
    monkeypatch.setattr(FlakyClient, "fail_on", 1)
    monkeypatch.setattr(mlflow_tracker, "MlflowClient", FlakyClient)
    sink = MlflowSink("http://mlflow.invalid:5000", "run-1", flush_every_s=0.0)
    with pytest.raises(MlflowException):
        sink.log_metrics({"train_loss": 3.5, "lr": 0.01}, step=7)  # flushes at once, and fails
    assert [(key, value, step) for key, value, _, step in sink.drain()] == [("train_loss", 3.5, 7), ("lr", 0.01, 7)]


def test_a_failed_training_keeps_its_own_error_when_the_store_is_down_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker flushes a failed run's partial curve; when that write fails as well, the
    training's error is still the one raised (with a note on the metrics), and the rows stay
    in the sink."""
    from orchestrator import executors

    class Broken:
        def train(self, spec: object, sink: object) -> None:
            sink.log_metrics({"train_loss": 2.5}, step=1)  # type: ignore[attr-defined]
            raise RuntimeError("loss is NaN at step 1")

    monkeypatch.setattr(FlakyClient, "fail_on", 1)
    monkeypatch.setattr(FlakyClient, "made", [])
    monkeypatch.setattr(mlflow_tracker, "MlflowClient", FlakyClient)
    monkeypatch.setattr(executors, "get_trainer", lambda trainer: Broken())
    monkeypatch.setattr(executors, "sampled", lambda sink: contextlib.nullcontext(sink))
    sink = MlflowSink("http://mlflow.invalid:5000", "run-1", flush_every_s=3600.0)

    class Spec:
        trainer = None

    with pytest.raises(RuntimeError, match="loss is NaN") as info:
        executors.execute(Spec(), lambda: sink)  # type: ignore[arg-type]
    assert any("could not be written" in note for note in getattr(info.value, "__notes__", []))
    assert [(key, value, step) for key, value, _, step in sink.drain()] == [("train_loss", 2.5, 1)]
