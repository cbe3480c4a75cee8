"""Pre-flight facts for the start scripts, computed the way the application sees them.

``start_celery.sh`` and ``start_celery.bat`` call this rather than parsing
settings themselves: the settings (environment plus ``.env``) are loaded once by
Django, URLs are reported with their password masked, and the worker command
lines come from the queue table (``admin_backend.worker_commands``).

    python deploy/preflight.py report --format sh     # KEY='value' lines for eval
    python deploy/preflight.py report --format cmd    # KEY=value lines for "for /f"
    python deploy/preflight.py database --format sh   # reachable? migrations? checks?
    python deploy/preflight.py wait-broker --timeout 10
    python deploy/preflight.py worker-commands --windows [--groups | --group NAME]
    python deploy/preflight.py port-free 8000         # exit 1 when something listens
    python deploy/preflight.py restart-budget --max 3 --window 120 T1 T2   # .bat only
    python deploy/preflight.py compose                # a Compose that reads our file?

No output of this module contains a password, except ``BROKER_PASSWORD`` in the
``sh`` report (read by the shell script into a variable to configure the bundled
Redis; it is never printed).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

PROJECT_DIR = Path(__file__).resolve().parent.parent
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# Options that only exist for the prefork pool (child recycling).
PREFORK_ONLY = ("--max-tasks-per-child", "--max-memory-per-child")


def _setup_django():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "admin_backend.settings")
    import django

    django.setup()
    from django.conf import settings

    return settings


def _mask(text: str) -> str:
    from taskcore.secrets import mask_text

    return mask_text(text)


def probe_redis(url: str, timeout: float = 2.0) -> tuple[str, str]:
    """("up" | "auth" | "down", reason) for the Redis at ``url``; the reason is masked."""
    import redis

    from taskcore.redis_clients import connect, probe_options

    try:
        client = connect(url, probe_options(timeout))
        client.ping()
        return "up", ""
    except redis.AuthenticationError as exc:
        return "auth", _mask(str(exc))
    except redis.ResponseError as exc:
        text = str(exc)
        if any(word in text for word in ("NOAUTH", "WRONGPASS", "without any password")):
            return "auth", _mask(text)
        return "down", _mask(text)
    except (redis.RedisError, OSError, ValueError) as exc:
        return "down", _mask(str(exc) or type(exc).__name__)


BROKER_NAMES = {"redis": "Redis", "sentinel": "Redis (Sentinel)", "amqp": "RabbitMQ"}
_AUTH_WORDS = ("NOAUTH", "WRONGPASS", "without any password", "ACCESS_REFUSED", "Authentication")


def probe_broker(settings, timeout: float = 3.0) -> tuple[str, str]:
    """Like :func:`probe_redis`, for any broker the settings support (through kombu)."""
    url = settings.CELERY_BROKER_URL
    kind = getattr(settings, "BROKER_KIND", "redis")
    if kind == "redis":
        return probe_redis(_first_url(url), timeout)
    from kombu import Connection

    connection = Connection(
        url,
        transport_options=dict(settings.CELERY_BROKER_TRANSPORT_OPTIONS),
        connect_timeout=timeout,
    )
    try:
        connection.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0, timeout=timeout
        )
        return "up", ""
    except Exception as exc:
        text = _mask(f"{type(exc).__name__}: {exc}")[:300]
        return ("auth" if any(word in text for word in _AUTH_WORDS) else "down"), text
    finally:
        connection.release()


def _first_url(url: str) -> str:
    # Celery accepts ";"-separated failover URLs; the first one is the primary.
    return url.split(";", 1)[0].strip()


def report() -> dict[str, str]:
    """Everything the start scripts decide on, as strings."""
    try:
        settings = _setup_django()
    except Exception as exc:  # ImproperlyConfigured, a bad DATABASE_URL, ...
        return {"SETTINGS_ERROR": _mask(f"{type(exc).__name__}: {exc}")}
    broker = _first_url(settings.CELERY_BROKER_URL)
    result = _first_url(settings.CELERY_RESULT_BACKEND or broker)
    parts = urlsplit(broker)
    kind = getattr(settings, "BROKER_KIND", "redis")
    facts = {
        "SETTINGS_ERROR": "",
        "BROKER_SHOWN": _mask(settings.CELERY_BROKER_URL),
        "BROKER_NAME": BROKER_NAMES.get(kind, "the broker"),
        # The bundled redis-server stands in only for a plain local redis:// URL.
        "BROKER_LOCAL": "1" if parts.scheme == "redis" and parts.hostname in LOCAL_HOSTS else "0",
        "BROKER_PORT": str(parts.port or 6379),
        "BROKER_PASSWORD": unquote(parts.password or ""),
    }
    facts["BROKER_STATE"], facts["BROKER_REASON"] = probe_broker(settings)
    facts["RESULT_SHOWN"] = _mask(result)
    if result == broker:
        facts["RESULT_STATE"], facts["RESULT_REASON"] = facts["BROKER_STATE"], ""
    elif result.startswith(("redis://", "rediss://")):
        facts["RESULT_STATE"], facts["RESULT_REASON"] = probe_redis(result)
    else:  # a non-Redis result backend: not ours to probe
        facts["RESULT_STATE"], facts["RESULT_REASON"] = "up", ""
    database = settings.DATABASES["default"]
    facts.update(
        {
            "DB_VENDOR": database["ENGINE"].rsplit(".", 1)[-1],
            "DB_NAME": _mask(str(database.get("NAME", ""))),
            "EMAIL_HOST": str(settings.EMAIL_HOST),
            "EMAIL_PORT": str(settings.EMAIL_PORT),
            "LOG_DIR": str(settings.LOG_DIR),
            "BEAT_SCHEDULER": str(getattr(settings, "CELERY_BEAT_SCHEDULER", "") or ""),
            "DEBUG": "1" if settings.DEBUG else "0",
            # .env was loaded into os.environ by the settings module, so this sees both.
            "FLOWER_AUTH": "1"
            if os.environ.get("FLOWER_BASIC_AUTH") or os.environ.get("FLOWER_AUTH")
            else "0",
            "LOG_LEVEL": str(getattr(settings, "CELERY_LOG_LEVEL", "INFO")).lower(),
            "FLOWER_URL": os.environ.get("FLOWER_URL", ""),
        }
    )
    return facts


def print_report(facts: dict[str, str], output_format: str) -> None:
    for key, value in facts.items():
        if output_format == "sh":
            print(f"PF_{key}={shlex.quote(value)}")
        elif key != "BROKER_PASSWORD":
            # cmd.exe: one KEY=value per line; never a password, no line breaks.
            print(f"PF_{key}={' '.join(value.split())}")


def database_report() -> dict[str, str]:
    """Connect to the database, count unapplied migrations, run Django's system checks."""
    facts = {"DB_ERROR": "", "DB_DESC": "", "DB_PENDING": "0", "CHECK_ERRORS": ""}
    try:
        _setup_django()
        from django.db import connection
        from django.db.migrations.executor import MigrationExecutor

        connection.ensure_connection()
        name = str(connection.settings_dict.get("NAME", ""))
        facts["DB_DESC"] = _mask(f"{connection.vendor} {name}")
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        facts["DB_PENDING"] = str(len(plan))
    except Exception as exc:
        facts["DB_ERROR"] = _mask(f"{type(exc).__name__}: {exc}".strip())
        return facts
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    try:
        call_command("check", fail_level="ERROR", stdout=io.StringIO(), stderr=io.StringIO())
    except SystemCheckError as exc:
        facts["CHECK_ERRORS"] = _mask(str(exc).strip())
    return facts


def wait_broker(timeout: float) -> int:
    settings = _setup_django()
    broker = _first_url(settings.CELERY_BROKER_URL)
    deadline = time.monotonic() + timeout
    state, reason = probe_redis(broker, timeout=0.5)
    while state == "down" and time.monotonic() < deadline:
        time.sleep(0.2)
        state, reason = probe_redis(broker, timeout=0.5)
    if state == "up":
        return 0
    print(f"Redis at {_mask(broker)}: {state} {reason}".strip(), file=sys.stderr)
    return 1


def worker_commands(*, groups: bool, group: str | None, windows: bool) -> list[dict]:
    """The queue table's worker commands (``admin_backend.worker_commands --json``).

    ``windows``: prefork does not work on Windows, so the pool becomes ``threads``
    (same concurrency; an ``--autoscale=max,min`` becomes ``--concurrency=max``),
    the prefork-only child recycling options are dropped and
    ``%h`` in the node name is replaced by this host's name.
    """
    args = [sys.executable, "-m", "admin_backend.worker_commands", "--json"]
    if group:
        args += ["--group", group]
    elif groups:
        args.append("--groups")
    completed = subprocess.run(args, cwd=PROJECT_DIR, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(completed.stderr.strip() or f"worker_commands failed: {args}")
    commands = json.loads(completed.stdout)
    if windows:
        host = socket.gethostname()
        for command in commands:
            kept = []
            for arg in command["args"]:
                if arg.startswith("--pool="):
                    arg = "--pool=threads"
                if arg.startswith("--autoscale="):
                    # The threads pool cannot grow or shrink: run the ceiling.
                    arg = f"--concurrency={arg.split('=', 1)[1].split(',')[0]}"
                # %h would meet cmd.exe's variable expansion: spell the host out.
                arg = arg.replace("%h", host)
                if arg.split("=", 1)[0] in PREFORK_ONLY:
                    continue
                kept.append(arg)
            command["args"] = kept
    return commands


def restart_budget(history: list[int], *, max_restarts: int, window: int, now: int) -> list[int]:
    """The restart times still inside ``window``, plus ``now`` when one more is allowed.

    Raises ``SystemExit(1)`` when ``max_restarts`` restarts already happened within
    the window (start_celery.bat's restart budget; the .sh does the same in bash).
    """
    recent = [t for t in history if now - t < window]
    if len(recent) >= max_restarts:
        raise SystemExit(1)
    return [*recent, now]


# deploy/docker-compose.yml uses depends_on.required (Compose 2.20.0) and the
# top-level name: Compose v1 (docker-compose 1.x, Debian's docker-compose package)
# rejects the file with a schema error that does not say why.
COMPOSE_MINIMUM = (2, 20, 0)
COMPOSE_COMMANDS = (("docker", "compose"), ("docker-compose",))


def _version_of(text: str) -> tuple[int, ...] | None:
    found = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(part) for part in found.groups()) if found else None


def compose_check() -> tuple[bool, str]:
    """Which Compose runs here, and whether it can read deploy/docker-compose.yml."""
    minimum = ".".join(map(str, COMPOSE_MINIMUM))
    seen = []
    for command in COMPOSE_COMMANDS:
        if not shutil.which(command[0]):
            continue
        try:
            answer = subprocess.run(
                [*command, "version", "--short"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        version = _version_of(answer.stdout) if answer.returncode == 0 else None
        if version is None:
            continue
        name = " ".join(command)
        if version >= COMPOSE_MINIMUM:
            return True, f"{name} {'.'.join(map(str, version))} (needs {minimum} or later)"
        seen.append(f"{name} {'.'.join(map(str, version))}")
    if seen:
        return False, (
            f"found {', '.join(seen)}; deploy/docker-compose.yml needs Docker Compose {minimum} "
            "or later (Compose v1, such as Debian's docker-compose 1.29, rejects its `name` "
            "and `depends_on.required`): install the Compose v2 plugin (`docker compose`), "
            "see docs/deployment.md"
        )
    return False, f"no Docker Compose found: install Docker Compose {minimum} or later"


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) != 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="settings and connectivity facts")
    rep.add_argument("--format", choices=("sh", "cmd"), default="sh")
    dbp = sub.add_parser("database", help="database reachable, migrations pending, system checks")
    dbp.add_argument("--format", choices=("sh", "cmd"), default="sh")
    wait = sub.add_parser("wait-broker", help="wait until the broker answers")
    wait.add_argument("--timeout", type=float, default=10.0)
    workers = sub.add_parser(
        "worker-commands", help="NAME<TAB>NODE<TAB>COMMAND LINE, one worker a line"
    )
    workers.add_argument("--groups", action="store_true")
    workers.add_argument("--group")
    workers.add_argument("--windows", action="store_true", help="threads pool for Windows")
    budget = sub.add_parser("restart-budget", help="print the new restart history, or exit 1")
    budget.add_argument("--max", type=int, default=3)
    budget.add_argument("--window", type=int, default=120)
    budget.add_argument("history", nargs="*", type=int, help="epoch seconds of recent restarts")
    sub.add_parser("now", help="epoch seconds")
    port = sub.add_parser("port-free", help="exit 0 when nothing listens on 127.0.0.1:PORT")
    port.add_argument("port", type=int)
    sub.add_parser("compose", help="exit 0 when a Compose that reads the compose file is here")
    options = parser.parse_args(argv)

    if options.command == "report":
        print_report(report(), options.format)
        return 0
    if options.command == "database":
        print_report(database_report(), options.format)
        return 0
    if options.command == "wait-broker":
        return wait_broker(options.timeout)
    if options.command == "worker-commands":
        for command in worker_commands(
            groups=options.groups, group=options.group, windows=options.windows
        ):
            node = next(
                (arg.split("=", 1)[1] for arg in command["args"] if arg.startswith("--hostname=")),
                "",
            )
            print(f"{command['name']}\t{node}\t{subprocess.list2cmdline(command['args'])}")
        return 0
    if options.command == "restart-budget":
        allowed = restart_budget(
            options.history, max_restarts=options.max, window=options.window, now=int(time.time())
        )
        print(" ".join(str(t) for t in allowed))
        return 0
    if options.command == "now":
        print(int(time.time()))
        return 0
    if options.command == "compose":
        usable, text = compose_check()
        print(("ok: " if usable else "error: ") + text, file=sys.stdout if usable else sys.stderr)
        return 0 if usable else 1
    return 0 if port_free(options.port) else 1


if __name__ == "__main__":
    sys.exit(main())
