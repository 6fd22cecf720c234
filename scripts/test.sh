#!/usr/bin/env bash
# The test command: lint, type check, then the whole suite against real local servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV="${COMETLY_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH"

echo "==> ruff" >&2
ruff check cometly_provider tests bench example_dags scripts
ruff format --check cometly_provider tests bench example_dags scripts
echo "==> mypy" >&2
mypy cometly_provider
echo "==> pytest" >&2
# pytest exits 5 when it collected nothing; with `set -e` that fails the run, as it should.
python -m pytest "$@"
# The lowest supported line (Airflow 3.0, Python 3.12) in its own virtualenv; skip it for targeted
# runs with COMETLY_SKIP_COMPAT=1.
if [ -z "${COMETLY_SKIP_COMPAT:-}" ] && [ "$#" -eq 0 ]; then
    echo "==> compatibility: Airflow 3.0 line" >&2
    bash scripts/compat.sh
fi
