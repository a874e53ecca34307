"""Reading fitting data from CSV or Parquet files, optionally keeping only the rows that meet
conditions."""

from __future__ import annotations

import csv
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: comparison operators a row condition may use (longest first, so "<=" is not read as "<")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_CONDITION = re.compile(r"^\s*(?P<column>.*?)\s*(?P<op><=|>=|==|!=|<|>|=>|=<|=)\s*(?P<value>.*?)\s*$")


@dataclass(frozen=True)
class Condition:
    """A row filter ``column op value`` on a numeric column (e.g. ``loss <= 3.44``)."""

    column: str
    op: str
    value: float

    def __call__(self, x: float) -> bool:
        return OPERATORS[self.op](x, self.value)

    def __str__(self) -> str:
        return f"{self.column}{self.op}{self.value:g}"


def parse_condition(text: str) -> Condition:
    """``"loss<=3.44"`` -> Condition("loss", "<=", 3.44). Parsed with a regular expression (no
    ``eval``); raises ValueError naming a missing or unknown operator, an empty column or a value
    that is not a number."""
    m = _CONDITION.match(text)
    if not m or not m.group("column"):
        raise ValueError(f"{text!r} is not COLUMN OP NUMBER with OP one of {', '.join(OPERATORS)}")
    column, op, value = m.group("column").strip("'\""), m.group("op"), m.group("value")
    if op not in OPERATORS:
        raise ValueError(f"{text!r}: unknown operator {op!r}; use one of {', '.join(OPERATORS)}")
    if any(o in value for o in ("<", ">", "=", "!")):
        raise ValueError(f"{text!r}: unknown operator in {op + value!r}; use one of {', '.join(OPERATORS)}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{text!r}: {value!r} is not a number") from None
    if math.isnan(number):
        raise ValueError(f"{text!r}: compare with a number, not NaN")
    return Condition(column, op, number)


#: file suffixes read as Parquet (anything else is CSV)
PARQUET_SUFFIXES = (".parquet", ".pq")


def read_rows(path: str | Path) -> tuple[list[str], list[dict[str, object]]]:
    """The header and rows of a table: a Parquet file (by its suffix, :data:`PARQUET_SUFFIXES`,
    read by pandas with pyarrow) or a CSV file (a UTF-8 byte-order mark, as spreadsheets write,
    is not part of the first column's name). Values stay as read (strings from a CSV); raises
    ValueError for a table without rows."""
    path = Path(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable Parquet file ({exc})") from None
        header = [str(c) for c in frame.columns]
        frame.columns = header
        rows: list[dict[str, object]] = frame.to_dict("records")
    else:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return header, rows


def load_table(
    path: str | Path, columns: Mapping[str, str] | None = None, where: Sequence[Condition | str] = ()
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Read law inputs and losses from a CSV or Parquet file (:func:`read_rows`).

    ``columns`` maps law names to CSV column names, e.g.
    ``{"N": "Model Size", "C": "Training FLOP", "loss": "loss"}``; names not mapped are read
    from columns of the same name. Without ``columns``, every column except ``loss`` is an
    input. When ``C`` is given and ``D`` is not, tokens are derived as D = C / (6 N) (training
    FLOPs C = 6 N D, Kaplan et al. 2020) and ``C`` is dropped. ``where``: conditions every kept
    row meets (:func:`parse_condition` strings or :class:`Condition`), on CSV columns or on the
    law names of ``columns``; e.g. ``["loss<=3.44"]`` keeps the 240 points of the Chinchilla
    replication. Returns ``(inputs, loss)``.
    """
    path = Path(path)
    header, rows = read_rows(path)
    mapping = dict(columns) if columns else {h: h for h in header}
    mapping.setdefault("loss", "loss")
    missing = {k: v for k, v in mapping.items() if v not in header}
    if missing:
        raise ValueError(f"{path}: columns {sorted(missing.values())} not found; the file has {header}")
    rows = _filter(path, rows, header, columns or {}, [c if isinstance(c, Condition) else parse_condition(c)
                                                         for c in where])

    def column(name: str) -> np.ndarray:
        out = np.empty(len(rows))
        for i, row in enumerate(rows):
            try:
                out[i] = float(row[name])
            except (TypeError, ValueError):
                raise ValueError(f"{path}: row {i + 2}, column {name!r}: {row[name]!r} is not a number") from None
        return out

    loss = column(mapping.pop("loss"))
    inputs = {}
    for law_name, col in mapping.items():
        try:
            inputs[law_name] = column(col)
        except ValueError:
            if columns:
                raise
    if "C" in inputs and "D" not in inputs:
        if "N" not in inputs:
            raise ValueError(f"{path}: deriving D = C/(6N) needs an N column")
        inputs["D"] = inputs.pop("C") / (6.0 * inputs["N"])
    return inputs, loss


def _filter(path: Path, rows: list[dict[str, object]], header: list[str], columns: Mapping[str, str],
            conditions: Sequence[Condition]) -> list[dict[str, object]]:
    for cond in conditions:
        if cond.column not in header and cond.column not in columns:
            raise ValueError(f"{path}: condition {str(cond)!r} names column {cond.column!r}, which the file does not "
                             f"have; columns are {header}")
    kept = []
    for i, row in enumerate(rows):
        ok = True
        for cond in conditions:
            name = cond.column if cond.column in header else columns[cond.column]
            try:
                x = float(row[name])
            except (TypeError, ValueError):
                raise ValueError(f"{path}: row {i + 2}, column {name!r}: {row[name]!r} is not a number "
                                 f"(condition {str(cond)!r})") from None
            ok = ok and cond(x)
        if ok:
            kept.append(row)
    if not kept:
        raise ValueError(f"{path}: no row meets {' and '.join(str(c) for c in conditions)}")
    return kept
