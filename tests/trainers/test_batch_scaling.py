"""A recipe tuned at a reference batch size, carried to the run's own: Adam's square-root rule
and the EMA scaling rule (``trainers.batch_scaling``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from tests.trainers.conftest import RecordingSink
from trainers.base import RunPoint, RunSpec
from trainers.batch_scaling import at_batch_size, scaled_recipe
from trainers.checkpoint import checkpoint_path, load_checkpoint
from trainers.config import OptimConfig, TrainerConfig
from trainers.dense import DenseTrainer, ema_momentum
from trainers.schedule import lr_at

ConfigFactory = Callable[..., TrainerConfig]
TUNED = OptimConfig(lr=2e-3, beta1=0.9, beta2=0.95, eps=1e-8, ema=0.99, reference_batch_size=16)


def test_kappa_four_and_a_quarter_give_the_exact_scaled_values() -> None:
    up = scaled_recipe(TrainerConfig(batch_size=64, optim=TUNED))  # kappa = 4
    assert up.kappa == 4.0
    assert up.lr == pytest.approx(2e-3 * 2.0, rel=1e-12)
    assert up.beta1 == pytest.approx(1 - 4 * 0.1, rel=1e-12)  # 0.6
    assert up.beta2 == pytest.approx(1 - 4 * 0.05, rel=1e-12)  # 0.8
    assert up.eps == pytest.approx(1e-8 / 2.0, rel=1e-12)
    assert up.ema == pytest.approx(0.99**4, rel=1e-12) and up.ema_kappa == 4.0
    down = scaled_recipe(TrainerConfig(batch_size=4, optim=TUNED))  # kappa = 1/4
    assert down.lr == pytest.approx(1e-3, rel=1e-12)
    assert down.beta1 == pytest.approx(0.975, rel=1e-12)
    assert down.beta2 == pytest.approx(0.9875, rel=1e-12)
    assert down.eps == pytest.approx(2e-8, rel=1e-12)
    assert down.ema == pytest.approx(0.99**0.25, rel=1e-12)
    # the EMA helper the trainer uses follows the same reference
    assert ema_momentum(TrainerConfig(batch_size=64, optim=TUNED)) == pytest.approx(0.99**4)


def test_kappa_one_and_no_reference_are_the_identity() -> None:
    same = TrainerConfig(batch_size=16, optim=TUNED)
    recipe = scaled_recipe(same)
    assert (recipe.kappa, recipe.lr, recipe.beta1, recipe.beta2, recipe.eps, recipe.ema) == (
        1.0, 2e-3, 0.9, 0.95, 1e-8, 0.99,
    )
    assert at_batch_size(same).optim == replace(TUNED, reference_batch_size=None)
    # no reference: the Adam settings never move, whatever the batch size; the EMA alone follows
    # its own (older) ema_batch_size reference
    plain = TrainerConfig(batch_size=64, optim=replace(TUNED, reference_batch_size=None, ema_batch_size=16))
    unscaled = scaled_recipe(plain)
    assert (unscaled.kappa, unscaled.lr, unscaled.beta1, unscaled.beta2, unscaled.eps) == (
        1.0, 2e-3, 0.9, 0.95, 1e-8,
    )
    assert unscaled.ema == pytest.approx(0.99**4)
    assert at_batch_size(TrainerConfig()) == TrainerConfig()  # the defaults are untouched


def test_a_kappa_that_leaves_no_valid_beta_names_the_key() -> None:
    # kappa = 11: 1 - beta1 = 0.1 * 11 = 1.1, so beta1 would be -0.1
    with pytest.raises(ValueError, match=r"optim\.reference_batch_size: .*kappa = 11.*beta1 = 0\.9 to -0\.1"):
        scaled_recipe(TrainerConfig(batch_size=176, optim=TUNED))
    # kappa = 21: beta2 = 0.95 has no valid value while beta1 = 0.99 still has one (0.79)
    with pytest.raises(ValueError, match="beta2"):
        scaled_recipe(TrainerConfig(batch_size=21, optim=replace(TUNED, beta1=0.99, reference_batch_size=1)))
    with pytest.raises(ValueError, match=r"optim\.ema_batch_size: 8 differs"):
        scaled_recipe(TrainerConfig(optim=replace(TUNED, ema_batch_size=8)))
    with pytest.raises(ValueError, match=r"optim\.reference_batch_size: must be a positive"):
        scaled_recipe(TrainerConfig(optim=replace(TUNED, reference_batch_size=0)))
    # at exactly 1 - beta = 1 the rule still gives a valid beta of 0
    assert scaled_recipe(TrainerConfig(batch_size=20, optim=replace(TUNED, beta1=0.5, reference_batch_size=10))).beta1 == 0.0


def _spec(config: TrainerConfig, steps: int, **fields: object) -> RunSpec:
    point = RunPoint(n_params=12_000, tokens=steps * config.batch_size * config.seq_len)
    return RunSpec(run_key="scaled", study="test", seed=5, point=point, trainer=config, **fields)  # type: ignore[arg-type]


def test_a_scaled_run_trains_with_the_scaled_recipe_and_records_it(
    tiny_config: ConfigFactory, tmp_path: Path
) -> None:
    optim = OptimConfig(lr=2e-3, ema=0.9, reference_batch_size=2)
    config = tiny_config(optim=optim)  # batch_size 8: kappa = 4
    steps = 30
    result = DenseTrainer(config).train(_spec(config, steps, checkpoint_dir=str(tmp_path)), RecordingSink())
    assert result.curve[-1].train_loss < result.curve[0].train_loss - 0.5  # it trains
    assert math.isfinite(result.final_loss)
    assert result.metrics["recipe/kappa"] == 4.0
    assert result.metrics["recipe/lr"] == pytest.approx(4e-3)
    assert result.metrics["recipe/beta1"] == pytest.approx(0.6)
    assert result.metrics["recipe/beta2"] == pytest.approx(0.8)
    assert result.metrics["recipe/eps"] == pytest.approx(5e-9)
    assert result.metrics["recipe/ema"] == pytest.approx(0.9**4)
    # the schedule peaks at the scaled lr ...
    scaled = replace(optim, lr=4e-3, reference_batch_size=None)
    assert [p.lr for p in result.curve] == [lr_at(p.step - 1, steps, scaled) for p in result.curve]
    # ... and the optimiser ran with the scaled betas and eps
    state = load_checkpoint(checkpoint_path(tmp_path), "scaled")
    assert state is not None
    for group in state.optimizer["param_groups"]:
        assert group["betas"] == pytest.approx((0.6, 0.8)) and group["eps"] == pytest.approx(5e-9)


def test_a_reference_at_the_run_batch_size_trains_the_unscaled_run(tiny_config: ConfigFactory) -> None:
    plain = tiny_config()
    same = tiny_config(optim=OptimConfig(reference_batch_size=plain.batch_size))
    a = DenseTrainer(plain).train(_spec(plain, 10), RecordingSink())
    b = DenseTrainer(same).train(_spec(same, 10), RecordingSink())
    assert a.final_loss == b.final_loss and a.curve == b.curve
    assert "recipe/lr" not in a.metrics and b.metrics["recipe/kappa"] == 1.0
