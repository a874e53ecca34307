"""The Python API over a study's store: its runs as a DataFrame, its latest fitted laws.

    from orchestrator.api import study_runs, latest_fits
    df = study_runs("quickstart")            # or a StudyConfig, or a study YAML path
    fits = latest_fits("quickstart")         # {"chinchilla": laws.LawFit, ...}
    fits["chinchilla"].predict(N=1e9, D=2e10)
    study_runs("quickstart", tracking_uri="http://mlflow.internal:5000")

A study is found as ``isoflop status`` finds it: a YAML is read as written (``tracking_uri``
replaces its ``tracking.uri``), a name is looked up in ``tracking_uri``, else
``$MLFLOW_TRACKING_URI``, else the embedded store under the working directory.

Both read the tracking store only (no Ray); ``latest_fits`` returns what the study last logged on
its parent run (the online refit, or the final fit once the study ended).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

import laws
from orchestrator.config import StudyConfig
from orchestrator.mlflow_tracker import KEY_TAG, PARENT_TAG, MlflowTracker
from orchestrator.study import open_tracker

_PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No MLflow progress bar on stderr for each artifact read (a stored study, a fit document),
    as in the CLI; scoped to the call so the caller's own MLflow use keeps its setting, and a
    value the caller set is left alone."""
    if _PROGRESS_BAR_ENV in os.environ:
        yield
        return
    os.environ[_PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        os.environ.pop(_PROGRESS_BAR_ENV, None)


def resolve_study(study: StudyConfig | str | Path, *, tracking_uri: str | None = None) -> StudyConfig:
    """A StudyConfig from itself, a study YAML path, or a study's name in a tracking store.

    ``tracking_uri`` replaces the YAML's (or the StudyConfig's) ``tracking.uri``; a name is looked
    up in ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded store under the
    working directory, exactly as the ``isoflop`` commands do."""
    if isinstance(study, StudyConfig):
        if tracking_uri is None:
            return study
        return dataclasses.replace(study, tracking=dataclasses.replace(study.tracking, uri=tracking_uri))
    # the CLI's resolution, so that a name means the same study here as in ``isoflop status``
    from orchestrator.store import resolve_study_arg

    with _quiet_downloads():
        return resolve_study_arg(str(study), store=tracking_uri)


def _attached(study: StudyConfig | str | Path, tracking_uri: str | None) -> tuple[StudyConfig, MlflowTracker]:
    config = resolve_study(study, tracking_uri=tracking_uri)
    tracker = open_tracker(config)
    tracker.attach(config.name)
    return config, tracker


def study_runs(study: StudyConfig | str | Path, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """One row per training attempt: run key and id, status, law inputs (N, D, C, ...), every
    param and the final metrics (``final_loss``, ``eval_loss/<domain>``, ``tokens_per_s``...).
    ``tracking_uri``: the store to find the study in (see :func:`resolve_study`)."""
    _, tracker = _attached(study, tracking_uri)
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


def latest_fits(study: StudyConfig | str | Path, *, tracking_uri: str | None = None) -> dict[str, laws.LawFit]:
    """The latest fit of every law the study logged, as :class:`laws.LawFit` objects; a law with
    no fit yet is left out. ``tracking_uri``: the store to find the study in (see
    :func:`resolve_study`)."""
    from orchestrator.fitting import law_name

    config, tracker = _attached(study, tracking_uri)
    # a law not fitted yet has no document: listing first tells that apart from a store that
    # cannot be read or a document that does not parse, which are errors to raise
    logged = {Path(a.path).name for a in tracker.client.list_artifacts(tracker.parent_id, "fits")}
    out = {}
    with _quiet_downloads(), tempfile.TemporaryDirectory(prefix="isoflop-fits-") as scratch:
        for name in (law_name(c) for c in config.laws):
            if f"{name}.json" not in logged:
                continue
            local = tracker.client.download_artifacts(tracker.parent_id, f"fits/{name}.json", scratch)
            out[name] = laws.LawFit.from_dict(json.loads(Path(local).read_text()))
    return out


__all__ = ["latest_fits", "resolve_study", "study_runs"]
