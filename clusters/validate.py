"""Offline checks of the cluster definitions in ``clusters/`` (and of your edited copies).

    python -m clusters.validate clusters/aws-gpu.yaml clusters/kuberay/ clusters/slurm.sbatch

Every ``check_*`` function returns a list of problems (empty = fine); nothing here needs a cloud
account, a Kubernetes API server or SLURM. What is checked:

- ``ray up`` configs: Ray's own autoscaler validator (``prepare_config`` then ``validate_config``
  against ``ray/autoscaler/ray-schema.json``, as ``ray up`` does before it calls the cloud), GPU
  worker types that declare their GPUs, ``torch==2.13.0`` installed before the project, token
  authentication and a dashboard that is not bound to every interface.
- KubeRay manifests: ``ray.io/v1`` kinds, head and worker groups, a worker group asking for
  ``nvidia.com/gpu`` with tolerations and a node selector, a ClusterIP-only head, token
  authentication, an entrypoint that runs ``isoflop``, secrets only through ``secretKeyRef``.
- SLURM scripts: ``bash -n``, ``#SBATCH`` directives for nodes, GPUs and time, a Ray head and
  workers started with ``srun``, and ``isoflop run``.
- Every file: nothing that looks like a literal credential.

Exit code of the command: 0 when every file passes, 1 when one has problems, 2 on a bad path.
"""

from __future__ import annotations

import copy
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

TORCH_PIN = "torch==2.13.0"
GPU_RESOURCE = "nvidia.com/gpu"
#: instance families that carry GPUs (AWS) and GCP machine types with attached GPUs
_GPU_INSTANCE = re.compile(r"^(g4dn|g5|g5g|g6|g6e|gr6|p3|p3dn|p4d|p4de|p5|p5e|p5en)\.|^(a2|a3|a4|g2)-")

# A value counts as a reference, not a literal, when it starts like one of these: a shell or
# Kubernetes variable ($X, ${X}, $(X)), a template placeholder (<X>), a file path (the file
# holds the secret: ~/.ray/auth_token), or an empty string.
_REFERENCE = re.compile(r"""^["']?(\$|<|~/|/|["']?$)""")
_CREDENTIAL_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("an AWS access key id", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a service-account key", re.compile(r'"private_key(_id)?"\s*:')),
    ("a GitHub or Slack token", re.compile(r"\b(ghp_[A-Za-z0-9]{30,}|xox[bap]-[A-Za-z0-9-]{10,})")),
]
# key = value / key: value pairs whose key names a secret
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b([A-Za-z_]*(password|passwd|secret_access_key|secret_key|api_key|auth_token|access_token))"
    r"\s*[:=]\s*(\S+)"
)
# environment variables that carry secrets: only ever from a Secret
_SECRET_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|BACKEND_STORE_URI|DATABASE_URL")
# scheme://user:<password>@host with a literal password
_URI_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@'\"]+:([^\s@/'\"]+)@")


# ----------------------------------------------------------------------------- every file


def find_credentials(text: str) -> list[str]:
    """Lines of ``text`` that look like a literal credential (variable references are fine)."""
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        for what, pattern in _CREDENTIAL_PATTERNS:
            if pattern.search(line):
                problems.append(f"line {number}: looks like {what}")
        for match in _SECRET_ASSIGNMENT.finditer(line):
            value = match.group(3).rstrip(",;)")
            if not _REFERENCE.match(value):
                problems.append(f"line {number}: {match.group(1)} is given a literal value")
        for match in _URI_CREDENTIALS.finditer(line):
            if not _REFERENCE.match(match.group(1)):
                problems.append(f"line {number}: a URI with a literal password")
    return problems


def _install_order(commands: Sequence[str], where: str) -> list[str]:
    """``torch==2.13.0`` must be installed before the project (else pip pulls another build)."""
    torch_at = next((i for i, c in enumerate(commands) if "pip install" in c and TORCH_PIN in c), None)
    project_at = next(
        (i for i, c in enumerate(commands) if re.search(r"pip install[^\n]*\s-e\s", c + " ")), None
    )
    problems = []
    if torch_at is None:
        problems.append(f"{where}: no `pip install {TORCH_PIN}`")
    if project_at is None:
        problems.append(f"{where}: no `pip install -e .` of the project")
    if torch_at is not None and project_at is not None and (
        torch_at > project_at
        or torch_at == project_at  # one command: compare the positions in it
        and commands[torch_at].index(TORCH_PIN) > re.search(r"\s-e\s", commands[torch_at] + " ").start()
    ):
        problems.append(f"{where}: the project is installed before {TORCH_PIN}")
    for c in commands:
        if re.search(r"pip install[^\n]*\btorch\b(?!==)", c):
            problems.append(f"{where}: an unpinned torch install ({c.strip()[:60]})")
    return problems


# ----------------------------------------------------------------------------- ray up


def ray_validator_problems(config: dict[str, Any]) -> list[str]:
    """What Ray's autoscaler finds wrong with a ``ray up`` config (``ray up`` runs the same)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as exc:  # jsonschema.ValidationError, ValueError, RuntimeError, KeyError
        path = "/".join(str(p) for p in getattr(exc, "absolute_path", []))
        message = getattr(exc, "message", None) or str(exc)
        return [f"Ray's config validator: {path + ': ' if path else ''}{message}"]
    return []


def is_gpu_node_type(node_type: dict[str, Any]) -> bool:
    """Whether a node type's machine has GPUs (by instance/machine type or attached accelerators)."""
    node = node_type.get("node_config", {})
    machine = str(node.get("InstanceType") or node.get("machineType") or "")
    return bool(_GPU_INSTANCE.search(machine) or node.get("guestAccelerators"))


def check_ray_up(config: dict[str, Any]) -> list[str]:
    """Problems of one ``ray up`` cluster config (a parsed YAML mapping)."""
    problems = ray_validator_problems(config)
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    gpu_workers = [name for name, t in types.items() if name != head and is_gpu_node_type(t)]
    if not gpu_workers:
        problems.append("available_node_types: no GPU worker type")
    for name in gpu_workers:
        if int(types[name].get("resources", {}).get("GPU", 0)) < 1:
            problems.append(f"available_node_types.{name}: a GPU machine that declares no GPU resource")
    for name, t in types.items():
        if name not in gpu_workers and int(t.get("resources", {}).get("GPU", 0)) > 0:
            problems.append(f"available_node_types.{name}: declares GPUs its machine does not have")
    common = list(config.get("setup_commands") or [])
    problems += _install_order(common + list(config.get("head_setup_commands") or []), "head setup")
    problems += _install_order(common + list(config.get("worker_setup_commands") or []), "worker setup")

    head_start = " ".join(config.get("head_start_ray_commands") or [])
    worker_start = " ".join(config.get("worker_start_ray_commands") or [])
    if "ray start" not in head_start or "--head" not in head_start:
        problems.append("head_start_ray_commands: no `ray start --head`")
    if re.search(r"--dashboard-host[= ]+0\.0\.0\.0", head_start):
        problems.append("head_start_ray_commands: the dashboard is bound to every interface")
    for key, text in (("head_start_ray_commands", head_start), ("worker_start_ray_commands", worker_start)):
        if "RAY_AUTH_MODE=token" not in text:
            problems.append(f"{key}: Ray token authentication is not switched on (RAY_AUTH_MODE=token)")
    if "mlflow server" in head_start:
        if re.search(r"mlflow server[^;&|]*--host[= ]+0\.0\.0\.0", head_start):
            problems.append("head_start_ray_commands: mlflow server is bound to every interface")
        if re.search(r"--backend-store-uri[= ]+\S*://", head_start):
            problems.append(
                "head_start_ray_commands: the database URI is on the command line (visible in ps);"
                " pass it as MLFLOW_BACKEND_STORE_URI"
            )
    return problems


# ----------------------------------------------------------------------------- KubeRay


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return list((pod_template.get("spec") or {}).get("containers") or [])


def _check_ray_cluster_spec(spec: dict[str, Any], where: str, *, job: bool) -> list[str]:
    problems = []
    if not str(spec.get("rayVersion", "")).startswith("2.60"):
        problems.append(f"{where}.rayVersion: expected 2.60.x (the project pins ray 2.60)")
    if (spec.get("authOptions") or {}).get("mode") != "token":
        problems.append(f"{where}.authOptions.mode: Ray token authentication is not on (token)")
    head = spec.get("headGroupSpec") or {}
    params = head.get("rayStartParams")
    if params is None or not _containers(head.get("template") or {}):
        problems.append(f"{where}.headGroupSpec: needs rayStartParams and a pod template with a container")
        params = params or {}
    host = str(params.get("dashboard-host", ""))
    if host not in ("0.0.0.0", "127.0.0.1"):
        problems.append(f"{where}.headGroupSpec.rayStartParams.dashboard-host: set it explicitly")
    if job and host == "127.0.0.1":
        problems.append(f"{where}: a RayJob's dashboard must be reachable in the pod network for the operator")
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append(f"{where}.headGroupSpec.serviceType: keep the head service ClusterIP (private)")
    for c in _containers(head.get("template") or {}):
        if GPU_RESOURCE in ((c.get("resources") or {}).get("limits") or {}):
            problems.append(f"{where}.headGroupSpec: the head should be a CPU pod")
    groups = spec.get("workerGroupSpecs") or []
    if not groups:
        problems.append(f"{where}.workerGroupSpecs: no worker group")
    gpu_groups = 0
    for i, group in enumerate(groups):
        g = f"{where}.workerGroupSpecs[{i}]"
        for key in ("groupName", "rayStartParams", "template"):
            if key not in group:
                problems.append(f"{g}.{key}: missing")
        if int(group.get("minReplicas", 0)) > int(group.get("maxReplicas", 0)):
            problems.append(f"{g}: minReplicas > maxReplicas")
        template = group.get("template") or {}
        if any(GPU_RESOURCE in ((c.get("resources") or {}).get("limits") or {}) for c in _containers(template)):
            gpu_groups += 1
            pod = template.get("spec") or {}
            if not any(t.get("key") == GPU_RESOURCE for t in pod.get("tolerations") or []):
                problems.append(f"{g}: a GPU group without a toleration for {GPU_RESOURCE} taints")
            if not pod.get("nodeSelector") and not pod.get("affinity"):
                problems.append(f"{g}: a GPU group without a nodeSelector (or affinity)")
    if groups and not gpu_groups:
        problems.append(f"{where}.workerGroupSpecs: no group requests {GPU_RESOURCE} in its limits")
    return problems


def _walk(node: Any, path: str = "") -> Iterable[tuple[str, Any, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k, v
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def check_kubernetes(docs: Sequence[Any]) -> list[str]:
    """Problems of the documents of one or more Kubernetes manifests."""
    problems = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= doc.keys():
            problems.append("a document without apiVersion, kind and metadata")
            continue
        kind, where = doc["kind"], f"{doc['kind']}/{(doc.get('metadata') or {}).get('name', '?')}"
        spec = doc.get("spec") or {}
        if kind in ("RayCluster", "RayJob") and doc["apiVersion"] != "ray.io/v1":
            problems.append(f"{where}: apiVersion must be ray.io/v1")
        if kind == "RayCluster":
            problems += _check_ray_cluster_spec(spec, where, job=False)
        elif kind == "RayJob":
            if "isoflop" not in str(spec.get("entrypoint", "")):
                problems.append(f"{where}.entrypoint: does not run isoflop")
            if "rayClusterSpec" in spec:
                problems += _check_ray_cluster_spec(spec["rayClusterSpec"], f"{where}.rayClusterSpec", job=True)
            elif "clusterSelector" not in spec:
                problems.append(f"{where}: needs rayClusterSpec or clusterSelector")
        elif kind == "Secret" and (doc.get("data") or doc.get("stringData")):
            problems.append(f"{where}: a Secret with values in a file; create it with kubectl instead")
        elif kind == "Service" and spec.get("type", "ClusterIP") in ("LoadBalancer", "NodePort"):
            problems.append(f"{where}: a {spec['type']} service exposes it outside the cluster")
        elif kind == "PersistentVolumeClaim" and "checkpoint" in where and "ReadWriteMany" not in (
            spec.get("accessModes") or []
        ):
            problems.append(f"{where}: shared checkpoints need accessModes [ReadWriteMany]")
        for path, key, value in _walk(doc):
            if key != "env" or not isinstance(value, list):
                continue
            for var in value:
                name = str(var.get("name", ""))
                if _SECRET_ENV.search(name) and "valueFrom" not in var:
                    problems.append(f"{where}: {path}.env {name} is not read from a Secret (secretKeyRef)")
    return problems


# ----------------------------------------------------------------------------- SLURM


def check_slurm(text: str, path: Path | None = None) -> list[str]:
    """Problems of a SLURM batch script that starts a Ray cluster and runs a study."""
    problems = []
    if path is not None:
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            problems.append(f"bash -n: {result.stderr.strip()}")
    directives = " ".join(re.findall(r"^#SBATCH\s+(.*)$", text, flags=re.M))
    if not re.search(r"--nodes[= ]|-N\s*\d", directives):
        problems.append("#SBATCH: no --nodes")
    if not re.search(r"--gpus-per-node[= ]|--gres[= ]gpu|--gpus[= ]", directives):
        problems.append("#SBATCH: no GPUs requested (--gpus-per-node or --gres=gpu:N)")
    if not re.search(r"--time[= ]|-t\s*\d", directives):
        problems.append("#SBATCH: no --time")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    code = re.sub(r"\\\n\s*", " ", code)  # join continued lines
    if not re.search(r"srun[^\n]*ray start[^\n]*--head", code):
        problems.append("no `srun ... ray start --head`")
    if not re.search(r"srun[^\n]*ray start[^\n]*--address", code):
        problems.append("no `srun ... ray start --address` for the workers")
    if "isoflop run" not in code:
        problems.append("does not run `isoflop run`")
    if "RAY_AUTH_MODE=token" not in code:
        problems.append("Ray token authentication is not switched on (RAY_AUTH_MODE=token)")
    if re.search(r"--dashboard-host[= ]+0\.0\.0\.0", code):
        problems.append("the dashboard is bound to every interface")
    return problems


def shellcheck(path: Path) -> list[str]:
    """shellcheck's findings (warnings and errors), or nothing when shellcheck is not installed."""
    exe = shutil.which("shellcheck")
    if exe is None:
        return []
    result = subprocess.run([exe, "-S", "warning", str(path)], capture_output=True, text=True, check=False)
    return [result.stdout.strip()] if result.returncode != 0 else []


# ----------------------------------------------------------------------------- files


def definition_kind(path: Path) -> str:
    """``ray-up``, ``kubernetes``, ``slurm``, ``shell``, ``dockerfile`` or ``other``."""
    if path.suffix == ".sbatch" or (path.suffix == ".sh" and "#SBATCH" in path.read_text()):
        return "slurm"
    if path.suffix == ".sh":
        return "shell"
    if path.name == "Dockerfile":
        return "dockerfile"
    if path.suffix in (".yaml", ".yml"):
        docs = list(yaml.safe_load_all(path.read_text()))
        if len(docs) == 1 and isinstance(docs[0], dict) and "provider" in docs[0]:
            return "ray-up"
        if any(isinstance(d, dict) and "apiVersion" in d for d in docs):
            return "kubernetes"
    return "other"


def check_file(path: Path) -> list[str]:
    """Every problem of one definition file, found by its kind."""
    text = path.read_text()
    problems = find_credentials(text)
    kind = definition_kind(path)
    if kind == "ray-up":
        problems += check_ray_up(yaml.safe_load(text))
    elif kind == "kubernetes":
        problems += check_kubernetes(list(yaml.safe_load_all(text)))
    elif kind == "slurm":
        problems += check_slurm(text, path) + shellcheck(path)
    elif kind == "shell":
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
        problems += [f"bash -n: {result.stderr.strip()}"] if result.returncode else []
        problems += shellcheck(path)
    elif kind == "dockerfile":
        runs = re.findall(r"^RUN\s+(.*(?:\\\n.*)*)", text, flags=re.M)
        problems += _install_order(runs, "Dockerfile")
    return problems


def _expand(paths: Sequence[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix != ".py" and "__pycache__" not in f.parts)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(p)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Check the files (or folders) named on the command line; print each problem."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        args = [str(Path(__file__).resolve().parent)]
    try:
        files = _expand(args)
    except FileNotFoundError as exc:
        print(f"no such file or folder: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for f in files:
        problems = check_file(f)
        print(f"{f}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for p in problems:
            print(f"  - {p}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
