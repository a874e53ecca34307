"""Connecting to Ray and checking that a study's runs fit on the cluster.

With no address, isoflop starts a fresh local Ray (``address="local"``: ``None`` would silently
attach to whatever ``ray start`` cluster happens to run on this machine). A task asking for more
than any node has stays pending forever without an error, so feasibility is checked up front.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from orchestrator.config import ClusterConfig, NodeTypeConfig, ResourcesConfig, TrainerConfig
from orchestrator.errors import StudyError


def connect(config: ClusterConfig) -> Any:
    """Initialise Ray for the driver and return the ``ray`` module."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if config.address is None and os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        # a submitted study: the job supervisor points RAY_ADDRESS at the cluster running it
        kwargs["address"] = os.environ.get("RAY_ADDRESS") or "auto"
    elif config.address is None:
        kwargs.update(address="local", include_dashboard=False)
        if config.num_cpus is not None:
            kwargs["num_cpus"] = config.num_cpus
        if config.num_gpus is not None:
            kwargs["num_gpus"] = config.num_gpus
    else:
        _check_listening(config.address)
        kwargs["address"] = config.address
    try:
        with sigint_deferred():  # Ctrl-C half-way through ray.init leaves a driver that segfaults at exit
            ray.init(**kwargs)
    except ConnectionError as exc:
        raise StudyError("cluster.address", f"cannot reach a Ray cluster at {config.address!r}: {exc}") from None
    return ray


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back until the block is over, then deliver it (KeyboardInterrupt
    under Python's default handler). ``ray.init`` is not safe to interrupt: a KeyboardInterrupt
    raised after the driver's CoreWorker is built but before Ray records it (``connect``) leaves
    the core worker's threads running into interpreter exit, which segfaults; once Ray is fully
    connected, its atexit shutdown stops them in order. A second Ctrl-C interrupts at once (a
    ``ray.init`` that hangs must stay stoppable). Outside the main thread (where signals cannot
    be handled), or where Ctrl-C is ignored, the block runs as is."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, None)
        else:  # SIG_DFL, or a handler not set from Python: as Python's own would
            raise KeyboardInterrupt


def _check_listening(address: str, timeout_s: float = 5.0) -> None:
    """A cluster address (``HOST:PORT`` or ``ray://HOST:PORT``) must have something listening:
    ``ray.init`` retries an address where nothing answers for ever, so a typo would hang the
    study instead of stopping it. ``auto`` (the cluster ``ray start`` left on this machine) is
    left to Ray."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://").rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise StudyError("cluster.address", f"expected HOST:PORT, ray://HOST:PORT or auto, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise StudyError(
            "cluster.address", f"no Ray cluster answers at {address!r} ({exc.strerror or exc}); is its head running?"
        ) from None


#: the GPU shares ``gpus_per_run: auto`` hands out (Ray schedules fractions of a GPU)
GPU_SHARES = (0.125, 0.25, 0.5, 1.0)


def gpus_per_run(resources: ResourcesConfig, trainer: TrainerConfig, cluster_gpus: float) -> float:
    """Resolve ``resources.gpus_per_run`` (``auto``: one GPU per real training when there are any)."""
    if resources.gpus_per_run != "auto":
        return float(resources.gpus_per_run)
    if trainer.kind in ("simulated", "replay") or trainer.device == "cpu" or cluster_gpus < 1:
        return 0.0
    return 1.0


#: the most data-parallel workers ``gpus_per_run: auto`` gives one run
MAX_WORKERS = 64


def gpu_share(
    whole: float, budget_bytes: Callable[[int], float], gpu_memory_mb: float, batch_size: int, source: str = ""
) -> float:
    """The GPUs one run asks for under ``gpus_per_run: auto``: ``whole`` (0 or 1, from
    :func:`gpus_per_run`) unless ``gpu_memory_mb`` is known. Then the smallest share of
    :data:`GPU_SHARES` whose part of the GPU's memory holds the run's memory budget
    (``budget_bytes(1)``), or, when one GPU cannot hold it, the fewest whole GPUs k (one
    data-parallel worker each, k dividing ``batch_size``) whose per-worker budget
    ``budget_bytes(k)`` fits one GPU. Data parallelism only splits the batch: a run whose model
    state alone overflows a GPU is refused, naming the key."""
    if whole <= 0 or gpu_memory_mb <= 0:
        return whole
    gpu = gpu_memory_mb * 2**20
    need = budget_bytes(1) / gpu
    for share in GPU_SHARES:
        if need <= share:
            return share
    splits = [k for k in range(2, min(batch_size, MAX_WORKERS) + 1) if batch_size % k == 0]
    for k in splits:
        if budget_bytes(k) <= gpu:
            return float(k)
    most = splits[-1] if splits else 1
    raise StudyError(
        "resources.gpu_memory_mb",
        f"a run needs {budget_bytes(1) / 2**20:.0f} MB on one GPU and still "
        f"{budget_bytes(most) / 2**20:.0f} MB on each of {most} data-parallel workers, more than one GPU's "
        f"{gpu_memory_mb:g} MB{f' ({source})' if source else ''}: data parallelism replicates the model state; "
        "use smaller models or GPUs with more memory",
    )


def worker_slots(node: dict[str, float], num_cpus: float, num_gpus: float, memory: float) -> int:
    """How many workers of this size a node's resources hold at once."""
    limits = [node.get("CPU", 0) // num_cpus if num_cpus > 0 else float("inf")]
    if num_gpus > 0:
        limits.append(node.get("GPU", 0) // num_gpus)
    if memory > 0 and "memory" in node:
        limits.append(node["memory"] // memory)
    slots = min(limits)
    return MAX_WORKERS if slots == float("inf") else int(slots)


#: memory of one GPU, in MB, by the accelerator type Ray detects on a node (its resource
#: ``accelerator_type:<TYPE>``, names as in ``ray.util.accelerators``): the vendors' figures for
#: the smallest model sold under that name (a plain "A100" is taken as the 40 GB one)
GPU_MEMORY_MB: dict[str, float] = {
    "K80": 12 * 1024, "P4": 8 * 1024, "P100": 16 * 1024, "V100": 16 * 1024, "T4": 16 * 1024,
    "A10G": 24 * 1024, "L4": 24 * 1024, "L40S": 48 * 1024,
    "A100": 40 * 1024, "A100-40G": 40 * 1024, "A100-80G": 80 * 1024,
    "H100": 80 * 1024, "H20": 96 * 1024, "H200": 141 * 1024, "B200": 180 * 1024, "B300": 268 * 1024,
    "GB200": 186 * 1024, "GB300": 279 * 1024, "RTX-PRO-6000": 96 * 1024,
}
_ACCELERATOR = "accelerator_type:"


def detected_gpu_memory_mb(nodes: Sequence[dict[str, Any]]) -> tuple[float, str]:
    """The memory of the smallest GPU among ``nodes`` (shaped like ``ray.nodes()``) from the
    accelerator types Ray detected, and a description of it; ``(0, reason)`` when no node has
    GPUs or some GPU node's type is missing or not in :data:`GPU_MEMORY_MB`, so that runs keep
    a whole GPU each rather than be packed by a guess."""
    found: dict[str, float] = {}
    for node in nodes:
        resources = node.get("Resources", {})
        if resources.get("GPU", 0) <= 0:
            continue
        kinds = [k.removeprefix(_ACCELERATOR) for k in resources if k.startswith(_ACCELERATOR)]
        known = [k for k in kinds if k in GPU_MEMORY_MB]
        if not known:
            if kinds:
                return 0.0, f"the memory of a GPU of accelerator type {kinds[0]!r} is not known"
            return 0.0, "a GPU node reports no accelerator type"
        for kind in known:
            found[kind] = GPU_MEMORY_MB[kind]
    if not found:
        return 0.0, "no node has GPUs"
    smallest = min(found, key=found.__getitem__)
    return found[smallest], f"{found[smallest]:g} MB per GPU ({smallest}, the smallest of {', '.join(sorted(found))})"


def cluster_nodes(ray: Any, autoscale: Sequence[NodeTypeConfig] = ()) -> list[dict[str, Any]]:
    """The nodes alive now and, for an autoscaling cluster, every node its autoscaler may add
    (``cluster.autoscale``), in the form of ``ray.nodes()``."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    for kind in autoscale:
        resources = {"CPU": kind.cpus, "GPU": kind.gpus}
        if kind.memory_mb > 0:
            resources["memory"] = kind.memory_mb * 2**20
        nodes += [{"Alive": True, "Resources": resources, "autoscaled": True}] * kind.max_nodes
    return nodes


def cluster_capacity(nodes: list[dict[str, Any]], num_cpus: float, num_gpus: float, memory: float = 0.0) -> int:
    """How many runs (workers) of this size ``nodes`` hold at once; at least 1."""
    return max(1, sum(worker_slots(n["Resources"], num_cpus, num_gpus, memory) for n in nodes))


def check_runs_feasible(
    ray: Any,
    num_cpus: float,
    needs: Sequence[tuple[float, float, int]],
    autoscale: Sequence[NodeTypeConfig] = (),
) -> None:
    """:func:`check_feasible` for every distinct need of a study's runs, each a (GPUs per worker,
    memory per worker, workers) triple: a study whose largest-memory run needs no GPU and whose
    GPU runs are small fits a cluster that no single run of the largest of each would."""
    largest: dict[tuple[float, int], float] = {}  # the most memory any run of each shape asks for
    for per_worker, memory, workers in needs:
        largest[per_worker, workers] = max(memory, largest.get((per_worker, workers), 0.0))
    for (per_worker, workers), memory in sorted(largest.items()):
        check_feasible(ray, num_cpus, per_worker, memory, workers, autoscale=autoscale)


def check_feasible(
    ray: Any,
    num_cpus: float,
    num_gpus: float,
    memory: float = 0.0,
    workers: int = 1,
    autoscale: Sequence[NodeTypeConfig] = (),
) -> None:
    """Fail now, with the numbers, if no node could ever run a task asking for ``num_cpus`` CPUs,
    ``num_gpus`` GPUs and ``memory`` bytes, or, for a run of ``workers`` data-parallel workers of
    that size each, if the whole cluster could never hold them all.
    ``autoscale``: node types an autoscaler can add, counted as if they were there."""
    nodes = cluster_nodes(ray, autoscale)
    hint = " (with the node types of cluster.autoscale)" if autoscale else ""
    fits = [
        n
        for n in nodes
        if n["Resources"].get("CPU", 0) >= num_cpus and n["Resources"].get("GPU", 0) >= num_gpus
    ]
    roomy = [n for n in fits if n["Resources"].get("memory", float("inf")) >= memory]
    if fits and not roomy:
        best = max(n["Resources"].get("memory", 0) for n in fits)
        raise StudyError(
            "resources.memory_per_run",
            f"a run asks for {memory / 2**20:.0f} MB of memory, but the largest node that fits "
            f"its CPUs and GPUs offers {best / 2**20:.0f} MB to Ray{hint}: it could never start",
        )
    if not fits:
        best_cpu = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        best_gpu = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
        key = "resources.gpus_per_run" if num_gpus > best_gpu else "resources.cpus_per_run"
        raise StudyError(
            key,
            f"each run asks for {num_cpus:g} CPUs and {num_gpus:g} GPUs, but the largest node has "
            f"{best_cpu:g} CPUs and {best_gpu:g} GPUs{hint}: no run could ever start",
        )
    slots = sum(worker_slots(n["Resources"], num_cpus, num_gpus, memory) for n in nodes)
    if slots < workers:
        key = "resources.workers_per_run" if num_gpus == 0 else "resources.gpus_per_run"
        raise StudyError(
            key,
            f"a run trains on {workers} data-parallel workers of {num_cpus:g} CPUs and {num_gpus:g} GPUs each, "
            f"but the whole cluster holds {slots}{hint}: it could never start",
        )
