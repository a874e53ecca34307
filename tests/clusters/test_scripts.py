"""The SLURM batch script and the local script: valid bash, the right steps, safe bindings."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from clusters.validate import check_slurm, shellcheck

from .conftest import CLUSTERS

SLURM = CLUSTERS / "slurm.sbatch"
LOCAL = CLUSTERS / "local.sh"


@pytest.mark.parametrize("path", [SLURM, LOCAL], ids=lambda p: p.name)
def test_bash_parses_the_script(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", [SLURM, LOCAL], ids=lambda p: p.name)
def test_shellcheck_finds_nothing(path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    assert shellcheck(path) == []


def test_sbatch_directives_request_nodes_gpus_and_time() -> None:
    directives = dict(
        re.match(r"--([\w-]+)=?(.*)", d).groups()  # type: ignore[union-attr]
        for d in re.findall(r"^#SBATCH\s+(\S+)", SLURM.read_text(), flags=re.M)
    )
    assert int(directives["nodes"]) >= 2
    assert int(directives["gpus-per-node"]) >= 1
    assert re.fullmatch(r"\d+:\d\d:\d\d", directives["time"])
    assert check_slurm(SLURM.read_text(), SLURM) == []


def test_sbatch_starts_ray_then_mlflow_then_the_study() -> None:
    code = re.sub(r"\\\n\s*", " ", SLURM.read_text())
    head = code.index("ray start --head")
    workers = code.index('ray start --address="$HEAD_IP:$RAY_PORT"')
    wait = code.index("nodes up")
    mlflow = code.index("mlflow server --host \"$HEAD_IP\"")
    study = code.index('isoflop run "$STUDY" cluster.address="$HEAD_IP:$RAY_PORT" tracking.uri="$TRACKING_URI"')
    assert head < workers < wait < mlflow < study
    assert re.search(r'srun [^\n]*-w "\$HEAD"[^\n]*ray start --head', code)
    assert re.search(r'for node in "\$\{NODES\[@\]:1\}"; do\s+srun [^\n]*-w "\$node"', code)
    assert "--dashboard-host=127.0.0.1" in code
    assert "export RAY_AUTH_MODE=token" in code and "umask 077" in code
    assert "--backend-store-uri" not in code  # the server reads MLFLOW_BACKEND_STORE_URI


def test_a_broken_batch_script_is_reported(tmp_path: Path) -> None:
    broken = tmp_path / "broken.sbatch"
    broken.write_text("#!/bin/bash\n#SBATCH --nodes=2\nif true; then\n  python train.py\n")
    problems = " | ".join(check_slurm(broken.read_text(), broken))
    for expected in ("bash -n", "no GPUs requested", "no --time", "ray start --head", "--address", "isoflop run"):
        assert expected in problems


def test_local_script_binds_to_loopback_with_token_auth() -> None:
    text = LOCAL.read_text()
    assert "--dashboard-host=127.0.0.1" in text and "--node-ip-address=127.0.0.1" in text
    assert "mlflow server --host 127.0.0.1" in text
    assert "export RAY_AUTH_MODE=token" in text
    assert "sqlite:///$STATE/mlflow.db" in text  # absolute: $STATE is under $PWD
    assert "cluster.address=auto tracking.uri=http://127.0.0.1:" in text


def test_local_script_usage_without_a_command() -> None:
    result = subprocess.run(["bash", str(LOCAL)], capture_output=True, text=True, check=False, cwd=CLUSTERS.parent)
    assert result.returncode == 2
    assert "usage: clusters/local.sh up|status|down" in result.stderr


# --------------------------------------------------------------------------- dry runs
# The scripts run end to end against stand-ins for srun, scontrol, ray, mlflow, isoflop and
# python that record their arguments: the control flow, the arguments and the exit code are
# checked without SLURM, a cluster or a server.

_STUB = """#!/bin/bash
echo "{name} $*" >> "$STUB_LOG"
{body}
"""
_BODIES = {
    "srun": 'if [[ " $* " == *" hostname "* ]]; then echo "10.0.0.5 192.168.0.5 "; fi',
    "scontrol": "printf 'gpu-node1\\ngpu-node2\\ngpu-node3\\n'",
    "ray": "",
    "mlflow": "",
    "isoflop": 'exit "${STUB_ISOFLOP_RC:-0}"',
    # python -c runs for real (the token); heredoc programs (waiting loops) succeed at once
    "python": 'if [[ "$1" == "-c" ]]; then exec python3 "$@"; fi\ncat > /dev/null',
}


def _stubs(tmp_path: Path) -> tuple[dict[str, str], Path]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, body in _BODIES.items():
        stub = venv / "bin" / name
        stub.write_text(_STUB.format(name=name, body=body))
        stub.chmod(0o755)
    (venv / "bin" / "activate").write_text(f'PATH="{venv / "bin"}:$PATH"\n')
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "calls.log"
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "STUB_LOG": str(log),
        "ISOFLOP_VENV": str(venv),
    }
    return env, log


def test_sbatch_dry_run(tmp_path: Path) -> None:
    env, log = _stubs(tmp_path)
    env |= {
        "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "gpu-node[1-3]",
        "SLURM_CPUS_PER_TASK": "32", "SLURM_GPUS_PER_NODE": "a100:4", "STUB_ISOFLOP_RC": "1",
    }
    result = subprocess.run(
        ["bash", str(SLURM), "studies/quickstart.yaml", "seed=3"], env=env, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1, result.stderr  # the study's exit code is the job's
    calls = log.read_text().splitlines()
    gpu = "--cpus-per-task=32 --gres=gpu:4"
    assert f"srun --nodes=1 --ntasks=1 -w gpu-node1 {gpu} ray start --head --node-ip-address=10.0.0.5 --port=6379 --dashboard-host=127.0.0.1 --num-cpus=32 --num-gpus=4 --block" in calls
    for node in ("gpu-node2", "gpu-node3"):
        assert f"srun --nodes=1 --ntasks=1 -w {node} {gpu} ray start --address=10.0.0.5:6379 --num-cpus=32 --num-gpus=4 --block" in calls
    assert not any(f"-w gpu-node1 {gpu} ray start --address" in c for c in calls)
    assert any(c.startswith("mlflow server --host 10.0.0.5 --port 5000 --allowed-hosts 10.0.0.5:5000,") for c in calls)
    assert [c for c in calls if c.startswith("isoflop")] == [
        "isoflop run studies/quickstart.yaml cluster.address=10.0.0.5:6379 tracking.uri=http://10.0.0.5:5000 seed=3"
    ]
    assert not (tmp_path / "home" / ".ray" / "isoflop-42.token").exists()  # removed at the end
    assert (tmp_path / ".isoflop" / "slurm" / "checkpoints").is_dir()


def test_sbatch_uses_the_sites_server_and_refuses_a_readable_env_file(tmp_path: Path) -> None:
    env, log = _stubs(tmp_path)
    env |= {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-3]",
            "ISOFLOP_TRACKING_URI": "http://mlflow.site:5000"}
    result = subprocess.run(["bash", str(SLURM), "s.yaml"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert not any(c.startswith("mlflow ") for c in calls)
    assert [c for c in calls if c.startswith("isoflop")] == [
        "isoflop run s.yaml cluster.address=10.0.0.5:6379 tracking.uri=http://mlflow.site:5000"
    ]
    assert not any("--gres" in c for c in calls)  # no GPUs in this allocation: none asked per step

    env_file = tmp_path / "cluster.env"
    env_file.write_text("MLFLOW_BACKEND_STORE_URI=postgresql://db/mlflow\n")
    env_file.chmod(0o644)
    result = subprocess.run(["bash", str(SLURM), "s.yaml"], env=env | {"ISOFLOP_ENV_FILE": str(env_file)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "chmod 600" in result.stderr


def test_local_script_dry_run(tmp_path: Path) -> None:
    env, log = _stubs(tmp_path)
    (tmp_path / "home" / ".ray").mkdir()
    (tmp_path / "home" / ".ray" / "auth_token").write_text("x")
    result = subprocess.run(["bash", str(LOCAL), "up"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    state = tmp_path / ".isoflop" / "local"
    server = f"mlflow server --host 127.0.0.1 --port 5000 --artifacts-destination {state}/mlflow-artifacts"
    # the server is started in the background (nohup ... &): on a busy machine its stub may log
    # after the script has returned
    deadline = time.monotonic() + 10
    while server not in log.read_text().splitlines() and time.monotonic() < deadline:
        time.sleep(0.1)
    calls = log.read_text().splitlines()
    assert "ray start --head --node-ip-address=127.0.0.1 --port=6379 --dashboard-host=127.0.0.1 --dashboard-port=8265" in calls
    assert not any(c.startswith("ray get-auth-token") for c in calls)  # a token exists already
    assert server in calls
    assert "isoflop submit studies/quickstart.yaml --address http://127.0.0.1:8265" in result.stdout
    assert (state / "mlflow.pid").is_file() and oct(state.stat().st_mode)[-3:] == "700"
