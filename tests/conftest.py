"""Fixtures that start real parts: worker processes, an SMTP server, private Redis servers.

The Redis for the run and the log directory are chosen by
``taskcore.testing.pytest_plugin`` before Django starts.
"""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from urllib.parse import quote

import pytest
from aiosmtpd.controller import Controller

from admin_backend.celery import app as celery_app
from taskcore.testing.redis_server import free_port, start_redis
from taskcore.testing.waiting import wait_until
from taskcore.testing.workers import WorkerProcess


def database_url_for(settings_dict: dict) -> str:
    """The URL a worker process needs to open the database this test process uses."""
    engine = settings_dict["ENGINE"]
    name = settings_dict["NAME"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{Path(name).resolve()}"
    scheme = {"postgresql": "postgres", "mysql": "mysql"}[engine.rsplit(".", 1)[-1]]
    user = quote(settings_dict.get("USER") or "", safe="")
    password = quote(settings_dict.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"{scheme}://{auth}{host}{port}/{name}"


@pytest.fixture(scope="session")
def app():
    return celery_app


@pytest.fixture(scope="session")
def worker_database_url(django_db_setup, django_db_blocker):
    """The test database's URL, for worker processes; the test database exists.

    pytest-django creates only the databases that tests marked ``django_db``
    use. A test that only starts workers, run alone, would otherwise hand them
    the real database.
    """
    from django.db import connection
    from django.test.utils import setup_databases, teardown_databases

    created = None
    with django_db_blocker.unblock():
        if connection.settings_dict["NAME"] != connection.creation._get_test_db_name():
            created = setup_databases(verbosity=0, interactive=False, aliases={"default"})
        url = database_url_for(connection.settings_dict)
    yield url
    if created:
        with django_db_blocker.unblock():
            teardown_databases(created, verbosity=0)


@pytest.fixture
def log_dir(settings) -> Path:
    return Path(settings.LOG_DIR)


@pytest.fixture
def start_worker(app, worker_database_url, test_work_dir, request):
    """Factory: ``start_worker(["email"], concurrency=2, env={...})`` -> a ready WorkerProcess.

    Every worker started is stopped (warm shutdown) when the test ends.
    """
    started: list[WorkerProcess] = []

    def start(queues, *, wait=True, env=None, client_app=None, **options) -> WorkerProcess:
        # client_app: an app on the worker's broker, when the test gives it another one.
        worker = WorkerProcess(
            client_app or app,
            queues,
            log_path=test_work_dir / "workers" / f"{request.node.name}-{len(started)}.out",
            env={"DATABASE_URL": worker_database_url, **(env or {})},
            **options,
        )
        started.append(worker)
        return worker.start(wait=wait)

    yield start
    for worker in started:
        worker.stop()


class _MailStore:
    """aiosmtpd handler keeping every message received, parsed."""

    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server(settings):
    """A real SMTP server on a free port; workers started after it send mail to it."""
    store = _MailStore()
    port = free_port()
    controller = Controller(store, hostname="127.0.0.1", port=port)
    controller.start()
    store.port = port
    store.worker_env = {"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(port)}
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    yield store
    controller.stop()


@pytest.fixture
def private_redis(test_work_dir, request):
    """Factory for a redis-server of the test's own (a password, AOF, ...)."""
    servers = []

    def start(*extra_args: str):
        server = start_redis(
            test_work_dir / f"redis-{request.node.name}-{len(servers)}", extra_args=list(extra_args)
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def _other_database_sessions_end_before_teardown(django_db_setup, django_db_blocker):
    """On PostgreSQL, wait for the workers' sessions to end before the test database is dropped.

    A worker that has exited leaves its server-side session for a moment; DROP DATABASE
    then fails ("being accessed by other users") and the test database is left on the
    server. Sessions still there after the wait are named, since they are a leak.
    """
    yield
    import warnings

    from django.db import connection

    if connection.vendor != "postgresql":
        return

    def sessions_left() -> list[tuple]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, application_name, state FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return cursor.fetchall()

    with django_db_blocker.unblock():
        if wait_until(lambda: not sessions_left(), timeout=10):
            return
        others = sessions_left()
    warnings.warn(f"sessions still on the test database: {others}", stacklevel=1)
