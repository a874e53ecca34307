"""WSD cooldown branches: a branch continued from a trunk's kept checkpoint ends exactly as a run
trained from scratch to its token count."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from tests.trainers.conftest import RecordingSink
from trainers.base import RunPoint, RunSpec
from trainers.checkpoint import kept_checkpoint_path, load_model_state
from trainers.config import OptimConfig, TrainerConfig
from trainers.dense import DenseTrainer
from trainers.schedule import cooldown_steps, lr_at

ConfigFactory = Callable[..., TrainerConfig]
WARMUP = 4


def _spec(config: TrainerConfig, steps: int, key: str, **fields: object) -> RunSpec:
    point = RunPoint(n_params=12_000, tokens=steps * config.batch_size * config.seq_len, mixture=(0.6, 0.4))
    return RunSpec(run_key=key, study="test", seed=11, point=point, trainer=config, **fields)  # type: ignore[arg-type]


def test_shared_warmup_makes_trunk_and_branches_agree_before_the_branch_point() -> None:
    branch = OptimConfig(schedule="wsd", warmup_steps=WARMUP, cooldown_frac=0.25)
    trunk = replace(branch, cooldown_frac=0.0)
    for total in (20, 40):
        start = total - cooldown_steps(total, branch)
        assert [lr_at(s, total, branch) for s in range(start)] == [lr_at(s, 1000, trunk) for s in range(start)]
        assert lr_at(total - 1, total, branch) == pytest.approx(branch.min_lr_frac * branch.lr)


def test_a_branch_ends_exactly_as_a_run_trained_from_scratch(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    optim = OptimConfig(schedule="wsd", warmup_steps=WARMUP, cooldown_frac=0.25)
    branch_config = tiny_config(optim=optim)
    trunk_config = tiny_config(optim=replace(optim, cooldown_frac=0.0))
    lengths = (20, 40)
    points = [n - cooldown_steps(n, optim) for n in lengths]  # 15 and 30
    trunk = DenseTrainer(trunk_config)
    trunk.train(_spec(trunk_config, points[-1], "trunk", checkpoint_dir=str(tmp_path), keep_steps=tuple(points)), RecordingSink())
    for n, b in zip(lengths, points, strict=True):
        kept = kept_checkpoint_path(tmp_path, b)
        assert load_model_state(kept)[1] == b
        sink = RecordingSink()
        branched = DenseTrainer(branch_config).train(_spec(branch_config, n, f"b{n}", branch_from=str(kept)), sink)
        trained = [s for s, m in sink.calls if "train_loss" in m]
        assert min(trained) > b, "a branch trains only its cooldown"
        scratch = DenseTrainer(branch_config).train(_spec(branch_config, n, f"s{n}"), RecordingSink())
        assert branched.final_loss == scratch.final_loss
        assert branched.eval_losses == scratch.eval_losses


def test_a_branch_of_another_shape_is_refused(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    optim = OptimConfig(schedule="wsd", warmup_steps=WARMUP, cooldown_frac=0.25)
    config = tiny_config(optim=replace(optim, cooldown_frac=0.0))
    DenseTrainer(config).train(_spec(config, 15, "trunk", checkpoint_dir=str(tmp_path), keep_steps=(15,)), RecordingSink())
    other = replace(_spec(tiny_config(optim=optim), 20, "b"), branch_from=str(kept_checkpoint_path(tmp_path, 15)))
    other = replace(other, point=replace(other.point, n_params=40_000))
    with pytest.raises(ValueError, match="branch_from"):
        DenseTrainer(other.trainer).train(other, RecordingSink())
