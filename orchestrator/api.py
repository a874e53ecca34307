"""The Python API over a study's store: its runs as a DataFrame, its latest fitted laws.

    from orchestrator.api import study_runs, latest_fits
    df = study_runs("quickstart")            # or a StudyConfig, or a study YAML path
    fits = latest_fits("quickstart")         # {"chinchilla": laws.LawFit, ...}
    fits["chinchilla"].predict(N=1e9, D=2e10)

Both read the tracking store only (no Ray); ``latest_fits`` returns what the study last logged on
its parent run (the online refit, or the final fit once the study ended).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

import laws
from orchestrator.config import StudyConfig
from orchestrator.mlflow_tracker import KEY_TAG, PARENT_TAG, MlflowTracker
from orchestrator.study import open_tracker


def resolve_study(study: StudyConfig | str | Path) -> StudyConfig:
    """A StudyConfig from itself, a study YAML path, or a study name in the local store."""
    if isinstance(study, StudyConfig):
        return study
    from orchestrator.loading import load_study
    from orchestrator.store import load_stored_study

    text = str(study)
    if Path(text).is_file() or text.endswith((".yaml", ".yml")):
        return load_study(text)
    return load_stored_study(text)


def _attached(study: StudyConfig | str | Path) -> tuple[StudyConfig, MlflowTracker]:
    config = resolve_study(study)
    tracker = open_tracker(config)
    tracker.attach(config.name)
    return config, tracker


def study_runs(study: StudyConfig | str | Path) -> pd.DataFrame:
    """One row per training attempt: run key and id, status, law inputs (N, D, C, ...), every
    param and the final metrics (``final_loss``, ``eval_loss/<domain>``, ``tokens_per_s``...)."""
    _, tracker = _attached(study)
    rows = []
    for run in tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{tracker.parent_id}'", max_results=50000
    ):
        row: dict[str, object] = {
            "run_key": run.data.tags.get(KEY_TAG),
            "run_id": run.info.run_id,
            "status": run.info.status,
            "attempt": int(run.data.tags.get("isoflop.attempt", "1")),
            "failure": run.data.tags.get("isoflop.failure"),
        }
        for k, v in run.data.params.items():
            name = k.removeprefix("law.")
            try:
                row[name] = float(v)
            except ValueError:
                row[name] = v
        row.update(run.data.metrics)
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.sort_values(["C", "N"]).reset_index(drop=True) if {"C", "N"} <= set(df.columns) else df


def latest_fits(study: StudyConfig | str | Path) -> dict[str, laws.LawFit]:
    """The latest fit of every law the study logged, as :class:`laws.LawFit` objects."""
    config, tracker = _attached(study)
    out = {}
    from orchestrator.fitting import law_name

    for name in (law_name(c) for c in config.laws):
        try:
            local = tracker.client.download_artifacts(tracker.parent_id, f"fits/{name}.json")
        except Exception:  # noqa: BLE001 - MLflow raises several types for a missing artifact
            continue
        out[name] = laws.LawFit.from_dict(json.loads(Path(local).read_text()))
    return out
