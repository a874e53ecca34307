"""Ctrl-C where Ray is not safe to interrupt: during ``ray.init`` (a KeyboardInterrupt after the
driver's core worker is built, before Ray records it, segfaulted the process at exit), and while
the executor cancels its tasks (a finished task cancelled is a known Ray abort)."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest

from orchestrator.cluster import sigint_deferred
from orchestrator.executors import RayExecutor


@pytest.fixture(autouse=True)
def _python_sigint_handler():  # noqa: ANN202 - earlier tests of the session may leave SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _interrupt() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # delivered to the main thread before os.kill returns


def test_a_ctrl_c_during_the_block_is_delivered_when_it_ends() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), sigint_deferred():
        _interrupt()
        done.append("the block went on")
    assert done == ["the block went on"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back


def test_a_second_ctrl_c_interrupts_at_once_and_none_is_no_interrupt() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), sigint_deferred():
        _interrupt()
        _interrupt()  # a hanging ray.init must stay stoppable
        done.append("not reached")
    assert done == [] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with sigint_deferred():
        done.append("quiet")
    assert done == ["quiet"]


def test_a_held_ctrl_c_goes_to_the_handler_that_was_there() -> None:
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with sigint_deferred():
            _interrupt()
            assert seen == []
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_where_ctrl_c_is_ignored_it_stays_ignored() -> None:
    """A process that ignores SIGINT (started with it ignored, as under nohup) is not made
    interruptible by the hold: two Ctrl-C used to raise inside the block."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    done = []
    with sigint_deferred():
        _interrupt()
        _interrupt()
        done.append("the block went on")
    assert done == ["the block went on"] and signal.getsignal(signal.SIGINT) == signal.SIG_IGN


class _FakeRay:
    """The Ray calls the executor's shutdown makes: which refs are done, cancel, kill."""

    def __init__(self, finished: set[str]) -> None:
        self.finished = finished
        self.cancelled: list[str] = []
        self.killed: list[object] = []

    def remote(self, fn):  # noqa: ANN001, ANN201
        return fn

    def wait(self, refs, *, num_returns, timeout):  # noqa: ANN001, ANN201
        assert timeout == 0 and num_returns == len(refs)
        return [r for r in refs if r in self.finished], [r for r in refs if r not in self.finished]

    def cancel(self, ref, *, force):  # noqa: ANN001, ANN201
        if ref == "raises":
            raise ValueError("already gone")
        self.cancelled.append(ref)

    def kill(self, actor):  # noqa: ANN001, ANN201
        self.killed.append(actor)


def test_shutdown_cancels_only_the_tasks_still_running() -> None:
    ray = _FakeRay(finished={"done"})
    executor = RayExecutor(ray)
    executor._pending = {ref: SimpleNamespace() for ref in ("done", "running", "raises")}
    board = object()
    executor._board = board
    executor.shutdown()
    assert ray.cancelled == ["running"]  # a task that finished is not cancelled; a cancel that fails is no error
    assert ray.killed == [board] and executor._board is None and not executor._pending


_CTRL_C_IN_RAY_INIT = """
import os, signal, sys
import ray, ray._raylet
from orchestrator.cluster import connect
from orchestrator.config import ClusterConfig

built = ray._raylet.CoreWorker


def core_worker(*args, **kwargs):  # Ctrl-C right after the driver's core worker is built
    worker = built(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGINT)
    return worker


ray._raylet.CoreWorker = core_worker
try:
    connect(ClusterConfig(num_cpus=1))
except KeyboardInterrupt:
    print("interrupted, connected:", ray.is_initialized(), flush=True)
    sys.exit(130)
"""


@pytest.mark.slow
def test_ctrl_c_inside_ray_init_exits_cleanly() -> None:
    """Without the hold, this Ctrl-C escaped ray.init before Ray had recorded its core worker,
    and the process segfaulted at exit (every time)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _CTRL_C_IN_RAY_INIT], capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not an ignored SIGINT
    assert done.returncode == 130, (done.returncode, done.stderr[-2000:])
    assert "interrupted, connected: True" in done.stdout
