"""Shared paths and loaders of the cluster-definition tests (all offline, no Ray started)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ROOT / "clusters"
KUBERAY = CLUSTERS / "kuberay"
RAY_UP = {"aws": CLUSTERS / "aws-gpu.yaml", "gcp": CLUSTERS / "gcp-gpu.yaml"}


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.fixture(params=sorted(RAY_UP), ids=sorted(RAY_UP))
def ray_up_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each ``ray up`` config, freshly parsed (tests may edit their copy)."""
    return yaml.safe_load(RAY_UP[request.param].read_text())


@pytest.fixture
def kuberay_docs() -> list[dict[str, Any]]:
    """Every document of every manifest in clusters/kuberay/, freshly parsed."""
    return [d for f in sorted(KUBERAY.glob("*.yaml")) for d in load_docs(f)]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
