"""No credential in any cluster file, every definition in the guide, and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusters.validate import find_credentials, main

from .conftest import CLUSTERS

FILES = sorted(p for p in CLUSTERS.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
DEFINITIONS = [p for p in FILES if p.suffix != ".py" and p.name != "README.md"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CLUSTERS)))
def test_no_literal_credentials(path: Path) -> None:
    assert find_credentials(path.read_text()) == []


@pytest.mark.parametrize(
    "line",
    [
        "password: hunter2hunter2",
        "  POSTGRES_PASSWORD=s3cr3t-value",
        'db = "postgresql://mlflow:' + 'pa55word@db.internal:5432/mlflow"',
        "aws_access_key_id = AKIA" + "ABCDEFGHIJKLMNOP",
        "aws_secret_access_key: " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "-----BEGIN RSA " + "PRIVATE KEY-----",
    ],
)
def test_credential_patterns_are_found(line: str) -> None:
    assert find_credentials(line)


@pytest.mark.parametrize(
    "line",
    [
        'password: "${PGPASSWORD}"',
        '--from-literal=password="$PGPASS"',
        'uri="postgresql://mlflow:${PGPASS}@isoflop-postgres:5432/mlflow"',
        "postgresql://<user>:<password>@<host>:5432/mlflow",
        "~/.ray/auth_token: ~/.ray/auth_token",
        "- name: POSTGRES_PASSWORD",
    ],
)
def test_references_are_not_credentials(line: str) -> None:
    assert find_credentials(line) == []


@pytest.mark.parametrize("path", DEFINITIONS, ids=lambda p: str(p.relative_to(CLUSTERS)))
def test_every_definition_is_in_the_guide(path: Path) -> None:
    assert f"`{path.relative_to(CLUSTERS).as_posix()}`" in (CLUSTERS / "README.md").read_text()


def test_guide_states_the_security_defaults() -> None:
    guide = (CLUSTERS / "README.md").read_text()
    for phrase in ("127.0.0.1", "RAY_AUTH_MODE=token", "secretKeyRef", "MLFLOW_BACKEND_STORE_URI", "ReadWriteMany"):
        assert phrase in guide


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(CLUSTERS)]) == 0
    bad = tmp_path / "cluster.yaml"
    bad.write_text((CLUSTERS / "aws-gpu.yaml").read_text().replace("max_workers: 8\nupscaling", "max_worker: 8\nupscaling"))
    assert main([str(bad)]) == 1
    assert "Ray's config validator" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.yaml")]) == 2
