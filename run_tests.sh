#!/usr/bin/env bash
# Run the whole test suite: lint, format check, then pytest with real Redis, real
# worker processes and a real SMTP server; on SQLite, then again on PostgreSQL
# when one answers (TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres).
# Creates .venv and installs what the tests need when missing.
#
#   ./run_tests.sh                 everything
#   ./run_tests.sh -m "not chaos"  skip the slow fault-injection tests
#   ./run_tests.sh -k logging      any pytest arguments (SQLite pass only)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV_DIR="${VENV_DIR:-.venv}"
PYTHON_BIN="${PYTHON:-python3}"

if [ ! -x "$VENV_DIR/bin/python" ]; then
    echo "== creating $VENV_DIR"
    "$PYTHON_BIN" -m venv "$VENV_DIR"
fi
stamp="$VENV_DIR/.admin_backend-test-installed"
digest="$("$VENV_DIR/bin/python" -c 'import hashlib;print(hashlib.sha256(open("pyproject.toml","rb").read()).hexdigest())')"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    echo "== installing the project with its test dependencies"
    "$VENV_DIR/bin/python" -m pip install --quiet --upgrade pip >var-pip.log 2>&1 || { cat var-pip.log; exit 1; }
    "$VENV_DIR/bin/python" -m pip install --quiet -e ".[test]" >var-pip.log 2>&1 || { cat var-pip.log; exit 1; }
    rm -f var-pip.log
    echo "$digest" >"$stamp"
fi
PY="$VENV_DIR/bin/python"

echo "== ruff check"
"$PY" -m ruff check .
echo "== ruff format --check"
"$PY" -m ruff format --check .
echo "== shellcheck"
"$VENV_DIR/bin/shellcheck" start_celery.sh run_tests.sh .ci/run

# Debian packages some tests drive, installed when missing and we may (root, apt):
# Chromium for the dashboard's browser tests (no browser download), Wine for
# start_celery.bat (its cmd.exe runs the batch file). With TEST_BROWSER=always or
# TEST_WINE=always (CI) a missing one is an error instead of skipped tests.
require_debian_tool() {  # command, package(s), "always" if required, [apt-get options]
    local command="$1" packages="$2" required="$3" options="${4:-}"
    if command -v "$command" >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing $packages for the tests"
        # shellcheck disable=SC2086  # the package and option lists are meant to split
        { apt-get install -y $options $packages ||
            { apt-get update && apt-get install -y $options $packages; }; } \
            >var-apt.log 2>&1 || { cat var-apt.log; echo "$packages could not be installed" >&2; }
        rm -f var-apt.log
    fi
    if ! command -v "$command" >/dev/null 2>&1 && [ "$required" = "always" ]; then
        echo "$command is required here: install Debian's $packages" >&2
        exit 1
    fi
}
require_debian_tool chromium chromium "${TEST_BROWSER:-auto}"
require_debian_tool wine "wine64 wine" "${TEST_WINE:-auto}" --no-install-recommends

echo "== pytest (SQLite)"
if [ $# -eq 0 ]; then
    # Everything but the tests marked wip (not passing yet; named in docs/reliability.md).
    "$PY" -m pytest -m "not wip"
else
    "$PY" -m pytest "$@"
fi

if [ $# -eq 0 ] || [ "${TEST_POSTGRES:-auto}" = "always" ]; then
    pg_url="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
    if "$PY" -c 'import sys,psycopg;psycopg.connect(sys.argv[1].replace("postgres://","postgresql://",1),connect_timeout=3).close()' "$pg_url" 2>/dev/null; then
        echo "== pytest (PostgreSQL)"
        DATABASE_URL="$pg_url" TEST_DATABASE_NAME="test_admin_backend_$$" "$PY" -m pytest -m "not chaos and not wip" -p no:cacheprovider
    elif [ "${TEST_POSTGRES:-auto}" = "always" ]; then
        echo "PostgreSQL does not answer at TEST_POSTGRES_URL; set TEST_POSTGRES=never to skip" >&2
        exit 1
    else
        echo "== PostgreSQL not reachable: PostgreSQL pass skipped (TEST_POSTGRES=always makes this an error)"
    fi
fi
echo "== all tests passed"
