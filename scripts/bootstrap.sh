#!/usr/bin/env bash
# Create (or reuse) .venv with the provider, its extras (storage, OpenLineage, Redis), the test tooling
# (a Redis-protocol server binary among it) and the dev tools (dependency groups "test" and "dev").
# Pinned by constraints/py311.txt so a fresh clone gets the versions CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${COMETLY_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Python >= 3.11 is required (found $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
stamp="$VENV/.installed-$(cat pyproject.toml constraints/py311.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "==> Installing into $VENV (first run takes about a minute)" >&2
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check uv
    # Bytecode compiled at install, as pip does: uv does not by default, and without it every
    # Airflow process recompiles its imports (`import airflow.sdk, boto3`: 5.0 s instead of 2.8 s).
    "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --compile-bytecode \
        -c constraints/py311.txt -e ".[amazon,google,openlineage,redis]" --group dev
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi

# The browser test drives Debian's Chromium (Playwright's own browser download is not used).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> Installing Chromium for the browser test (apt-get)" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: chromium not found; tests/browser will be skipped (CI installs it)" >&2
    fi
fi
