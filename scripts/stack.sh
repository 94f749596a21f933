#!/usr/bin/env bash
# `make stack` / `make stack-down`: PostgreSQL, an MLflow tracking server and Dagster's
# services (code server, webserver, daemon) on loopback; see clap_pipeline/stack.py.
# Usage: scripts/stack.sh up|down|status|env
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
CLI="$VENV/bin/clap-pipeline"
export HF_HUB_DISABLE_PROGRESS_BARS=${HF_HUB_DISABLE_PROGRESS_BARS:-1}
if [[ "${1:-up}" == "up" ]]; then
  # The code server and run workers use the tiny offline CLAP when CLAP_MODEL cannot load.
  # shellcheck source=scripts/offline_model.sh
  source scripts/offline_model.sh
fi
exec "$PY" -m clap_pipeline.cli stack "${1:-up}"
