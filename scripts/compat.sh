#!/usr/bin/env bash
# The compatibility matrix's lowest line: Airflow 3.0 on Python 3.12 with the declared dependency
# floors (constraints/airflow-3.0-py312.txt), in a second virtualenv built with uv (seconds with its
# cache). Runs the example DAGs' dag.test() runs and the provider tests that depend on the Airflow
# version. The newest line (constraints/py311.txt) is the main suite of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

MAIN_VENV="${COMETLY_VENV:-.venv}"
VENV="${COMETLY_COMPAT_VENV:-.venv-airflow-3.0}"
CONSTRAINTS=constraints/airflow-3.0-py312.txt
UV="$MAIN_VENV/bin/uv"   # installed by scripts/bootstrap.sh
export UV_PYTHON_DOWNLOADS=never  # no interpreter downloads: use one that is installed

find_python() {
    if [ -n "${PYTHON312:-}" ]; then echo "$PYTHON312"; return; fi
    local candidate
    for candidate in python3.12 "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/3.12*/bin/python3.12; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            command -v "$candidate"; return
        fi
    done
    "$UV" python find 3.12 2>/dev/null || { echo "Python 3.12 not found: set PYTHON312" >&2; exit 1; }
}

stamp="$VENV/.installed-$(cat pyproject.toml "$CONSTRAINTS" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "==> Installing the Airflow 3.0 line into $VENV" >&2
    rm -rf "$VENV"
    "$UV" venv --quiet --python "$(find_python)" "$VENV"
    # Bytecode compiled at install, as pip does: uv does not by default, and without it every
    # Airflow process recompiles its imports (`import airflow.sdk, boto3`: 5.0 s instead of 2.8 s).
    "$UV" pip install --quiet --python "$VENV/bin/python" --compile-bytecode \
        -c "$CONSTRAINTS" -e ".[amazon,google,openlineage]" --group test
    touch "$stamp"
fi

"$VENV/bin/python" - <<'PY'
import sys
from importlib.metadata import version
print(f"==> Airflow {version('apache-airflow')}, common-compat "
      f"{version('apache-airflow-providers-common-compat')}, Python {sys.version.split()[0]}", file=sys.stderr)
PY
# The tests that depend on the Airflow line: provider registration and connection form metadata,
# the example DAGs end to end (dag.test), each operator in a real DAG run, deferral, lineage.
"$VENV/bin/python" -m pytest -p no:cacheprovider -m "not browser" \
    tests/test_provider.py \
    tests/hooks/test_connection_form.py \
    tests/e2e \
    tests/operators/test_early_errors.py::test_missing_storage_provider_fails_in_the_constructor \
    tests/test_lineage.py::test_download_reports_cometly_events_in_and_the_destination_out \
    tests/test_lineage.py::test_create_reports_cometly_events_in \
    "$@"
