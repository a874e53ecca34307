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
        load_replay_table(config.replay).check_costs(config.replay)


def test_parquet_tables_with_inputs_losses_and_groups(tmp_path: Path) -> None:
    """A Parquet table whose rows differ by more than N and D: its input columns are law inputs
    (and enter the cost), its loss columns are recorded as eval_loss/<column>, its group column
    labels each run's resampling unit."""
    import pandas as pd

    path = tmp_path / "runs.parquet"
    pd.DataFrame(
        {
            "N": [1000, 1000, 1000, 4000],
            "D": [20000, 20000, 20000, 80000],
            "sparsity": [0.0, 0.5, 0.5, 0.5],
            "loss": [3.5, 3.2, 3.3, 2.9],
            "code_loss": [3.9, 3.6, 3.7, 3.1],
            "family": ["a", "a", "a", "b"],
        }
    ).to_parquet(path)
    config = TrainerConfig(kind="replay", replay=ReplayConfig(
        path=str(path), columns={"S": "sparsity"}, inputs=["S"], losses=["code_loss"], group="family",
        cost="6*N*(1-S)*D"))
    points = table_points(config)
    assert points == [
        RunPoint(n_params=1000, tokens=20000, inputs=(("S", 0.0),), group="a"),
        RunPoint(n_params=1000, tokens=20000, inputs=(("S", 0.5),), group="a"),
        RunPoint(n_params=4000, tokens=80000, inputs=(("S", 0.5),), group="b"),
    ]
    trainer = ReplayTrainer(config)
    result = trainer.train(RunSpec(run_key="k", study="s", seed=1, point=points[1], trainer=config), NullSink())
    assert (result.final_loss, result.eval_losses) == (3.3, {"code_loss": 3.7})  # seed 1: the second replicate
    assert trainer.plan(points[1]).flops == 6 * 1000 * 0.5 * 20000
    assert trainer.plan(points[0]).flops == 6 * 1000 * 20000


def test_a_spreadsheets_csv_and_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffN,D,loss\n1000,20000,3.5\n".encode())  # the byte-order mark spreadsheets write
    assert table_points(TrainerConfig(kind="replay", replay=ReplayConfig(path=str(path)))) == [
        RunPoint(n_params=1000, tokens=20000)]
    for replay, needle in (
        ({"inputs": ["S"]}, "trainer.replay.inputs[0]: "),
        ({"losses": ["code"]}, "trainer.replay.losses[0]: "),
        ({"group": "family"}, "trainer.replay.group: "),
        ({"columns": {"N": "Model Sise"}}, "trainer.replay.columns.N: "),
    ):
        with pytest.raises(ValueError, match=needle.replace("[", r"\[")):
            load_replay_table(ReplayConfig(path=str(path), **replay))


def test_rows_that_cannot_be_runs_are_counted(tmp_path: Path) -> None:
    config = _config(tmp_path, "N,D,loss\n1000,20000,3.5\n1000,20000,nan\n-5,20000,3.0\n2000,20000,-1\n")
    table = load_replay_table(config.replay)
    assert table.points() == [(1000, 20000, ())] and table.dropped == 3


def test_weights_groups_and_empty_cells_of_a_table(tmp_path: Path) -> None:
    """Mixture weights must lie on the simplex, every row needs a group, replicates of a point
    share one (rows of two code bases at one point collapsed into one group, and the bootstrap
    gave intervals of width zero), and an empty cell leaves its row out in a CSV as in Parquet."""
    import pandas as pd

    def load(text: str, **replay) -> object:
        path = tmp_path / "t.csv"
        path.write_text(text)
        return load_replay_table(ReplayConfig(path=str(path), **replay))

    with pytest.raises(ValueError, match=r"trainer\.replay\.inputs: .*row 2: the mixture weights h1\+h2 must be non-negative and sum to 1"):
        load("N,D,h1,h2,loss\n1e6,1e8,0.5,0.6,3.0\n", inputs=["h1", "h2"])
    assert load("N,D,h1,h2,loss\n1e6,1e8,0.25,0.75,3.0\n", inputs=["h1", "h2"]).points() == [(1000000, 100000000, (0.25, 0.75))]
    with pytest.raises(ValueError, match=r"trainer\.replay\.group: .*row 3 has no group"):
        load("N,D,loss,src\n1e6,1e8,3.0,a\n1e7,1e8,2.9,\n", group="src")
    with pytest.raises(ValueError, match=r"trainer\.replay\.group: .*row 3 repeats the point of an earlier row .* in another group \('b', not 'a'\)"):
        load("N,D,loss,src\n1e6,1e8,3.0,a\n1e6,1e8,2.9,b\n", group="src")
    csv = load("N,D,loss,code\n1e6,1e8,3.0,\n1e7,1e8,2.9,3.2\n", losses=["code"])
    frame = pd.DataFrame({"N": [1e6, 1e7], "D": [1e8, 1e8], "loss": [3.0, 2.9], "code": [None, 3.2]})
    frame.to_parquet(tmp_path / "t.parquet")
    parquet = load_replay_table(ReplayConfig(path=str(tmp_path / "t.parquet"), losses=["code"]))
    assert csv.points() == parquet.points() == [(10000000, 100000000, ())] and csv.dropped == parquet.dropped == 1
    # a Parquet file's rows are counted from 1 (a CSV's from 2: its first line is the header)
    pd.DataFrame({"N": [1e6, 1e7], "D": [1e8, 1e8], "loss": [3.0, "x"]}).astype(str).to_parquet(tmp_path / "s.parquet")
    with pytest.raises(ValueError, match=r"row 2, column 'loss': 'x' is not a number"):
        load_replay_table(ReplayConfig(path=str(tmp_path / "s.parquet")))
