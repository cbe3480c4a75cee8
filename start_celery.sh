#!/usr/bin/env bash
# Start the AU-VLP admin backend's task system for development: Redis (when none
# answers), database migrations, Celery worker(s), beat, Flower, a development
# SMTP server and the web server. Ctrl-C stops everything gracefully.
#
# Run ./start_celery.sh --help for the options.
set -euo pipefail

PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$PROJECT_DIR"

# --- options -----------------------------------------------------------------
WORKER_MODE="all"        # all: one worker for every queue; groups: one per worker group
ONLY_GROUP=""
RUN_BEAT=1
RUN_FLOWER=1
RUN_WEB=1
RUN_SMTP=1
CHECK_ONLY=0
WEB_PORT="${WEB_PORT:-8000}"
FLOWER_PORT="${FLOWER_PORT:-5555}"
HEALTH_INTERVAL="${HEALTH_INTERVAL:-60}"
RESTART_DELAY="${RESTART_DELAY:-5}"
RESTART_MAX_ATTEMPTS="${RESTART_MAX_ATTEMPTS:-3}"
RESTART_WINDOW="${RESTART_WINDOW:-120}"
VENV_DIR="${VENV_DIR:-$PROJECT_DIR/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
# Development defaults: DEBUG serves the admin's static files and skips HTTPS redirects.
export DEBUG="${DEBUG:-1}"

usage() {
    cat <<'EOF'
Usage: ./start_celery.sh [options]

Starts, in the foreground: Redis (only when nothing answers at the configured
URL and it is local), migrations, Celery worker(s), beat, Flower, a development
SMTP server (mail kept in var/mail/) and the web server. Ctrl-C or SIGTERM stops
everything with a warm shutdown (running tasks finish); a second Ctrl-C forces.

Options:
  --groups            one worker per worker group of admin_backend/queues.py
  --group NAME        only the worker of group NAME (e.g. on a dedicated host)
  --no-beat           do not start Celery beat
  --no-flower         do not start Flower
  --no-web            do not start the web server
  --no-smtp           do not start the development SMTP server
  --web-port PORT     web server port (default 8000, or $WEB_PORT)
  --flower-port PORT  Flower port (default 5555, or $FLOWER_PORT)
  --check             run the pre-flight checks only, then exit
  -h, --help          show this help

Environment: see .env.example (read from .env when present). NO_COLOR=1
disables colours. Restart policy of a process that dies: wait RESTART_DELAY (5)
seconds, at most RESTART_MAX_ATTEMPTS (3) restarts within RESTART_WINDOW (120)
seconds, then the whole stack stops with an error.
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --groups) WORKER_MODE="groups" ;;
        --group) WORKER_MODE="group"; ONLY_GROUP="${2:?--group needs a name}"; shift ;;
        --no-beat) RUN_BEAT=0 ;;
        --no-flower) RUN_FLOWER=0 ;;
        --no-web) RUN_WEB=0 ;;
        --no-smtp) RUN_SMTP=0 ;;
        --web-port) WEB_PORT="${2:?--web-port needs a port}"; shift ;;
        --flower-port) FLOWER_PORT="${2:?--flower-port needs a port}"; shift ;;
        --check) CHECK_ONLY=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# --- output ------------------------------------------------------------------
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
    C_RESET=$'\033[0m'; C_RED=$'\033[31m'; C_GREEN=$'\033[32m'; C_YELLOW=$'\033[33m'; C_BLUE=$'\033[34m'
else
    C_RESET=""; C_RED=""; C_GREEN=""; C_YELLOW=""; C_BLUE=""
fi
stamp() { date '+%Y-%m-%d %H:%M:%S'; }
info() { printf '%s %s[INFO]%s %s\n' "$(stamp)" "$C_BLUE" "$C_RESET" "$*"; }
ok() { printf '%s %s[ OK ]%s %s\n' "$(stamp)" "$C_GREEN" "$C_RESET" "$*"; }
warn() { printf '%s %s[WARN]%s %s\n' "$(stamp)" "$C_YELLOW" "$C_RESET" "$*" >&2; }
fail() { printf '%s %s[FAIL]%s %s\n' "$(stamp)" "$C_RED" "$C_RESET" "$*" >&2; }
# Prefix a service's output lines with its name (used through process substitution).
prefix_output() { local name="$1"; while IFS= read -r line; do printf '%s [%s] %s\n' "$(stamp)" "$name" "$line"; done; }

# --- environment -------------------------------------------------------------
ensure_virtualenv() {
    if [ ! -x "$VENV_DIR/bin/python" ]; then
        info "creating virtual environment in $VENV_DIR"
        "$PYTHON_BIN" -m venv "$VENV_DIR"
    fi
    # Reinstall only when pyproject.toml changed since the last install.
    local stamp_file="$VENV_DIR/.admin_backend-installed" digest
    digest="$("$VENV_DIR/bin/python" -c 'import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' pyproject.toml)"
    if [ ! -f "$stamp_file" ] || [ "$(cat "$stamp_file")" != "$digest" ]; then
        info "installing the project and its dependencies (first run takes a minute)"
        mkdir -p "$PROJECT_DIR/var"
        local pip_log="$PROJECT_DIR/var/pip-install.log"
        { "$VENV_DIR/bin/python" -m pip install --upgrade pip &&
            "$VENV_DIR/bin/python" -m pip install -e "$PROJECT_DIR"; } >"$pip_log" 2>&1 ||
            { fail "installation failed; see $pip_log"; tail -20 "$pip_log" >&2; exit 1; }
        echo "$digest" >"$stamp_file"
        ok "dependencies installed"
    fi
    export PATH="$VENV_DIR/bin:$PATH"
}

py() { "$VENV_DIR/bin/python" "$@"; }

ensure_dotenv() {
    # First run: a .env for development, with a generated SECRET_KEY (never printed).
    [ -f .env ] && return 0
    local key
    key="$(py -c 'import secrets;print(secrets.token_urlsafe(50))')"
    sed "s|^SECRET_KEY=.*|SECRET_KEY=$key|" .env.example >.env
    chmod 600 .env
    ok "created .env from .env.example (edit it to change the configuration)"
}

# Settings as Django sees them (environment and .env); URLs come back masked where printed.
setting() { py -c "import django,os;os.environ.setdefault('DJANGO_SETTINGS_MODULE','admin_backend.settings');django.setup();from django.conf import settings;print(getattr(settings,'$1'))"; }
masked() { py -c 'import sys;from taskcore.secrets import mask_url;print(mask_url(sys.argv[1]))' "$1"; }

# --- process table (indexed arrays: works with the bash 3.2 of macOS too) -----
SERVICE_NAMES=()
SERVICE_COMMANDS=()
SERVICE_PIDS=()
SERVICE_RESTARTS=()   # space-separated epoch seconds of recent restarts
SHUTTING_DOWN=0

start_service() {  # start_service NAME COMMAND...
    local name="$1"; shift
    local index=${#SERVICE_NAMES[@]}
    SERVICE_NAMES[index]="$name"
    SERVICE_COMMANDS[index]="$(printf '%q ' "$@")"
    SERVICE_RESTARTS[index]=""
    launch "$index"
}

launch() {
    local index="$1"
    # Job control gives each service its own process group: Ctrl-C reaches only
    # this script, which then shuts the services down in order.
    eval "${SERVICE_COMMANDS[index]}" > >(prefix_output "${SERVICE_NAMES[index]}") 2>&1 &
    SERVICE_PIDS[index]=$!
    info "started ${SERVICE_NAMES[index]} (pid ${SERVICE_PIDS[index]})"
}

restart_allowed() {  # restart budget: RESTART_MAX_ATTEMPTS within RESTART_WINDOW seconds
    local index="$1" now recent="" count=0 t
    now="$(date +%s)"
    for t in ${SERVICE_RESTARTS[index]}; do
        if [ $((now - t)) -lt "$RESTART_WINDOW" ]; then recent="$recent $t"; count=$((count + 1)); fi
    done
    SERVICE_RESTARTS[index]="$recent"
    [ "$count" -lt "$RESTART_MAX_ATTEMPTS" ]
}

supervise_once() {
    local index pid status
    for index in "${!SERVICE_NAMES[@]}"; do
        pid="${SERVICE_PIDS[index]}"
        if ! kill -0 "$pid" 2>/dev/null; then
            status=0; wait "$pid" 2>/dev/null || status=$?
            [ "$SHUTTING_DOWN" = 1 ] && return 0
            if restart_allowed "$index"; then
                warn "${SERVICE_NAMES[index]} exited with status $status; restarting in ${RESTART_DELAY}s"
                sleep "$RESTART_DELAY"
                SERVICE_RESTARTS[index]="${SERVICE_RESTARTS[index]} $(date +%s)"
                launch "$index"
            else
                fail "${SERVICE_NAMES[index]} died $RESTART_MAX_ATTEMPTS times within ${RESTART_WINDOW}s; stopping everything"
                shutdown 1
            fi
        fi
    done
}

shutdown() {
    local code="${1:-0}" index pid waited=0
    if [ "$SHUTTING_DOWN" = 1 ]; then
        warn "second interrupt: forcing (SIGKILL); unacknowledged tasks go back to their queues"
        for pid in "${SERVICE_PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done
        exit 130
    fi
    SHUTTING_DOWN=1
    set +m  # no "Terminated" job notices while the services stop
    info "stopping (warm shutdown: running tasks finish; press Ctrl-C again to force)"
    # Reverse start order: the web server and beat stop producing before workers stop.
    for ((index = ${#SERVICE_PIDS[@]} - 1; index >= 0; index--)); do
        kill -TERM "${SERVICE_PIDS[index]}" 2>/dev/null || true
    done
    for pid in "${SERVICE_PIDS[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            sleep 0.5; waited=$((waited + 1))
            if [ $((waited % 20)) -eq 0 ]; then info "waiting for running tasks to finish..."; fi
        done
    done
    ok "all services stopped"
    exit "$code"
}

# --- pre-flight ----------------------------------------------------------------
preflight_redis() {
    local broker shown host port
    broker="$(setting CELERY_BROKER_URL)"
    shown="$(masked "$broker")"
    if py -c 'import sys;from taskcore.testing.redis_server import answers;sys.exit(0 if answers(sys.argv[1]) else 1)' "$broker"; then
        ok "Redis answers at $shown"
        return 0
    fi
    case "$broker" in
        redis://127.0.0.1*|redis://localhost*|redis://:*@127.0.0.1*|redis://:*@localhost*) ;;
        *)
            fail "Redis does not answer at $shown"
            fail "remedy: start Redis there, or fix CELERY_BROKER_URL / REDIS_HOST / REDIS_PORT in .env"
            return 1 ;;
    esac
    port="$(py -c 'import sys;from urllib.parse import urlsplit;print(urlsplit(sys.argv[1]).port or 6379)' "$broker")"
    host="127.0.0.1"
    info "no Redis at $shown: starting the bundled redis-server on $host:$port (data in var/redis, AOF on)"
    mkdir -p var/redis
    start_service redis py -m taskcore.testing.redis_server "$port" "$PROJECT_DIR/var/redis"
    for _ in $(seq 1 50); do
        if py -c 'import sys;from taskcore.testing.redis_server import answers;sys.exit(0 if answers(sys.argv[1]) else 1)' "$broker"; then
            ok "bundled Redis answers at $shown"
            return 0
        fi
        sleep 0.2
    done
    fail "the bundled redis-server did not start; see var/redis/ and the [redis] lines above"
    return 1
}

preflight_database() {
    local db
    db="$(py -c 'import django,os;os.environ.setdefault("DJANGO_SETTINGS_MODULE","admin_backend.settings");django.setup();from django.db import connection;connection.ensure_connection();print(connection.vendor, connection.settings_dict["NAME"])' 2>&1)" || {
        fail "database not reachable: $(masked "$db" | tail -1)"
        fail "remedy: check DATABASE_URL in .env (default: SQLite file var/db.sqlite3)"
        return 1
    }
    ok "database reachable ($db)"
    info "applying migrations"
    py manage.py migrate --noinput | prefix_output migrate
    py manage.py check --fail-level ERROR | prefix_output check
}

preflight_smtp() {
    [ "$RUN_SMTP" = 1 ] || return 0
    local host port
    host="$(setting EMAIL_HOST)"; port="$(setting EMAIL_PORT)"
    case "$host" in 127.0.0.1|localhost) ;; *) RUN_SMTP=0; info "mail goes to $host:$port"; return 0 ;; esac
    if py -c 'import socket,sys;socket.create_connection((sys.argv[1],int(sys.argv[2])),1).close()' "$host" "$port" 2>/dev/null; then
        RUN_SMTP=0; ok "an SMTP server already listens on $host:$port"
    fi
    EMAIL_DEV_PORT="$port"
}

# --- main ----------------------------------------------------------------------
main() {
    ensure_virtualenv
    ensure_dotenv
    mkdir -p logs var
    info "logs go to $PROJECT_DIR/logs/ (celery.log, celery_tasks.log, celery_worker.log, celery_beat.log, flower.log)"
    set -m
    trap 'shutdown 130' INT
    trap 'shutdown 143' TERM

    preflight_redis || exit 1
    preflight_database || { [ ${#SERVICE_PIDS[@]} -gt 0 ] && shutdown 1; exit 1; }
    preflight_smtp
    if [ "$CHECK_ONLY" = 1 ]; then ok "pre-flight checks passed"; [ ${#SERVICE_PIDS[@]} -gt 0 ] && shutdown 0; exit 0; fi

    if [ "$RUN_SMTP" = 1 ]; then
        start_service smtp py -m notifications.dev_smtp --port "$EMAIL_DEV_PORT" --dir "$PROJECT_DIR/var/mail"
    fi

    local worker_args=()
    case "$WORKER_MODE" in
        groups) worker_args=(--groups) ;;
        group) worker_args=(--group "$ONLY_GROUP") ;;
    esac
    local name command
    while IFS=$'\t' read -r name command; do
        # shellcheck disable=SC2086 # the command line is split into words on purpose
        start_service "$name" $command
    done < <(py -m admin_backend.worker_commands ${worker_args[@]+"${worker_args[@]}"})

    if [ "$RUN_BEAT" = 1 ]; then
        start_service beat celery -A admin_backend beat --loglevel info \
            --scheduler django_celery_beat.schedulers:DatabaseScheduler --pidfile "$PROJECT_DIR/var/celerybeat.pid"
    fi
    if [ "$RUN_FLOWER" = 1 ]; then
        start_service flower celery -A admin_backend flower --port="$FLOWER_PORT" --address=127.0.0.1
    fi
    if [ "$RUN_WEB" = 1 ]; then
        start_service web py manage.py runserver "127.0.0.1:$WEB_PORT" --noreload
        ok "admin: http://127.0.0.1:$WEB_PORT/admin/  (no account yet? run: $VENV_DIR/bin/python manage.py createsuperuser)"
    fi
    [ "$RUN_FLOWER" = 1 ] && ok "Flower: http://127.0.0.1:$FLOWER_PORT/"
    ok "running; press Ctrl-C to stop"

    local ticks=0
    while true; do
        sleep 1
        supervise_once
        ticks=$((ticks + 1))
        if [ "$HEALTH_INTERVAL" -gt 0 ] && [ $((ticks % HEALTH_INTERVAL)) -eq 0 ]; then
            health_summary
        fi
    done
}

health_summary() {
    # Continuous health monitoring: one line per interval, never fatal.
    local summary
    if summary="$(py manage.py celery_health --format summary 2>&1)"; then
        info "health: $summary"
    else
        warn "health: $summary"
    fi
}

main
