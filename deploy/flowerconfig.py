"""Flower configuration: authentication required, state kept across restarts.

Run: ``celery -A admin_backend flower --conf=deploy/flowerconfig.py``

Flower executes this file (tornado option file) after reading its ``FLOWER_*``
environment variables; names below override those, so each is taken from the
environment (or the project's ``.env``) with a default.

- ``FLOWER_BASIC_AUTH=user:password[,user2:password2]`` is required (or OAuth:
  ``FLOWER_AUTH`` with ``FLOWER_AUTH_PROVIDER`` / ``FLOWER_OAUTH2_*``). Without
  either, Flower refuses to start: its UI can revoke tasks and shut workers down.
  ``/healthcheck`` stays open (it says only "OK").
- State (tasks and workers seen) persists in ``var/flower/flower.db``
  (``FLOWER_DB``), saved every minute and at shutdown.
- Logs go to ``logs/flower.log`` (the process role "flower" selects that file).
- Prometheus metrics of task events stay at Flower's ``/metrics``.
"""

import os
import sys
from pathlib import Path

_here = globals().get("__file__")
BASE_DIR = Path(_here).resolve().parent.parent if _here else Path.cwd()


def _env(name, default=None):
    if os.environ.get(name):
        return os.environ[name]
    # .env is read by Django's settings, which Flower may not have loaded yet.
    dotenv = BASE_DIR / ".env"
    if dotenv.exists():
        for line in dotenv.read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key.strip() == name and value.strip():
                return value.strip().strip("'\"")
    return default


address = _env("FLOWER_ADDRESS", "127.0.0.1")
port = int(_env("FLOWER_PORT", "5555"))
url_prefix = _env("FLOWER_URL_PREFIX", "")

_basic_auth = _env("FLOWER_BASIC_AUTH")
_oauth = _env("FLOWER_AUTH")
if _basic_auth:
    basic_auth = [item for item in _basic_auth.split(",") if item]
elif not _oauth:
    sys.stderr.write(
        "Flower not started: set FLOWER_BASIC_AUTH=user:password (or FLOWER_AUTH for OAuth) "
        "in the environment or .env; Flower can revoke tasks and stop workers, so it never "
        "runs without authentication.\n"
    )
    raise SystemExit(78)  # EX_CONFIG, as the worker on an unsafe configuration

persistent = True
db = _env("FLOWER_DB", str(BASE_DIR / "var" / "flower" / "flower.db"))
Path(db).parent.mkdir(parents=True, exist_ok=True)
state_save_interval = int(_env("FLOWER_STATE_SAVE_INTERVAL", "60000"))  # milliseconds
# Bounded memory: the newest tasks are kept, offline workers dropped after an hour.
max_tasks = int(_env("FLOWER_MAX_TASKS", "10000"))
purge_offline_workers = int(_env("FLOWER_PURGE_OFFLINE_WORKERS", "3600"))

# This process is Flower: its log lines go to logs/flower.log (the settings are the
# same in every process; the program says which it is).
from admin_backend.celery import adopt_process_role  # noqa: E402

adopt_process_role("flower")
