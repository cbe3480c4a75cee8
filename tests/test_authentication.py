"""A Redis that refuses the password: each surface says "authentication", nothing retries long.

A private redis-server with ``requirepass``; the worker, ``celery_health`` and a
caller's ``.delay()`` are given a URL without the password, or with a wrong one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskcore.lifecycle import EXIT_BROKER_AUTHENTICATION

PROJECT_DIR = Path(__file__).resolve().parent.parent
PASSWORD = "right-pw-7"


@pytest.fixture
def guarded_redis(private_redis):
    server = private_redis("--requirepass", PASSWORD)
    return server.port


def broker_env(url: str) -> dict[str, str]:
    return {
        "CELERY_BROKER_URL": url,
        "CELERY_RESULT_BACKEND": url,
        "REDIS_URL": url,
        "CACHE_URL": url,
        "REDIS_PASSWORD": "",
    }


@pytest.mark.parametrize("password", ["", "wrong-pw-3"])
def test_a_worker_without_the_right_password_exits_at_once_naming_authentication(
    app, start_worker, guarded_redis, password
):
    url = (
        f"redis://:{password}@127.0.0.1:{guarded_redis}/0"
        if password
        else (f"redis://127.0.0.1:{guarded_redis}/0")
    )
    started = time.monotonic()
    worker = start_worker(["default"], wait=False, env=broker_env(url))
    exit_status = worker.process.wait(timeout=60)
    elapsed = time.monotonic() - started
    log = worker.output()
    assert exit_status == EXIT_BROKER_AUTHENTICATION, log[-3000:]
    assert "worker not started" in log and "authentication failed" in log, log[-3000:]
    assert "Traceback" not in log
    assert password == "" or password not in log  # never the password it was given
    print(f"worker exited with {exit_status} after {elapsed:.1f}s")


def test_celery_health_names_authentication(guarded_redis):
    url = f"redis://:wrong-pw-3@127.0.0.1:{guarded_redis}/0"
    completed = subprocess.run(
        [sys.executable, "manage.py", "celery_health", "--format", "summary", "--timeout", "3"],
        cwd=PROJECT_DIR,
        env={**os.environ, "FLOWER_URL": "off", **broker_env(url)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert "authentication failed" in completed.stdout, completed.stdout
    assert "wrong-pw-3" not in completed.stdout + completed.stderr


def test_delay_names_authentication(guarded_redis):
    url = f"redis://127.0.0.1:{guarded_redis}/0"
    code = (
        "import django;django.setup()\n"
        "from taskcore.tasks import debug_task\n"
        "try:\n    debug_task.delay('x')\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "admin_backend.settings", **broker_env(url)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.stdout.startswith("TaskNotSent"), completed.stdout + completed.stderr
    assert "authentication failed" in completed.stdout, completed.stdout
