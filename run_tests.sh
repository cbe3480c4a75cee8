#!/usr/bin/env bash
# Run the whole test suite: lint, format check, then pytest with real Redis, real
# worker processes and a real SMTP server; on SQLite, then again on PostgreSQL
# when one answers (TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres)
# and on MariaDB/MySQL when one answers (TEST_MARIADB_URL, default
# mysql://root@127.0.0.1:3306/test). TEST_POSTGRES / TEST_MARIADB: always (a server
# that does not answer is an error), auto (the default) or never.
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
# Debian packages some tests drive, installed when missing and we may (root, apt):
# Chromium for the dashboard's browser tests (no browser download), Wine for
# start_celery.bat (its cmd.exe runs the batch file), promtool for the Prometheus
# rules, iptables for the network-partition chaos test (R10). With TEST_BROWSER,
# TEST_WINE, TEST_PROMTOOL or TEST_NETNS set to always (CI) a missing one is an
# error instead of skipped tests.
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
# The mysql extra (mysqlclient, for the MariaDB pass) is compiled: it needs Debian's
# libmariadb-dev and pkg-config. Installed when a MariaDB answers (or TEST_MARIADB=always).
mariadb_url="${TEST_MARIADB_URL:-mysql://root@127.0.0.1:3306/test}"
extras="test"
if [ "${TEST_MARIADB:-auto}" = "always" ] || { [ "${TEST_MARIADB:-auto}" = "auto" ] &&
    "$VENV_DIR/bin/python" -c 'import socket,sys,urllib.parse as u;p=u.urlsplit(sys.argv[1]);socket.create_connection((p.hostname or "127.0.0.1",p.port or 3306),3).close()' "$mariadb_url" 2>/dev/null; }; then
    require_debian_tool pkg-config pkg-config "${TEST_MARIADB:-auto}"
    require_debian_tool mariadb_config libmariadb-dev "${TEST_MARIADB:-auto}" --no-install-recommends
    if command -v mariadb_config >/dev/null 2>&1 || command -v mysql_config >/dev/null 2>&1; then
        extras="test,mysql"
    fi
fi
stamp="$VENV_DIR/.admin_backend-test-installed"
digest="$("$VENV_DIR/bin/python" -c 'import hashlib;print(hashlib.sha256(open("pyproject.toml","rb").read()).hexdigest())') [$extras]"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    echo "== installing the project with its test dependencies"
    "$VENV_DIR/bin/python" -m pip install --quiet --upgrade pip >var-pip.log 2>&1 || { cat var-pip.log; exit 1; }
    "$VENV_DIR/bin/python" -m pip install --quiet -e ".[$extras]" >var-pip.log 2>&1 || { cat var-pip.log; exit 1; }
    rm -f var-pip.log
    echo "$digest" >"$stamp"
fi
PY="$VENV_DIR/bin/python"

echo "== ruff check"
"$PY" -m ruff check .
echo "== ruff format --check"
"$PY" -m ruff format --check .
echo "== import-linter (layers: admin_backend -> apps -> taskcore)"
"$VENV_DIR/bin/lint-imports"
echo "== shellcheck"
"$VENV_DIR/bin/shellcheck" start_celery.sh run_tests.sh .ci/run

require_debian_tool chromium chromium "${TEST_BROWSER:-auto}"
require_debian_tool wine "wine64 wine" "${TEST_WINE:-auto}" --no-install-recommends
# promtool (Debian's prometheus) checks /metrics and unit-tests deploy/prometheus/alerts.yml.
require_debian_tool promtool prometheus "${TEST_PROMTOOL:-auto}" --no-install-recommends
# iptables drops Redis' packets inside a network namespace the R10 test creates.
require_debian_tool iptables iptables "${TEST_NETNS:-auto}" --no-install-recommends

echo "== pytest (SQLite)"
if [ $# -eq 0 ]; then
    # Everything but the tests marked wip (not passing yet; named in docs/reliability.md).
    "$PY" -m pytest -m "not wip"
else
    "$PY" -m pytest "$@"
fi

# The suite again on another database, when its server answers: name, switch
# variable (always|auto|never), URL, then the command that probes the URL.
database_pass() {
    local name="$1" switch_name="$2" url="$3"
    shift 3
    local switch="${!switch_name:-auto}"
    if [ "$switch" = "never" ]; then
        echo "== $name pass skipped ($switch_name=never)"
    elif "$@" "$url" 2>/dev/null; then
        echo "== pytest ($name)"
        # Tests marked database_independent gave their answer in the SQLite pass.
        DATABASE_URL="$url" TEST_DATABASE_NAME="test_admin_backend_$$" "$PY" -m pytest \
            -m "not chaos and not wip and not database_independent" -p no:cacheprovider
    elif [ "$switch" = "always" ]; then
        echo "$name does not answer at ${switch_name}_URL (or its driver is missing); set $switch_name=never to skip" >&2
        exit 1
    else
        echo "== $name not reachable: $name pass skipped ($switch_name=always makes this an error)"
    fi
}

if [ $# -eq 0 ] || [ "${TEST_POSTGRES:-auto}" = "always" ]; then
    database_pass PostgreSQL TEST_POSTGRES "${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}" \
        "$PY" -c 'import sys,psycopg;psycopg.connect(sys.argv[1].replace("postgres://","postgresql://",1),connect_timeout=3).close()'
fi
if [ $# -eq 0 ] || [ "${TEST_MARIADB:-auto}" = "always" ]; then
    # mysqlclient is the mysql extra, installed above when a MariaDB answers.
    database_pass MariaDB TEST_MARIADB "$mariadb_url" \
        "$PY" -c 'import sys,environ,MySQLdb;c=environ.Env.db_url_config(sys.argv[1]);MySQLdb.connect(host=c["HOST"] or "127.0.0.1",port=int(c["PORT"] or 3306),user=c["USER"],password=c["PASSWORD"],connect_timeout=3).close()'
fi
echo "== all tests passed"
