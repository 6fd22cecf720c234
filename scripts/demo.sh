#!/usr/bin/env bash
# The demo: install (first run only), then run both example DAGs end to end on a real Airflow
# against the bundled Cometly simulator and a local S3 server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV="${COMETLY_VENV:-.venv}"
exec "$VENV/bin/python" scripts/demo.py "$@"
