"""Runs that train on several workers at once: data parallelism through Ray Train.

A run that needs more than one GPU (or that a study gives ``resources.workers_per_run`` workers)
trains with ``DistributedDataParallel`` on that many workers. Ray Train's ``TorchTrainer``
reserves them as one placement group (``PACK``: on as few nodes as possible), starts a worker per
bundle, and sets up ``torch.distributed`` (NCCL on GPUs, gloo on CPUs); the trainer sees the
initialised process group and splits every batch among the workers (``trainers.dense``).

Rank 0 logs the run's metrics through the study's sink and hands its ``RunResult`` back as the
payload of a Ray Train checkpoint, the library's way to return something from a worker group; so
``storage`` must be a path every node can read, like the study's checkpoints.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.tracking import MetricRow, SinkFactory
from trainers import RunResult, RunSpec

#: file of the checkpoint that carries rank 0's result: plain JSON, so reading it back from the
#: shared storage runs no code (unlike a pickle, which anyone who can write there could plant)
RESULT_FILE = "result.json"


def _train_worker(config: dict[str, Any]) -> None:
    """The body of every Ray Train worker: train the run on this worker's share of each batch."""
    import ray.train
    import torch

    from orchestrator.executors import execute
    from trainers.base import NullSink

    if config["use_gpu"] and torch.cuda.is_available():  # the GPU of this worker's bundle
        import ray.train.torch

        torch.cuda.set_device(ray.train.torch.get_device())
    spec: RunSpec = config["spec"]
    rank = ray.train.get_context().get_world_rank()
    if rank == 0 and config.get("board") is not None:  # for the pending-run watchdog
        config["board"].mark.remote(config["token"])
    sink_factory = config["sink_factory"] if rank == 0 else NullSink
    result, leftover = execute(spec, sink_factory)
    if rank != 0:
        ray.train.report({})  # a collective call: every worker takes part
        return
    with tempfile.TemporaryDirectory() as folder:
        payload = {"result": result.to_dict(), "leftover": [list(row) for row in leftover]}
        (Path(folder) / RESULT_FILE).write_text(json.dumps(payload))
        ray.train.report({"final_loss": result.final_loss}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def execute_parallel(
    spec: RunSpec,
    sink_factory: SinkFactory,
    *,
    workers: int,
    num_cpus: float,
    num_gpus: float,
    memory: float,
    storage: str,
    board: Any = None,
    token: str = "",
) -> tuple[RunResult, tuple[MetricRow, ...]]:
    """Train ``spec`` on ``workers`` data-parallel workers, each with ``num_cpus`` CPUs,
    ``num_gpus`` GPUs (0 or 1) and ``memory`` bytes reserved; returns what
    :func:`orchestrator.executors.execute` returns for a single-process run. Rank 0 marks
    attempt ``token`` on the start board ``board`` when the workers have started."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    per_worker: dict[str, float] = {"CPU": num_cpus}
    if num_gpus > 0:
        per_worker["GPU"] = num_gpus
    if memory > 0:
        per_worker["memory"] = int(memory)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "spec": spec,
            "sink_factory": sink_factory,
            "board": board,
            "token": token,
            "use_gpu": num_gpus > 0,
        },
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=num_gpus > 0, resources_per_worker=per_worker, placement_strategy="PACK"
        ),
        # the scheduler owns retries (a retried attempt resumes from the run's checkpoint)
        run_config=RunConfig(name=spec.run_key, storage_path=storage or None, failure_config=FailureConfig(max_failures=0)),
    )
    outcome = trainer.fit()
    if outcome.checkpoint is None:
        raise RuntimeError(f"run {spec.run_key}: the data-parallel workers returned no result")
    with outcome.checkpoint.as_directory() as folder:
        payload = json.loads((Path(folder) / RESULT_FILE).read_text())
    leftover = tuple((str(k), float(v), int(ts), int(step)) for k, v, ts, step in payload["leftover"])
    return RunResult.from_dict(payload["result"]), leftover
