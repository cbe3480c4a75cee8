"""pytest plugin: give each test run its own Redis and log directory.

Loaded with ``-p taskcore.testing.pytest_plugin`` (see pyproject.toml) so that it
runs before pytest-django imports the settings: the environment it sets is what
``admin_backend.settings`` reads, in this process and in every worker process
the tests start.

Redis: ``TEST_REDIS_URL`` if set; otherwise the Redis on 127.0.0.1:6379 with a
database number claimed for this run (so parallel runs do not collide);
otherwise a private ``redis-server`` on a free port.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from .redis_server import RedisProcess, answers, start_redis

CLAIM_KEY = "admin_backend:test-run-claim"
CANDIDATE_DBS = range(15, 1, -1)


@dataclass
class ClaimedRedis:
    url: str
    server: RedisProcess | None = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def release(self) -> None:
        if self.server:
            self.server.stop()
        else:
            self.client().flushdb()


def claim_redis(run_id: str, work_dir: Path) -> ClaimedRedis:
    base = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
    if answers(base):
        base = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
        for db in CANDIDATE_DBS:
            client = redis.Redis.from_url(f"{base}/{db}")
            if client.set(CLAIM_KEY, run_id, nx=True, ex=3 * 3600):
                client.flushdb()
                client.set(CLAIM_KEY, run_id, ex=3 * 3600)
                return ClaimedRedis(f"{base}/{db}")
        raise RuntimeError(f"every test database {list(CANDIDATE_DBS)} of {base} is claimed")
    server = start_redis(work_dir / "redis")
    return ClaimedRedis(server.url, server)


_state: dict[str, object] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    run_id = uuid.uuid4().hex[:10]
    work_dir = Path(tempfile.mkdtemp(prefix=f"admin-backend-test-{run_id}-"))
    test_redis = claim_redis(run_id, work_dir)
    _state.update(run_id=run_id, work_dir=work_dir, redis=test_redis)
    os.environ.update(
        {
            "REDIS_URL": test_redis.url,
            "CELERY_BROKER_URL": test_redis.url,
            "CELERY_RESULT_BACKEND": test_redis.url,
            "CACHE_URL": test_redis.url,
            "CACHE_KEY_PREFIX": f"test-{run_id}",
            "LOG_DIR": str(work_dir / "logs"),
            "MEDIA_ROOT": str(work_dir / "media"),
            "ADMIN_BACKEND_TEST_WORK_DIR": str(work_dir),
            "DEBUG": "0",
            "DJANGO_READ_DOT_ENV": "0",
            "CELERY_EXTRA_TASK_MODULES": "taskcore.testing.tasks",
            "SECURE_SSL_REDIRECT": "0",
            "REPORTS_DEMO_ADMIN": "1",  # the export tests use the demo model's admin
        }
    )
    os.environ.setdefault("SECRET_KEY", f"test-secret-{run_id}")


def pytest_report_header(config):
    test_redis = _state.get("redis")
    if test_redis:
        kind = "private redis-server" if test_redis.server else "shared Redis, claimed database"
        return [f"admin_backend: {kind} at {test_redis.url}; work dir {_state['work_dir']}"]
    return []


def pytest_unconfigure(config):
    test_redis = _state.pop("redis", None)
    if test_redis:
        test_redis.release()
    work_dir = _state.pop("work_dir", None)
    if work_dir and not os.environ.get("KEEP_TEST_WORK_DIR"):
        shutil.rmtree(work_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def fresh_redis_per_test():
    """Empty the run's Redis database after each test.

    Workers of one test must not consume what an earlier test left queued (a
    retry waiting on its countdown is handed back to the queue when its worker
    stops), and cache keys must not leak between tests.
    """
    yield
    test_redis = _state.get("redis")
    if test_redis is not None:
        client = test_redis.client()
        client.flushdb()
        if not test_redis.server:
            client.set(CLAIM_KEY, _state["run_id"], ex=3 * 3600)


@pytest.fixture(scope="session")
def test_work_dir() -> Path:
    return Path(_state["work_dir"])


@pytest.fixture(scope="session")
def test_redis() -> ClaimedRedis:
    return _state["redis"]
