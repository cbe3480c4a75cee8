"""Container healthchecks that need neither Django nor Celery loaded (fast, small).

    python deploy/healthcheck.py web      # GET /health/live answers 200
    python deploy/healthcheck.py beat     # the PID file names a running beat process
    python deploy/healthcheck.py flower   # Flower's HTTP API answers (with its login)
    python deploy/healthcheck.py worker worker@$HOSTNAME   # celery_health's checks, for one worker

Exit code 0 healthy, 1 unhealthy (what Docker's HEALTHCHECK expects), with one
line saying why. Workers are checked with the spec's
``celery -A admin_backend inspect ping -d worker@$HOSTNAME`` and then ``worker``
(the one check here that loads Django: it runs celery_health's ``broker`` and
``workers`` checks and judges them for that worker, so a worker that answers but
is stalled, or a broker that refuses writes, is unhealthy); the whole system
with ``python manage.py celery_health``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _get(url: str, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an HTTP URL: {url}")
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) only, checked
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _probe_host() -> str:
    """A Host header Django accepts: the first concrete name of ALLOWED_HOSTS."""
    for name in os.environ.get("ALLOWED_HOSTS", "").split(","):
        name = name.strip()
        if name and name != "*" and not name.startswith("."):
            return name
    return "localhost"


def check_web(url: str, timeout: float) -> tuple[bool, str]:
    # Plain HTTP from inside the container: say the request came through the TLS
    # proxy, so a production setting (SECURE_SSL_REDIRECT) does not answer 301.
    headers = {"Host": _probe_host(), "X-Forwarded-Proto": "https"}
    status, body = _get(url, headers, timeout)
    if status != 200:
        return False, f"{url} answered {status}: {body[:200]!r}"
    return True, f"{url} answered 200"


def check_beat(pidfile: Path) -> tuple[bool, str]:
    try:
        pid = int(pidfile.read_text().strip())
    except FileNotFoundError:
        return False, f"no PID file at {pidfile}: beat is not running (or uses another --pidfile)"
    except ValueError:
        return False, f"PID file {pidfile} does not hold a process id"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"beat (pid {pid}, from {pidfile}) is not running: stale PID file"
    except PermissionError:
        pass  # it exists, owned by another user
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        words = cmdline.read_bytes().split(b"\0")
        if b"beat" not in words:
            return False, f"pid {pid} from {pidfile} is not celery beat: {b' '.join(words)[:120]!r}"
    return True, f"beat runs (pid {pid})"


def _flower_auth_header() -> dict[str, str]:
    credentials = os.environ.get("FLOWER_BASIC_AUTH", "").split(",")[0].strip()
    if not credentials:
        return {}
    token = base64.b64encode(credentials.encode()).decode()
    return {"Authorization": f"Basic {token}"}


def check_flower(url: str, timeout: float) -> tuple[bool, str]:
    headers = _flower_auth_header()
    status, body = _get(url, headers, timeout)
    if status == 401:
        return False, f"{url} answered 401: FLOWER_BASIC_AUTH here differs from Flower's"
    if status != 200:
        return False, f"{url} answered {status}"
    if "/api/" in url:
        try:
            json.loads(body)
        except ValueError:
            return False, f"{url} did not answer JSON: {body[:120]!r}"
    return True, f"{url} answered 200"


def check_worker(node: str, timeout: float) -> tuple[bool, str]:
    """celery_health's ``broker`` and ``workers`` checks, judged for the worker ``node``.

    The same code path as ``celery_health`` and ``/health/ready`` (run_health);
    another worker's stall does not make this container unhealthy.
    """
    sys.path.insert(0, str(PROJECT_DIR))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "admin_backend.settings")
    import django

    django.setup()
    from admin_backend.celery import app
    from taskcore.health import run_health

    results = {
        result.name: result
        for result in run_health(app, only=["broker", "workers"], timeout=timeout).results
    }
    broker = results.get("broker")
    if broker is None or broker.status.value == "critical":
        return False, f"broker: {broker.detail if broker else 'not checked'}"
    workers = results.get("workers")
    data = (workers.data or {}) if workers else {}
    if node not in (data.get("workers") or {}):
        return False, f"{node} does not answer: {workers.detail if workers else 'not checked'}"
    stalled = (data.get("stalled") or {}).get(node)
    if stalled:
        return False, f"{node} is stalled: {stalled['reason']}"
    return True, f"{node} answers and makes progress"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="service", required=True)
    web = sub.add_parser("web")
    web.add_argument(
        "--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health/live"
    )
    beat = sub.add_parser("beat")
    beat.add_argument(
        "--pidfile",
        type=Path,
        default=Path(
            os.environ.get("BEAT_PIDFILE", PROJECT_DIR / "var" / "run" / "celerybeat.pid")
        ),
    )
    flower = sub.add_parser("flower")
    flower.add_argument(
        "--url",
        default=f"http://127.0.0.1:{os.environ.get('FLOWER_PORT', '5555')}/api/workers?status=1",
    )
    worker = sub.add_parser("worker")
    worker.add_argument("node", help="the worker's node name, e.g. worker@$HOSTNAME")
    parser.add_argument("--timeout", type=float, default=5.0)
    options = parser.parse_args(argv)
    try:
        if options.service == "web":
            healthy, message = check_web(options.url, options.timeout)
        elif options.service == "beat":
            healthy, message = check_beat(options.pidfile)
        elif options.service == "worker":
            healthy, message = check_worker(options.node, options.timeout)
        else:
            healthy, message = check_flower(options.url, options.timeout)
    except (OSError, ValueError) as exc:  # refused, timed out, bad URL
        healthy, message = False, f"{options.service}: {type(exc).__name__}: {exc}"
    print(("healthy: " if healthy else "unhealthy: ") + message)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
