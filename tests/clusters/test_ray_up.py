"""The `ray up` configs pass Ray's own validator and keep the project's install and security rules."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
from ray.autoscaler._private.util import prepare_config, validate_config

from clusters.validate import TORCH_PIN, check_ray_up, is_gpu_node_type, ray_validator_problems


def test_ray_validator_accepts_the_config(ray_up_config: dict[str, Any]) -> None:
    # what `ray up` does before it talks to the cloud: fill in defaults, then validate
    validate_config(prepare_config(copy.deepcopy(ray_up_config)))


def test_ray_validator_rejects_a_broken_copy(ray_up_config: dict[str, Any]) -> None:
    bad = copy.deepcopy(ray_up_config)
    bad["max_worker"] = 3  # a typo of max_workers: the schema allows no unknown keys
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(ray_up_config)
    next(iter(bad["available_node_types"].values()))["resources"]["GPU"] = 0.5
    assert ray_validator_problems(bad)


def test_every_check_passes(ray_up_config: dict[str, Any]) -> None:
    assert check_ray_up(ray_up_config) == []


def test_gpu_worker_types_declare_their_gpus(ray_up_config: dict[str, Any]) -> None:
    types = ray_up_config["available_node_types"]
    head = ray_up_config["head_node_type"]
    assert types[head]["resources"].get("GPU", 0) == 0
    assert not is_gpu_node_type(types[head])
    workers = {name: t for name, t in types.items() if name != head}
    gpu = {name: t for name, t in workers.items() if is_gpu_node_type(t)}
    assert len(gpu) >= 2, "a small and a large GPU worker type"
    for name, t in gpu.items():
        assert t["resources"]["GPU"] >= 1, name
        attached = t["node_config"].get("guestAccelerators")
        if attached:  # GCP: the declared count is what is attached
            assert sum(a["acceleratorCount"] for a in attached) == t["resources"]["GPU"], name
    assert any(t.get("min_workers", 0) >= 1 for t in gpu.values()), "one GPU node stays up"
    machines = {t["node_config"].get("InstanceType") or t["node_config"]["machineType"] for t in gpu.values()}
    assert machines & {"g5.2xlarge", "p4d.24xlarge", "a2-highgpu-1g", "a2-highgpu-8g"}


def test_a_gpu_type_without_gpu_resources_is_reported(ray_up_config: dict[str, Any]) -> None:
    bad = copy.deepcopy(ray_up_config)
    for name, t in bad["available_node_types"].items():
        if name != bad["head_node_type"]:
            t["resources"].pop("GPU", None)
    problems = check_ray_up(bad)
    assert any("declares no GPU" in p for p in problems)
    assert any("no GPU worker type" in p for p in check_ray_up({**bad, "available_node_types": {}}))


def test_torch_is_installed_before_the_project(ray_up_config: dict[str, Any]) -> None:
    commands = ray_up_config["setup_commands"]
    torch_at = next(i for i, c in enumerate(commands) if f"pip install -q {TORCH_PIN}" in c)
    project_at = next(i for i, c in enumerate(commands) if "cd ~/isoflop && pip install" in c and " -e ." in c)
    assert torch_at < project_at
    assert ray_up_config["file_mounts"]["~/isoflop"] == "."  # the synced working copy


def test_project_before_torch_is_reported(ray_up_config: dict[str, Any]) -> None:
    bad = copy.deepcopy(ray_up_config)
    bad["setup_commands"] = list(reversed(bad["setup_commands"]))
    assert any("before torch==2.13.0" in p for p in check_ray_up(bad))
    bad["setup_commands"] = [c.replace(TORCH_PIN, "torch") for c in ray_up_config["setup_commands"]]
    assert any("unpinned torch" in p for p in check_ray_up(bad))


def test_token_auth_and_private_dashboard(ray_up_config: dict[str, Any]) -> None:
    head = " ".join(ray_up_config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head
    assert "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token ray start --address" in " ".join(ray_up_config["worker_start_ray_commands"])
    assert ray_up_config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"

    bad = copy.deepcopy(ray_up_config)
    bad["head_start_ray_commands"] = [
        c.replace("127.0.0.1 --dashboard-port", "0.0.0.0 --dashboard-port").replace("RAY_AUTH_MODE=token ", "")
        for c in bad["head_start_ray_commands"]
    ]
    problems = check_ray_up(bad)
    assert any("dashboard is bound to every interface" in p for p in problems)
    assert any("head_start_ray_commands: Ray token authentication" in p for p in problems)


def test_mlflow_server_on_the_head_reads_postgres_from_a_secret(ray_up_config: dict[str, Any]) -> None:
    head = " ".join(ray_up_config["head_start_ray_commands"])
    assert "mlflow server" in head and '--host "$IP"' in head
    assert "--backend-store-uri" not in head  # the URI reaches the server as an environment variable
    setup = " ".join(ray_up_config["head_setup_commands"])
    assert "MLFLOW_BACKEND_STORE_URI" in setup and "psycopg[binary]" in setup
    assert "secretsmanager get-secret-value" in setup or "gcloud secrets versions access" in setup
    assert "umask 077" in setup

    bad = copy.deepcopy(ray_up_config)
    bad["head_start_ray_commands"][-1] = "mlflow server --host 0.0.0.0 --backend-store-uri postgresql://db/mlflow"
    problems = check_ray_up(bad)
    assert any("mlflow server is bound to every interface" in p for p in problems)
    assert any("database URI is on the command line" in p for p in problems)


def test_shared_checkpoint_file_system_is_mounted(ray_up_config: dict[str, Any]) -> None:
    setup = " ".join(ray_up_config["setup_commands"])
    assert "mount -t nfs" in setup and "/mnt/isoflop" in setup
