"""The Markdown report's run table: budgets in order, sizes in order within each, no empty axes."""

from __future__ import annotations

from typing import Any

from orchestrator.report import markdown_report


def _table(runs: list[dict[str, Any]]) -> list[list[str]]:
    """The report's run table as rows of cells (the header row first)."""
    text = markdown_report({"laws": [], "runs": runs})
    lines = text[text.index("## Runs") :].splitlines()[2:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    return [rows[0], *rows[2:]]


def _run(key: str, n: float, c: float, **more: float) -> dict[str, Any]:
    return {"run_key": key * 8, "run_id": key, "N": n, "D": c / (7.7 * n), "C": c, "loss": 3.0, **more}


def test_runs_are_listed_by_budget_then_size() -> None:
    # the runs of one isoFLOP budget count slightly different FLOPs: sorted by exact C, the
    # sizes of the 1e18 budget would come out 3e7, 1e7, 1e8
    runs = [
        _run("c", 1e8, 1.02e18),
        _run("e", 3e8, 1.0e19),
        _run("a", 1e7, 0.99e18),
        _run("d", 1e8, 0.98e19),
        _run("b", 3e7, 0.97e18),
    ]
    header, *rows = _table(runs)
    assert header[:4] == ["run", "N", "D", "C"]
    assert [r[0].strip("`")[0] for r in rows] == ["a", "b", "c", "d", "e"]
    assert [r[1] for r in rows] == ["1e+07", "3e+07", "1e+08", "1e+08", "3e+08"]


def test_sparsity_is_a_column_only_when_some_run_is_sparse() -> None:
    dense = [_run("a", 1e7, 1e18, S=0.0), _run("b", 3e7, 1e18, S=0.0)]
    header, *rows = _table(dense)
    assert header == ["run", "N", "D", "C", "loss"]
    assert all(len(r) == 5 for r in rows)
    sparse = [_run("a", 1e7, 1e18, S=0.0), _run("b", 3e7, 1e18, S=0.75)]
    header, *rows = _table(sparse)
    assert header == ["run", "N", "D", "C", "S", "loss"]
    assert [r[4] for r in rows] == ["0", "0.75"]


def test_a_law_not_fitted_is_listed_apart_from_the_next_heading() -> None:
    study = {"name": "s", "finished_runs": 3, "not_fitted": {"chinchilla": "only 3 data points"}}
    text = markdown_report({"study": study, "laws": [], "runs": [_run("a", 1e7, 1e18)]})
    assert "- export schema version: None\n- law `chinchilla` not fitted: only 3 data points\n\n" in text
