"""The memory estimate: what it counts grows as it should, and runs without a model need none."""

from __future__ import annotations

from dataclasses import replace

from trainers.base import RunPoint
from trainers.config import ModelConfig, OptimConfig, TrainerConfig
from trainers.dense import plan_dense
from trainers.memory import HEADROOM, RUNTIME_BYTES, estimate_memory
from trainers.simulated import SimulatedTrainer


def _estimate(config: TrainerConfig, n: float = 1e6, **kw):  # noqa: ANN202
    plan = plan_dense(RunPoint(n_params=int(n), tokens=config.batch_size * config.seq_len), config)
    return plan, estimate_memory(plan, config, **kw)


def test_model_state_is_sixteen_bytes_per_parameter_and_twenty_with_an_ema() -> None:
    config = TrainerConfig()
    plan, est = _estimate(config)
    assert est.model_state == 16 * plan.n_params
    _, ema = _estimate(replace(config, optim=OptimConfig(ema=0.99)))
    assert ema.model_state == 20 * plan.n_params
    assert est.runtime == RUNTIME_BYTES and est.budget == int(est.total * HEADROOM)


def test_activations_scale_with_tokens_and_attention_with_the_squared_length() -> None:
    base = TrainerConfig(batch_size=8, seq_len=64)
    _, small = _estimate(base)
    _, double_batch = _estimate(replace(base, batch_size=16))
    assert double_batch.activations == 2 * small.activations  # linear in the batch
    plan, est = _estimate(base)
    shape = plan.shape
    probs = 4 * shape.n_layer * 2 * 8 * shape.n_head * 64**2
    _, longer = _estimate(replace(base, seq_len=128))
    # twice the tokens, four times the attention probabilities
    assert longer.activations == 2 * (est.activations - probs) + 4 * probs


def test_sigma_reparam_and_a_teacher_cost_memory() -> None:
    config = TrainerConfig()
    _, plain = _estimate(config)
    _, sigma = _estimate(replace(config, model=ModelConfig(sigma_reparam=True)))
    assert sigma.activations > plain.activations and sigma.model_state > plain.model_state
    _, student = _estimate(config, teacher_params=4_000_000)
    assert student.teacher >= 4 * 4_000_000


def test_runs_without_a_model_need_nothing() -> None:
    config = TrainerConfig(kind="simulated")
    plan = SimulatedTrainer(config).plan(RunPoint(n_params=10**9, tokens=10**11))
    assert estimate_memory(plan, config).total == 0
