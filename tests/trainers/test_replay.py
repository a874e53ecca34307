"""The replay trainer answers runs from a table of finished runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainers.base import NullSink, RunPoint, RunSpec
from trainers.config import ReplayConfig, TrainerConfig
from trainers.replay import ReplayTrainer, load_replay_table, row_cost, table_points


def _config(tmp_path: Path, text: str, **replay) -> TrainerConfig:
    path = tmp_path / "runs.csv"
    path.write_text(text)
    return TrainerConfig(kind="replay", replay=ReplayConfig(path=str(path), **replay))


TABLE = "N,D,loss\n1000,20000,3.5\n1000,20000,3.7\n4000,80000,2.9\n8000,1000,9.0\n"


def test_rows_become_points_and_replicates_follow_the_seed(tmp_path: Path) -> None:
    config = _config(tmp_path, TABLE, max_loss=5.0)
    assert table_points(config) == [RunPoint(n_params=1000, tokens=20000), RunPoint(n_params=4000, tokens=80000)]
    trainer = ReplayTrainer(config)
    point = RunPoint(n_params=1000, tokens=20000)
    losses = [trainer.train(RunSpec(run_key="k", study="s", seed=s, point=point, trainer=config), NullSink()).final_loss
              for s in (0, 1, 2)]
    assert losses == [3.5, 3.7, 3.5]
    plan = trainer.plan(point)
    assert plan.flops == 6 * 1000 * 20000 and plan.shape is None


def test_cost_expression_and_column_mapping(tmp_path: Path) -> None:
    config = _config(tmp_path, "size,flop,L\n100,6e6,3.0\n", columns={"N": "size", "C": "flop", "loss": "L"},
                     cost="6*N*D + 1000")
    (point,) = table_points(config)
    assert (point.n_params, point.tokens) == (100, 10000)  # D = C / (6 N)
    assert row_cost(config.replay, 100, 10000) == 6e6 + 1000


@pytest.mark.parametrize(
    ("replay", "needle"),
    [
        ({"path": "/nonexistent.csv"}, "trainer.replay.path"),
        ({"cost": "__import__('os')"}, "trainer.replay.cost"),
        ({"max_loss": 0.1}, "trainer.replay.max_loss: 0.1 drops every row"),
    ],
)
def test_bad_tables_name_the_key(tmp_path: Path, replay: dict, needle: str) -> None:
    config = _config(tmp_path, TABLE)
    config = TrainerConfig(kind="replay", replay=ReplayConfig(**{"path": config.replay.path, **replay}))
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        table = load_replay_table(config.replay)
        row_cost(config.replay, float(table.n[0]), float(table.d[0]))
