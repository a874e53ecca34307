"""Connecting to Ray and checking that a study's runs fit on the cluster.

With no address, isoflop starts a fresh local Ray (``address="local"``: ``None`` would silently
attach to whatever ``ray start`` cluster happens to run on this machine). A task asking for more
than any node has stays pending forever without an error, so feasibility is checked up front.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from orchestrator.config import ClusterConfig, ResourcesConfig, TrainerConfig
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
        kwargs["address"] = config.address
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise StudyError("cluster.address", f"cannot reach a Ray cluster at {config.address!r}: {exc}") from None
    return ray


#: the GPU shares ``gpus_per_run: auto`` hands out (Ray schedules fractions of a GPU)
GPU_SHARES = (0.125, 0.25, 0.5, 1.0)


def gpus_per_run(resources: ResourcesConfig, trainer: TrainerConfig, cluster_gpus: float) -> float:
    """Resolve ``resources.gpus_per_run`` (``auto``: one GPU per real training when there are any)."""
    if resources.gpus_per_run != "auto":
        return float(resources.gpus_per_run)
    if trainer.kind in ("simulated", "replay") or trainer.device == "cpu" or cluster_gpus < 1:
        return 0.0
    return 1.0


def gpu_share(whole: float, budget_bytes: float, gpu_memory_mb: float) -> float:
    """The GPUs one run asks for under ``gpus_per_run: auto``: ``whole`` (0 or 1, from
    :func:`gpus_per_run`) unless ``gpu_memory_mb`` is known, then the smallest share of
    :data:`GPU_SHARES` whose part of the GPU's memory holds the run's memory budget. A run that
    needs more than one GPU's memory is refused: runs train on one device."""
    if whole <= 0 or gpu_memory_mb <= 0:
        return whole
    need = budget_bytes / (gpu_memory_mb * 2**20)
    for share in GPU_SHARES:
        if need <= share:
            return share
    raise StudyError(
        "resources.gpu_memory_mb",
        f"a run needs {budget_bytes / 2**20:.0f} MB, more than one GPU's {gpu_memory_mb:g} MB: runs train on "
        "one device; use smaller models or GPUs with more memory",
    )


def check_feasible(ray: Any, num_cpus: float, num_gpus: float, memory: float = 0.0) -> None:
    """Fail now, with the numbers, if no node could ever run one of the study's tasks
    (``memory``: the largest memory request of any run, in bytes)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
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
            f"the largest run asks for {memory / 2**20:.0f} MB of memory, but the largest node that fits "
            f"its CPUs and GPUs offers {best / 2**20:.0f} MB to Ray: it could never start",
        )
    if not fits:
        best_cpu = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        best_gpu = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
        key = "resources.gpus_per_run" if num_gpus > best_gpu else "resources.cpus_per_run"
        raise StudyError(
            key,
            f"each run asks for {num_cpus:g} CPUs and {num_gpus:g} GPUs, but the largest node has "
            f"{best_cpu:g} CPUs and {best_gpu:g} GPUs: no run could ever start",
        )
