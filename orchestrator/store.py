"""Finding a study in a tracking store by name (for ``status``, ``export`` and ``resume``)."""

from __future__ import annotations

from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from orchestrator.config import StudyConfig
from orchestrator.loading import study_from_dict
from orchestrator.mlflow_tracker import ROLE_TAG, STUDY_TAG, default_tracking_uri


def load_stored_study(name: str, uri: str | None = None) -> StudyConfig:
    """The latest resolved config of study ``name`` as logged on its parent run."""
    uri = uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise LookupError(f"no study named {name!r}: no tracking store at {uri} (pass the study YAML instead)")
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        filter_string=f"tags.`{ROLE_TAG}` = 'study' and tags.`{STUDY_TAG}` = '{name}'",
        max_results=1,
    ) if experiments else []
    if not runs:
        raise LookupError(f"no study named {name!r} in {uri}")
    run_id = runs[0].info.run_id
    configs = sorted(a.path for a in client.list_artifacts(run_id, "study"))
    if not configs:
        raise LookupError(f"study {name!r} in {uri} has no stored configuration")
    local = client.download_artifacts(run_id, configs[-1])
    return study_from_dict(yaml.safe_load(Path(local).read_text()))
