"""Behaviour every trainer kind shares (the contract of ``trainers.base.Trainer``)."""

from __future__ import annotations

import math
import pickle
from dataclasses import replace
from pathlib import Path

import pytest

from trainers import TRAINER_KINDS, NullSink, RunPoint, RunSpec, get_trainer
from trainers.config import ModelConfig, MoEConfig, ReplayConfig, TrainerConfig


def _config(kind: str) -> TrainerConfig:
    return TrainerConfig(
        kind=kind,
        seq_len=32,
        batch_size=4,
        log_every=2,
        device="cpu",
        model=ModelConfig(head_dim=16, aspect_ratio=16.0),
        moe=MoEConfig(experts=4),
    )


def _teacher_checkpoint(directory: Path) -> str:
    """A finished dense run's checkpoint, the teacher of distill runs."""
    config = _config("dense")
    point = RunPoint(n_params=15_000, tokens=4 * 32 * 2)
    spec = RunSpec(
        run_key="teacher",
        study="contract",
        seed=0,
        point=point,
        trainer=config,
        checkpoint_dir=str(directory),
    )
    get_trainer(config).train(spec, NullSink())
    return str(directory)


@pytest.mark.parametrize("kind", TRAINER_KINDS)
def test_trainer_contract(kind: str, chinchilla_law: object, sink, tmp_path: Path) -> None:
    config = _config(kind)
    point = RunPoint(n_params=15_000, tokens=4 * 32 * 6)
    if kind == "replay":  # a table that holds this point
        table = tmp_path / "runs.csv"
        table.write_text(f"N,D,loss\n{point.n_params},{point.tokens},3.25\n")
        config = replace(config, replay=ReplayConfig(path=str(table)))
    trainer = get_trainer(config)
    assert trainer.kind == kind
    plan = trainer.plan(point)
    assert plan == trainer.plan(point)  # cheap and pure
    assert plan.flops == pytest.approx(plan.flops_per_token * plan.tokens)
    assert plan.n_params >= plan.n_params_non_embedding > 0 and plan.steps >= 1
    spec = RunSpec(
        run_key=f"contract-{kind}", study="contract", seed=1, point=point, trainer=config
    )
    if kind == "distill":
        spec = replace(spec, teacher_checkpoint=_teacher_checkpoint(tmp_path / "teacher"))
    spec = pickle.loads(pickle.dumps(spec))  # specs travel to workers pickled
    result = trainer.train(spec, sink)
    assert result.plan == plan
    assert result.run_key == spec.run_key
    assert math.isfinite(result.final_loss)
    assert sink.calls and all(math.isfinite(v) for _, m in sink.calls for v in m.values())
    assert {"train_loss", "lr", "tokens", "eval_loss"} <= sink.keys()
    assert result.curve and result.curve[-1].step == plan.steps
    assert result.wall_time_s > 0
    assert pickle.loads(pickle.dumps(result)) == result


@pytest.mark.parametrize("kind", TRAINER_KINDS)
def test_impossible_points_raise_value_error(kind: str) -> None:
    trainer = get_trainer(_config(kind))
    with pytest.raises(ValueError):
        trainer.plan(RunPoint(n_params=0, tokens=1000))
    with pytest.raises(ValueError):
        trainer.plan(RunPoint(n_params=15_000, tokens=0))


def test_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(ValueError, match="dense, distill, moe, replay, simulated"):
        get_trainer(replace(_config("dense"), kind="sparse"))


def test_a_run_result_round_trips_through_plain_json() -> None:
    """Results cross shared storage as JSON (data-parallel runs), never as a pickle."""
    import json

    from trainers.base import CurvePoint, ModelShape, RunPlan, RunResult

    shape = ModelShape(n_layer=2, d_model=64, n_head=2, d_ff=256, vocab_size=256, seq_len=64, n_experts=4, top_k=1)
    plan = RunPlan(shape=shape, n_params=123, n_params_non_embedding=100, n_params_active=80, flops_per_token=6.0,
                   tokens=1000, steps=10, flops=6000.0, flop_convention="6N")
    result = RunResult(run_key="k", plan=plan, final_loss=2.5, eval_losses={"code": 2.4},
                       curve=(CurvePoint(step=1, tokens=100, train_loss=3.0, lr=1e-3),), wall_time_s=1.5,
                       tokens_per_s=10.0, metrics={"L_T": 2.0})
    assert RunResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    bare = RunResult(run_key="s", plan=RunPlan(**{**plan.__dict__, "shape": None}), final_loss=1.0)
    assert RunResult.from_dict(json.loads(json.dumps(bare.to_dict()))) == bare
