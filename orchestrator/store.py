"""Finding a study in a tracking store by name (for ``status``, ``export`` and ``resume``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from orchestrator.config import StudyConfig
from orchestrator.loading import load_study, study_from_dict
from orchestrator.mlflow_tracker import ROLE_TAG, STUDY_TAG, default_tracking_uri
from orchestrator.secrets import redact_text


def load_stored_study(name: str, uri: str | None = None) -> StudyConfig:
    """The latest resolved config of study ``name`` as logged on its parent run, tracked in
    ``uri`` (the embedded store under the working directory by default)."""
    uri = uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise LookupError(f"no study named {name!r}: no tracking store at {redact_text(uri)} (pass the study YAML instead)")
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        filter_string=f"tags.`{ROLE_TAG}` = 'study' and tags.`{STUDY_TAG}` = '{name}'",
        max_results=1,
    ) if experiments else []
    if not runs:
        raise LookupError(f"no study named {name!r} in {redact_text(uri)}")
    run_id = runs[0].info.run_id
    configs = sorted(a.path for a in client.list_artifacts(run_id, "study"))
    if not configs:
        raise LookupError(f"study {name!r} in {redact_text(uri)} has no stored configuration")
    local = client.download_artifacts(run_id, configs[-1])
    raw = yaml.safe_load(Path(local).read_text())
    # the stored configuration has its credentials masked (orchestrator.secrets): the study
    # lives in the store it was found in, so that URI is the one to keep using
    raw.setdefault("tracking", {})["uri"] = uri
    return study_from_dict(raw, stored=True)


def resolve_study_arg(arg: str, overrides: Sequence[str] = (), store: str | None = None) -> StudyConfig:
    """A study named on a command line or in the Python API: its YAML (``store`` replaces its
    ``tracking.uri``; ``overrides`` are ``key=value`` strings) or its name, from the configuration
    stored on its parent run in ``store`` (default ``$MLFLOW_TRACKING_URI``, else the embedded
    store under the working directory)."""
    if Path(arg).is_file() or arg.endswith((".yaml", ".yml")):
        if store:
            overrides = [*overrides, f"tracking.uri={store}"]
        return load_study(arg, overrides)
    return load_stored_study(arg, store or os.environ.get("MLFLOW_TRACKING_URI") or None)
