"""Data-parallel training: two gloo workers on CPU train the run a single process trains.

The workers are started with ``torch.multiprocessing`` here (the trainer only needs an
initialised ``torch.distributed``); ``tests/orchestrator/test_parallel.py`` starts them through
Ray Train as studies do.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainers import RunPoint, RunResult, RunSpec, get_trainer
from trainers.base import NullSink
from trainers.checkpoint import load_model_state
from trainers.config import MoEConfig, TrainerConfig
from trainers.dense import check_divisible

ConfigFactory = Callable[..., TrainerConfig]
STEPS = 12


def _spec(config: TrainerConfig, checkpoint_dir: Path, sparsity: float = 0.0) -> RunSpec:
    return RunSpec(
        run_key="dp-test",
        study="test",
        seed=3,
        point=RunPoint(
            n_params=12_000,
            tokens=STEPS * config.batch_size * config.seq_len,
            mixture=(0.6, 0.4),
            sparsity=sparsity,
        ),
        trainer=config,
        checkpoint_dir=str(checkpoint_dir),
        checkpoint_every=STEPS,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, spec: RunSpec, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = get_trainer(spec.trainer).train(spec, NullSink())
        torch.save({"final_loss": result.final_loss, "curve": result.curve}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _parallel(spec: RunSpec, out: Path, world: int = 2) -> list[dict[str, object]]:
    mp.spawn(_worker, args=(world, _free_port(), spec, str(out)), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


# MoE: each worker's load-balancing loss is its own share's (per device, as in Switch
# Transformer), a product of batch means that differs slightly from the global batch's
@pytest.mark.parametrize(("sparsity", "rel"), [(0.0, 1e-4), (0.5, 1e-3)], ids=["dense", "moe"])
def test_two_workers_train_the_single_process_run(
    tiny_config: ConfigFactory, tmp_path: Path, sparsity: float, rel: float
) -> None:
    kind = "moe" if sparsity else "dense"
    extra = {"moe": MoEConfig(experts=2)} if sparsity else {}
    config = tiny_config(kind=kind, log_every=4, **extra)
    single: RunResult = get_trainer(config).train(_spec(config, tmp_path / "single", sparsity), NullSink())
    ranks = _parallel(_spec(config, tmp_path / "parallel", sparsity), tmp_path)

    # every worker ends with the same model; rank 0's is the single-process run's
    assert ranks[0]["final_loss"] == ranks[1]["final_loss"]
    assert ranks[0]["final_loss"] == pytest.approx(single.final_loss, rel=rel)
    logged = [p.train_loss for p in ranks[0]["curve"]]  # type: ignore[attr-defined]
    assert logged == pytest.approx([p.train_loss for p in single.curve], rel=rel)
    assert logged[-1] < logged[0]  # and it learns

    one, steps_one = load_model_state(tmp_path / "single")
    two, steps_two = load_model_state(tmp_path / "parallel")
    assert steps_one == steps_two == STEPS
    assert one.keys() == two.keys()  # rank 0 saved the bare model, not the wrapper
    for name in one:
        if not sparsity:
            torch.testing.assert_close(two[name], one[name], rtol=1e-3, atol=1e-5)


def test_batch_must_split_evenly_among_workers() -> None:
    check_divisible(8, 2)
    with pytest.raises(ValueError, match=r"trainer\.batch_size: 9 .* 2 data-parallel workers"):
        check_divisible(9, 2)
