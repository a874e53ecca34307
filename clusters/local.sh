#!/bin/bash
# A one-machine isoflop cluster: a Ray head with its dashboard and an MLflow tracking server,
# both on 127.0.0.1 only, for studies submitted as jobs or shared by several shells.
# (`isoflop run STUDY.yaml` alone needs none of this: it starts a private Ray and uses a sqlite
# store under .isoflop/.)
#
#   clusters/local.sh up        start Ray (dashboard http://127.0.0.1:8265) and MLflow
#                               (http://127.0.0.1:5000); prints how to point a study at them
#   clusters/local.sh status    what runs
#   clusters/local.sh down      stop both
#
# Then, from the repository root:
#   isoflop run studies/quickstart.yaml cluster.address=auto tracking.uri=http://127.0.0.1:5000
#   isoflop submit studies/quickstart.yaml --address http://127.0.0.1:8265 \
#       cluster.address=auto tracking.uri=http://127.0.0.1:5000
#
# MLflow's database: sqlite in ISOFLOP_LOCAL_DIR (default ./.isoflop/local), or PostgreSQL
# when MLFLOW_BACKEND_STORE_URI is set, e.g. postgresql://mlflow@localhost:5432/mlflow with the
# password in ~/.pgpass (mode 600), never in a file of the project; the PostgreSQL driver is
# installed with `pip install 'psycopg[binary]>=3.2'`.
# Ray token authentication is on: the token is ~/.ray/auth_token (created if missing), which
# `isoflop submit` and `ray` commands on this machine read.
#
# Environment: ISOFLOP_VENV (default ./.venv), ISOFLOP_LOCAL_DIR, RAY_PORT (6379),
# RAY_DASHBOARD_PORT (8265), MLFLOW_PORT (5000), RAY_NUM_GPUS (default: detected).
set -euo pipefail

VENV=${ISOFLOP_VENV:-$PWD/.venv}
STATE=${ISOFLOP_LOCAL_DIR:-$PWD/.isoflop/local}
RAY_PORT=${RAY_PORT:-6379}
DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
MLFLOW_PID=$STATE/mlflow.pid

if [[ -x "$VENV/bin/ray" ]]; then
    PATH="$VENV/bin:$PATH"
fi
export RAY_AUTH_MODE=token

up() {
    mkdir -p "$STATE/mlflow-artifacts"
    chmod 700 "$STATE"
    # A token for this machine's clusters, if there is none yet.
    [[ -s "$HOME/.ray/auth_token" ]] || ray get-auth-token --generate > /dev/null
    local gpus=()
    if [[ -n "${RAY_NUM_GPUS:-}" ]]; then gpus=(--num-gpus="$RAY_NUM_GPUS"); fi
    ray start --head --node-ip-address=127.0.0.1 --port="$RAY_PORT" \
        --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" "${gpus[@]}"

    # The server reads MLFLOW_BACKEND_STORE_URI itself: the URI stays off the command line.
    export MLFLOW_BACKEND_STORE_URI=${MLFLOW_BACKEND_STORE_URI:-sqlite:///$STATE/mlflow.db}
    nohup mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" \
        --artifacts-destination "$STATE/mlflow-artifacts" > "$STATE/mlflow.log" 2>&1 &
    echo $! > "$MLFLOW_PID"
    # Creating a fresh database takes a few seconds (schema migrations).
    python - "http://127.0.0.1:$MLFLOW_PORT/health" <<'EOF'
import sys, time, urllib.request

for _ in range(60):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2)
        break
    except OSError:
        time.sleep(1)
else:
    sys.exit("mlflow did not start within a minute: see the log next to mlflow.pid")
EOF
    cat <<EOF

Ray dashboard  http://127.0.0.1:$DASHBOARD_PORT   (token: ~/.ray/auth_token)
MLflow         http://127.0.0.1:$MLFLOW_PORT
Run a study on them:
  isoflop run studies/quickstart.yaml cluster.address=auto tracking.uri=http://127.0.0.1:$MLFLOW_PORT
  isoflop submit studies/quickstart.yaml --address http://127.0.0.1:$DASHBOARD_PORT cluster.address=auto tracking.uri=http://127.0.0.1:$MLFLOW_PORT
Stop: clusters/local.sh down
EOF
}

down() {
    if [[ -f "$MLFLOW_PID" ]]; then
        kill "$(cat "$MLFLOW_PID")" 2>/dev/null || true
        rm -f "$MLFLOW_PID"
    fi
    ray stop
}

status() {
    ray status --address="127.0.0.1:$RAY_PORT" || true
    if [[ -f "$MLFLOW_PID" ]] && kill -0 "$(cat "$MLFLOW_PID")" 2>/dev/null; then
        echo "mlflow: running, http://127.0.0.1:$MLFLOW_PORT"
    else
        echo "mlflow: not running"
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *)
        echo "usage: clusters/local.sh up|status|down" >&2
        exit 2
        ;;
esac
