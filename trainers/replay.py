"""The replay trainer: answers runs from a table of runs already finished elsewhere.

With it a study's grid is the table's rows (``orchestrator.grid`` asks :func:`table_points`), and
"training" a run looks its loss up, so selection strategies can be compared on real past studies
without training anything. The table is a CSV or Parquet file (:func:`laws.io.read_rows`). A run
is a row's N, D and ``trainer.replay.inputs`` (more law inputs: S, h1.., L_T, ...); its losses are
the loss column and the ``losses`` columns (recorded as ``eval_loss/<column>``); ``group`` names
a column whose value is the row's bootstrap resampling unit. A row's cost is
``trainer.replay.cost``, an expression of N, D and the inputs parsed with the same whitelist as
custom laws (no ``eval``). Several rows at the same point are replicates: the run with seed s
takes the (s mod k)-th of the k rows.
"""

from __future__ import annotations

import functools
import math
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainers.base import CurvePoint, MetricSink, RunPlan, RunPoint, RunResult, RunSpec, Trainer
from trainers.config import ReplayConfig, TrainerConfig

#: a point of the table: N, D (whole numbers) and the other inputs' values, in ``inputs`` order
Key = tuple[int, int, tuple[float, ...]]


@dataclass(frozen=True)
class Row:
    """One row's answers: its loss, its other losses by column, and its group label."""

    loss: float
    losses: tuple[tuple[str, float], ...]
    group: str


@dataclass(frozen=True)
class ReplayTable:
    """The usable rows of a finished-runs table, by point (several rows: replicates)."""

    inputs: tuple[str, ...]  # the input columns beyond N and D, as law input names
    by_point: dict[Key, list[Row]]
    dropped: int  # rows left out: a loss or input not positive and finite, or above max_loss

    def points(self) -> list[Key]:
        """Distinct points in the table's order."""
        return list(self.by_point)

    def check_costs(self, config: ReplayConfig) -> None:
        """:func:`row_cost` of every point (raises ValueError naming ``trainer.replay.cost`` at
        the first whose cost is not a positive number)."""
        for n, d, extra in self.by_point:
            row_cost(config, n, d, dict(zip(self.inputs, extra, strict=True)))


def _number(path: str, row: int, column: str, value: object) -> float:
    """A cell as a number: an empty one (a CSV's blank, a Parquet null) is NaN, so its row is
    left out as every row with a missing value is, whatever the format."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"trainer.replay.path: {path}: row {row}, column {column!r}: {value!r} is not a number") from None


def _label(value: object) -> str | None:
    """A group label, or None for an empty cell (blank, null, NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def mixture_weights(inputs: list[str] | tuple[str, ...]) -> list[str]:
    """The inputs that are mixture weights (h1 .. hk, as the mixture laws name them), in their
    order among ``inputs``."""
    return [name for name in inputs if re.fullmatch(r"h[1-9]\d*", name)]


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float, spec: tuple) -> ReplayTable:
    columns, inputs, losses, group, max_loss = spec
    config = ReplayConfig(path=path, columns=dict(columns), inputs=list(inputs), losses=list(losses), group=group,
                          max_loss=max_loss)
    return _load(path, config)


def _load(path: str, config: ReplayConfig) -> ReplayTable:
    from laws.io import PARQUET_SUFFIXES, read_rows

    try:
        header, rows = read_rows(path)
    except UnicodeDecodeError:  # the caller says the file is not text
        raise
    except ValueError as exc:
        raise ValueError(f"trainer.replay.path: {exc}") from None
    columns = dict(config.columns)

    def column_of(name: str, key: str) -> str:
        col = columns.get(name, name)
        if col not in header:
            raise ValueError(f"{key}: {path} has no column {col!r} (for {name}); its columns are {header}")
        return col

    if "N" not in columns and "N" not in header:
        raise ValueError(f"trainer.replay.columns: {path} must give N and D (or C), found {header}")
    n_col = column_of("N", "trainer.replay.columns.N")
    has_d = "D" in columns or "D" in header
    if not has_d and not ("C" in columns or "C" in header):
        raise ValueError(f"trainer.replay.columns: {path} must give N and D (or C), found {header}")
    d_col = column_of("D", "trainer.replay.columns.D") if has_d else column_of("C", "trainer.replay.columns.C")
    loss_col = column_of("loss", "trainer.replay.columns.loss")
    input_cols = [column_of(name, f"trainer.replay.inputs[{i}]") for i, name in enumerate(config.inputs)]
    loss_cols = []
    for i, name in enumerate(config.losses):
        if name not in header:
            raise ValueError(f"trainer.replay.losses[{i}]: {path} has no column {name!r}; its columns are {header}")
        loss_cols.append(name)
    if config.group is not None and config.group not in header:
        raise ValueError(f"trainer.replay.group: {path} has no column {config.group!r}; its columns are {header}")

    first = 1 if Path(path).suffix.lower() in PARQUET_SUFFIXES else 2  # a CSV's line 1 is its header
    weights = [config.inputs.index(name) for name in mixture_weights(config.inputs)]
    by_point: dict[Key, list[Row]] = defaultdict(list)
    dropped = 0
    lowest = math.inf
    for i, row in enumerate(rows):
        line = i + first
        n = _number(path, line, n_col, row[n_col])
        d = _number(path, line, d_col, row[d_col])
        loss = _number(path, line, loss_col, row[loss_col])
        extra = tuple(_number(path, line, c, row[c]) for c in input_cols)
        others = tuple((c, _number(path, line, c, row[c])) for c in loss_cols)
        usable = all(math.isfinite(v) and v > 0 for v in (n, d, loss, *(v for _, v in others))) and all(
            math.isfinite(v) for v in extra
        )
        if usable:
            lowest = min(lowest, loss)
        if not usable or (config.max_loss is not None and loss > config.max_loss):
            dropped += 1
            continue
        if not has_d:
            d = d / (6.0 * n)  # C = 6 N D (Kaplan et al. 2020)
        if weights:  # a mixture's weights, as grid.mixture's: on the simplex
            w = [extra[j] for j in weights]
            if min(w) < 0 or abs(sum(w) - 1.0) > 1e-6:
                names = "+".join(config.inputs[j] for j in weights)
                raise ValueError(f"trainer.replay.inputs: {path}: row {line}: the mixture weights {names} must be "
                                 f"non-negative and sum to 1, got {[round(x, 6) for x in w]}")
        group = ""
        if config.group is not None:
            label = _label(row[config.group])
            if label is None:
                raise ValueError(f"trainer.replay.group: {path}: row {line} has no group (column {config.group!r} is empty)")
            group = label
        key = (int(round(n)), int(round(d)), extra)
        if by_point[key] and by_point[key][0].group != group:
            # replicates of a point share its group (its resampling unit): rows of other groups are not replicates
            raise ValueError(f"trainer.replay.group: {path}: row {line} repeats the point of an earlier row (N={n:g}, "
                             f"D={d:g}) in another group ({group!r}, not {by_point[key][0].group!r}); give the rows "
                             "an input that tells them apart (trainer.replay.inputs)")
        by_point[key].append(Row(loss=loss, losses=others, group=group))
    if not by_point:
        if config.max_loss is not None and math.isfinite(lowest):
            raise ValueError(f"trainer.replay.max_loss: {config.max_loss:g} drops every row of {path} (lowest loss {lowest:.4g})")
        raise ValueError(f"trainer.replay.path: no usable rows in {path}")
    return ReplayTable(inputs=tuple(config.inputs), by_point=dict(by_point), dropped=dropped)


def load_replay_table(config: ReplayConfig) -> ReplayTable:
    """The table ``config`` names (cached per file version). Raises ValueError naming the key."""
    if not config.path:
        raise ValueError("trainer.replay.path: a replay study needs a table of finished runs")
    path = Path(config.path)
    if not path.is_file():
        raise ValueError(f"trainer.replay.path: no such file {config.path!r}")
    spec = (tuple(sorted(config.columns.items())), tuple(config.inputs), tuple(config.losses), config.group, config.max_loss)
    return _load_cached(str(path.resolve()), os.path.getmtime(path), spec)


@functools.lru_cache(maxsize=8)
def _cost_fn(expression: str, names: frozenset[str]):  # noqa: ANN202 - a compiled expression
    from laws.custom import compile_expression

    try:
        return compile_expression(expression, set(names))
    except ValueError as exc:
        raise ValueError(f"trainer.replay.cost: {exc}") from None


def row_cost(config: ReplayConfig, n: float, d: float, inputs: dict[str, float] | None = None) -> float:
    """FLOPs of a run at (N, D) and ``inputs`` under the table's cost expression."""
    import torch

    values = {"N": float(n), "D": float(d), **(inputs or {})}
    env = {k: torch.tensor([v], dtype=torch.float64) for k, v in values.items()}
    value = float(_cost_fn(config.cost, frozenset({"N", "D", *config.inputs}))(env).reshape(-1)[0])
    if not np.isfinite(value) or value <= 0:
        at = ", ".join(f"{k}={v:g}" for k, v in values.items())
        raise ValueError(f"trainer.replay.cost: {config.cost!r} gives {value} at {at}")
    return value


def table_points(config: TrainerConfig) -> list[RunPoint]:
    """One grid point per distinct point of the table (its group: its first row's)."""
    table = load_replay_table(config.replay)
    return [
        RunPoint(n_params=n, tokens=d, inputs=tuple(zip(table.inputs, extra, strict=True)), group=rows[0].group)
        for (n, d, extra), rows in table.by_point.items()
    ]


class ReplayTrainer(Trainer):
    """Looks a run's losses up in the table; costs nothing but reports the row's FLOPs."""

    kind = "replay"

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config

    def plan(self, point: RunPoint) -> RunPlan:
        flops = row_cost(self.config.replay, point.n_params, point.tokens, dict(point.inputs))
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

    def row(self, point: RunPoint, seed: int) -> Row | None:
        """The table's answer for a run at ``point`` with ``seed`` (None: no row has the point)."""
        table = load_replay_table(self.config.replay)
        values = dict(point.inputs)
        rows = table.by_point.get((point.n_params, point.tokens, tuple(values.get(name, math.nan) for name in table.inputs)))
        return rows[seed % len(rows)] if rows else None

    def train(self, spec: RunSpec, sink: MetricSink) -> RunResult:
        start = time.perf_counter()
        row = self.row(spec.point, spec.seed)
        if row is None:
            at = ", ".join(f"{k}={v:g}" for k, v in (("N", spec.point.n_params), ("D", spec.point.tokens), *spec.point.inputs))
            raise ValueError(f"no row of {self.config.replay.path} has {at}")
        sink.log_metrics({"train_loss": row.loss, "lr": 0.0, "tokens": spec.point.tokens, "eval_loss": row.loss}, step=1)
        return RunResult(
            run_key=spec.run_key,
            plan=self.plan(spec.point),
            final_loss=row.loss,
            eval_losses=dict(row.losses),
            curve=(CurvePoint(step=1, tokens=spec.point.tokens, train_loss=row.loss, lr=0.0),),
            wall_time_s=time.perf_counter() - start,  # the lookup's own time
            tokens_per_s=0.0,
        )
