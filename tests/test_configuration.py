"""Configuration from the environment: deploy checks, unsafe settings refused."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from admin_backend import queues

PROJECT_DIR = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = PROJECT_DIR / ".env.example"
PRODUCTION_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": "x7" * 30 + "-production-like-key",
    "ALLOWED_HOSTS": "admin.example.org",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
    "SECURE_SSL_REDIRECT": "1",
}


def manage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_DIR,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_deploy_passes_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_without_secret_key_and_debug_off_the_project_refuses_to_start():
    env = {**PRODUCTION_ENV, "SECRET_KEY": ""}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "SECRET_KEY is not set and DEBUG is off" in result.stderr


def test_a_visibility_timeout_shorter_than_a_time_limit_is_reported_by_check():
    too_short = str(queues.TABLE.longest_time_limit() - 1)
    result = manage("check", env={"CELERY_VISIBILITY_TIMEOUT": too_short})
    assert result.returncode != 0
    assert "taskcore.visibility_vs_time_limit" in result.stderr
    assert "a running task would be delivered twice" in result.stderr


def test_a_worker_refuses_to_start_with_a_short_visibility_timeout(start_worker):
    too_short = str(queues.TABLE.longest_time_limit() - 1)
    worker = start_worker(["default"], wait=False, env={"CELERY_VISIBILITY_TIMEOUT": too_short})
    assert worker.process.wait(timeout=60) != 0
    assert worker.process.returncode == os.EX_CONFIG
    assert "Unsafe Celery configuration, worker not started" in worker.output()
    assert f"visibility_timeout {too_short}s is not longer" in worker.output()


def test_empty_variables_mean_the_default(tmp_path):
    code = (
        "import django,os;os.environ['DJANGO_SETTINGS_MODULE']='admin_backend.settings';"
        "django.setup();from django.conf import settings as s;"
        "print(s.CELERY_BROKER_URL, s.DATABASES['default']['ENGINE'], s.LOG_DIR)"
    )
    env = {
        **os.environ,
        "CELERY_BROKER_URL": "",
        "REDIS_URL": "",
        "DATABASE_URL": "",
        "LOG_DIR": "",
        "REDIS_HOST": "redis.internal",
        "REDIS_PASSWORD": "p@ss/word",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, env=env, capture_output=True, text=True
    )
    broker, engine, log_dir = out.stdout.split()
    assert broker == "redis://:p%40ss%2Fword@redis.internal:6379/0"
    assert engine == "django.db.backends.sqlite3"
    assert log_dir == str(PROJECT_DIR / "logs")


@pytest.mark.parametrize(
    ("url", "scheme"), [("redis://h:6379/0", "redis"), ("rediss://h:6380/0", "rediss")]
)
def test_tls_urls_get_ssl_options(url, scheme):
    code = (
        "import django,os;os.environ['DJANGO_SETTINGS_MODULE']='admin_backend.settings';"
        "django.setup();from django.conf import settings as s;"
        "print(getattr(s, 'CELERY_BROKER_USE_SSL', None) is not None)"
    )
    env = {**os.environ, "CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, env=env, capture_output=True, text=True
    )
    assert out.stdout.strip() == str(scheme == "rediss")


def test_a_worker_starts_without_deprecation_warnings_about_the_settings(start_worker, app):
    """Celery reads CELERY_* Django settings under their own names: none is taken for an old one.

    With ``namespace="CELERY"`` Celery matches CELERY_ACCEPT_CONTENT and its like
    against its pre-4.0 names, and the worker logs a warning for each at start-up.
    """
    worker = start_worker(["default"])
    startup = worker.output()

    assert "ready." in startup
    assert "Deprecat" not in startup, startup
    assert "celery upgrade settings" not in startup, startup
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_default_queue == "default"


# Run in a fresh interpreter: records every variable the settings module reads.
_RECORD_READS = """
import json, os, sys

def by_settings():
    # The first caller outside django-environ is the settings module (not a library
    # the settings import, which may read variables of its own).
    frame = sys._getframe(2)
    while frame and "/environ/" in frame.f_code.co_filename:
        frame = frame.f_back
    return frame is not None and frame.f_code.co_filename.endswith("admin_backend/settings.py")

class Recording(dict):
    seen = set()
    def __getitem__(self, key):
        if by_settings(): self.seen.add(key)
        return super().__getitem__(key)
    def get(self, key, default=None):
        if by_settings(): self.seen.add(key)
        return super().get(key, default)
    def __contains__(self, key):
        if by_settings(): self.seen.add(key)
        return super().__contains__(key)

os.environ = Recording(os.environ)  # before django-environ keeps a reference to it
import admin_backend.settings  # noqa: E402
print(json.dumps(sorted(os.environ.seen)))
"""


@pytest.mark.parametrize(
    "broker",
    ["redis://127.0.0.1:6379/0", "sentinel://127.0.0.1:26379", "amqp://guest:guest@127.0.0.1//"],
)
def test_every_variable_the_settings_read_is_documented_in_env_example(broker):
    """The environment is read in the settings only, and each variable is in .env.example."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CELERY_")}
    completed = subprocess.run(
        [sys.executable, "-c", _RECORD_READS],
        cwd=PROJECT_DIR,
        env={**env, "CELERY_BROKER_URL": broker, "DATABASE_URL": "postgres://u@db/x"},
        capture_output=True,
        text=True,
        check=True,
    )
    read = set(json.loads(completed.stdout.splitlines()[-1]))
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    # Read by Django itself when the settings module is imported, not ours to document.
    read -= {"DJANGO_SETTINGS_MODULE"}
    assert read, "no variable read: the recording did not work"
    assert read - documented == set(), "read by the settings but not in .env.example"
