"""The replay trainer: answers runs from a table of runs already finished elsewhere.

With it a study's grid is the table's rows (``orchestrator.grid`` asks :func:`table_points`), and
"training" a run looks its loss up, so selection strategies can be compared on real past studies
without training anything. A row's cost is ``trainer.replay.cost``, an expression of N and D
parsed with the same whitelist as custom laws (no ``eval``). Several rows at the same (N, D) are
replicates: the run with seed s takes the (s mod k)-th of the k rows.
"""

from __future__ import annotations

import functools
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainers.base import CurvePoint, MetricSink, RunPlan, RunPoint, RunResult, RunSpec, Trainer
from trainers.config import ReplayConfig, TrainerConfig


@dataclass(frozen=True)
class ReplayTable:
    """Rows of a finished-runs table: N, D (whole numbers) and the loss of each row."""

    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    by_point: dict[tuple[int, int], list[float]]

    def points(self) -> list[tuple[int, int]]:
        """Distinct (N, D) in the table's order."""
        return list(self.by_point)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: float, columns: tuple[tuple[str, str], ...], max_loss: float | None) -> ReplayTable:
    from laws.io import load_table

    inputs, loss = load_table(path, dict(columns) or None)
    if "N" not in inputs or "D" not in inputs:
        raise ValueError(f"trainer.replay.columns: {path} must give N and D (or C), found {sorted(inputs)}")
    keep = np.isfinite(loss) & (loss > 0) & (inputs["N"] > 0) & (inputs["D"] > 0)
    if max_loss is not None:
        if keep.any() and not (keep & (loss <= max_loss)).any():
            raise ValueError(f"trainer.replay.max_loss: {max_loss:g} drops every row of {path} (lowest loss "
                             f"{float(loss[keep].min()):.4g})")
        keep &= loss <= max_loss
    n = np.rint(inputs["N"][keep]).astype(np.int64)
    d = np.rint(inputs["D"][keep]).astype(np.int64)
    y = loss[keep]
    if y.size == 0:
        raise ValueError(f"trainer.replay.path: no usable rows in {path}")
    by_point: dict[tuple[int, int], list[float]] = defaultdict(list)
    for ni, di, yi in zip(n.tolist(), d.tolist(), y.tolist(), strict=True):
        by_point[(ni, di)].append(yi)
    return ReplayTable(n=n, d=d, loss=y, by_point=dict(by_point))


def load_replay_table(config: ReplayConfig) -> ReplayTable:
    """The table ``config`` names (cached per file version). Raises ValueError naming the key."""
    if not config.path:
        raise ValueError("trainer.replay.path: a replay study needs a table of finished runs")
    path = Path(config.path)
    if not path.is_file():
        raise ValueError(f"trainer.replay.path: no such file {config.path!r}")
    return _load(str(path.resolve()), os.path.getmtime(path), tuple(sorted(config.columns.items())), config.max_loss)


@functools.lru_cache(maxsize=8)
def _cost_fn(expression: str):  # noqa: ANN202 - a compiled expression
    from laws.custom import compile_expression

    try:
        return compile_expression(expression, {"N", "D"})
    except ValueError as exc:
        raise ValueError(f"trainer.replay.cost: {exc}") from None


def row_cost(config: ReplayConfig, n: float, d: float) -> float:
    """FLOPs of a run at (N, D) under the table's cost expression."""
    import torch

    env = {"N": torch.tensor([float(n)], dtype=torch.float64), "D": torch.tensor([float(d)], dtype=torch.float64)}
    value = float(_cost_fn(config.cost)(env).reshape(-1)[0])
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"trainer.replay.cost: {config.cost!r} gives {value} at N={n:g}, D={d:g}")
    return value


def table_points(config: TrainerConfig) -> list[RunPoint]:
    """One grid point per distinct (N, D) of the table."""
    return [RunPoint(n_params=n, tokens=d) for n, d in load_replay_table(config.replay).points()]


class ReplayTrainer(Trainer):
    """Looks a run's final loss up in the table; costs nothing but reports the row's FLOPs."""

    kind = "replay"

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config

    def plan(self, point: RunPoint) -> RunPlan:
        flops = row_cost(self.config.replay, point.n_params, point.tokens)
        return RunPlan(
            shape=None,
            n_params=point.n_params,
            n_params_non_embedding=point.n_params,
            n_params_active=point.n_params,
            flops_per_token=flops / point.tokens,
            tokens=point.tokens,
            steps=1,
            flops=flops,
            flop_convention=f"table: {self.config.replay.cost}",
        )

    def train(self, spec: RunSpec, sink: MetricSink) -> RunResult:
        start = time.perf_counter()
        table = load_replay_table(self.config.replay)
        key = (spec.point.n_params, spec.point.tokens)
        rows = table.by_point.get(key)
        if not rows:
            raise ValueError(f"no row of {self.config.replay.path} has N={key[0]}, D={key[1]}")
        loss = rows[spec.seed % len(rows)]
        sink.log_metrics({"train_loss": loss, "lr": 0.0, "tokens": spec.point.tokens, "eval_loss": loss}, step=1)
        return RunResult(
            run_key=spec.run_key,
            plan=self.plan(spec.point),
            final_loss=loss,
            eval_losses={},
            curve=(CurvePoint(step=1, tokens=spec.point.tokens, train_loss=loss, lr=0.0),),
            wall_time_s=time.perf_counter() - start,  # the lookup's own time
            tokens_per_s=0.0,
        )
