"""The KubeRay manifests parse and are structurally right, with secrets only by reference."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from clusters.validate import GPU_RESOURCE, TORCH_PIN, check_file, check_kubernetes

from .conftest import KUBERAY, ROOT, load_docs, one

RAY_KINDS = ("RayCluster", "RayJob")


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return template["spec"]["containers"]


def test_every_manifest_parses_with_the_expected_kinds(kuberay_docs: list[dict[str, Any]]) -> None:
    for path in KUBERAY.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path.name
    kinds = sorted(d["kind"] for d in kuberay_docs)
    assert set(kinds) == {
        "RayCluster", "RayJob", "Deployment", "Service", "StatefulSet", "PersistentVolumeClaim", "NetworkPolicy",
    }
    assert check_kubernetes(kuberay_docs) == []


@pytest.mark.parametrize("kind", RAY_KINDS)
def test_ray_cluster_has_a_cpu_head_and_a_gpu_worker_group(kuberay_docs: list[dict[str, Any]], kind: str) -> None:
    doc = one(kuberay_docs, kind)
    assert doc["apiVersion"] == "ray.io/v1"
    spec = _cluster_spec(doc)
    assert spec["rayVersion"].startswith("2.60")
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    for c in _containers(head["template"]):
        assert GPU_RESOURCE not in c["resources"]["limits"]
    gpu_groups = [
        g for g in spec["workerGroupSpecs"]
        if any(GPU_RESOURCE in c["resources"]["limits"] for c in _containers(g["template"]))
    ]
    assert gpu_groups, "a worker group requesting nvidia.com/gpu"
    for g in gpu_groups:
        assert g["groupName"] and 0 < g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        pod = g["template"]["spec"]
        assert any(t["key"] == GPU_RESOURCE and t["effect"] == "NoSchedule" for t in pod["tolerations"])
        assert pod["nodeSelector"]
        for c in _containers(g["template"]):
            assert c["resources"]["limits"][GPU_RESOURCE] == c["resources"]["requests"][GPU_RESOURCE] >= 1


@pytest.mark.parametrize("kind", RAY_KINDS)
def test_dashboard_binding_and_token_auth(kuberay_docs: list[dict[str, Any]], kind: str) -> None:
    spec = _cluster_spec(one(kuberay_docs, kind))
    # the pod address (the head Service and the operator must reach it), behind a ClusterIP only
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert spec["authOptions"] == {"mode": "token"}
    for svc in (d for d in kuberay_docs if d["kind"] == "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_rayjob_runs_an_existing_study_with_isoflop(kuberay_docs: list[dict[str, Any]]) -> None:
    job = one(kuberay_docs, "RayJob")
    entrypoint = job["spec"]["entrypoint"]
    match = re.search(r"isoflop run (studies/\S+\.yaml)", entrypoint)
    assert match, entrypoint
    assert (ROOT / match.group(1)).is_file()
    assert "tracking.uri=http://isoflop-mlflow:5000" in entrypoint
    mlflow_service = next(d for d in kuberay_docs if d["kind"] == "Service" and d["metadata"]["name"] == "isoflop-mlflow")
    assert mlflow_service["spec"]["ports"][0]["port"] == 5000
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_rayjob_cluster_is_the_raycluster(kuberay_docs: list[dict[str, Any]]) -> None:
    """The two copies of the cluster spec are kept identical."""
    assert one(kuberay_docs, "RayJob")["spec"]["rayClusterSpec"] == one(kuberay_docs, "RayCluster")["spec"]


def test_secrets_are_referenced_never_written(kuberay_docs: list[dict[str, Any]]) -> None:
    assert not [d for d in kuberay_docs if d["kind"] == "Secret"]
    refs = {}
    for doc in kuberay_docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for c in _containers(doc["spec"]["template"]):
                for var in c.get("env", []):
                    if re.search(r"PASSWORD|URI", var["name"]):
                        refs[var["name"]] = var["valueFrom"]["secretKeyRef"]
    assert refs["MLFLOW_BACKEND_STORE_URI"] == {"name": "isoflop-mlflow-db", "key": "uri"}
    assert refs["POSTGRES_PASSWORD"] == {"name": "isoflop-mlflow-db", "key": "password"}
    mlflow = next(d for d in kuberay_docs if d["kind"] == "Deployment")
    assert not any("://" in a for a in _containers(mlflow["spec"]["template"])[0]["command"])


def test_shared_checkpoints_on_a_read_write_many_claim(kuberay_docs: list[dict[str, Any]]) -> None:
    claim = one(kuberay_docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    name = claim["metadata"]["name"]
    pods = [g["template"] for d in kuberay_docs if d["kind"] in RAY_KINDS for g in (
        [_cluster_spec(d)["headGroupSpec"]] + _cluster_spec(d)["workerGroupSpecs"])]
    pods.append(next(d for d in kuberay_docs if d["kind"] == "Deployment")["spec"]["template"])
    for template in pods:
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["name"]: m["mountPath"] for c in _containers(template) for m in c["volumeMounts"]}
        shared = [n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") == name]
        assert shared and mounts[shared[0]] == "/mnt/isoflop"


def test_broken_manifests_are_reported(kuberay_docs: list[dict[str, Any]]) -> None:
    cluster = copy.deepcopy(one(kuberay_docs, "RayCluster"))
    cluster["apiVersion"] = "ray.io/v1alpha1"
    for g in cluster["spec"]["workerGroupSpecs"]:
        for c in _containers(g["template"]):
            c["resources"]["limits"].pop(GPU_RESOURCE)
    cluster["spec"]["headGroupSpec"]["serviceType"] = "LoadBalancer"
    del cluster["spec"]["authOptions"]
    problems = " | ".join(check_kubernetes([cluster]))
    for expected in ("apiVersion must be ray.io/v1", "no group requests nvidia.com/gpu", "ClusterIP", "token"):
        assert expected in problems

    job = copy.deepcopy(one(kuberay_docs, "RayJob"))
    job["spec"]["entrypoint"] = "python train.py"
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] = "127.0.0.1"
    problems = " | ".join(check_kubernetes([job]))
    assert "does not run isoflop" in problems and "reachable in the pod network" in problems

    mlflow = copy.deepcopy(next(d for d in kuberay_docs if d["kind"] == "Deployment"))
    _containers(mlflow["spec"]["template"])[0]["env"] = [{"name": "MLFLOW_BACKEND_STORE_URI", "value": "sqlite:///x.db"}]
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"uri": "x"}}
    problems = " | ".join(check_kubernetes([mlflow, secret]))
    assert "not read from a Secret" in problems and "a Secret with values in a file" in problems


def test_image_installs_torch_before_the_project() -> None:
    text = (KUBERAY / "Dockerfile").read_text()
    assert text.index(f"pip install --no-cache-dir {TORCH_PIN}") < text.index("pip install --no-cache-dir -e .")
    assert re.search(r"^FROM rayproject/ray:2\.60\.\d+-py311-gpu$", text, flags=re.M)
    assert check_file(KUBERAY / "Dockerfile") == []
    images = {c["image"] for f in KUBERAY.glob("ray*.yaml") for d in load_docs(f)
              for g in [_cluster_spec(d)["headGroupSpec"], *_cluster_spec(d)["workerGroupSpecs"]]
              for c in _containers(g["template"])}
    assert len(images) == 1, images  # one image, built from the Dockerfile
