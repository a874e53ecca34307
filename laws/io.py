"""Reading fitting data from CSV files."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def load_table(
    path: str | Path, columns: Mapping[str, str] | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Read law inputs and losses from a CSV file.

    ``columns`` maps law names to CSV column names, e.g.
    ``{"N": "Model Size", "C": "Training FLOP", "loss": "loss"}``; names not mapped are read
    from columns of the same name. Without ``columns``, every column except ``loss`` is an
    input. When ``C`` is given and ``D`` is not, tokens are derived as D = C / (6 N) (training
    FLOPs C = 6 N D, Kaplan et al. 2020) and ``C`` is dropped. Returns ``(inputs, loss)``.
    """
    path = Path(path)
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path}: no data rows")
    header = list(rows[0].keys())
    mapping = dict(columns) if columns else {h: h for h in header}
    mapping.setdefault("loss", "loss")
    missing = {k: v for k, v in mapping.items() if v not in header}
    if missing:
        raise ValueError(f"{path}: columns {sorted(missing.values())} not found; the file has {header}")

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
