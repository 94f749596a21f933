#!/usr/bin/env bash
# `make dev`: Dagster UI + daemon (sensors, schedules) on the persistent instance in
# $DAGSTER_HOME. Falls back to the tiny offline CLAP like `make demo` when CLAP_MODEL
# cannot be loaded, so that automated retrain runs work offline too.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
CLI="$VENV/bin/clap-pipeline"
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD/.dagster}
export HF_HUB_DISABLE_PROGRESS_BARS=${HF_HUB_DISABLE_PROGRESS_BARS:-1}
mkdir -p "$DAGSTER_HOME"
# shellcheck source=scripts/offline_model.sh
source scripts/offline_model.sh
exec "$VENV/bin/dagster" dev -w workspace.yaml -h "${DAGSTER_HOST:-127.0.0.1}" -p "${DAGSTER_PORT:-3000}"
