"""celery_health on the other supported brokers: Redis behind Sentinel, and RabbitMQ."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from admin_backend.queues import QUEUE_NAMES
from taskcore.testing.redis_server import free_port, redis_server_binary

BASE_DIR = Path(__file__).resolve().parent.parent
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")


def health(*args: str, env: dict) -> tuple[int, dict[str, dict], str]:
    completed = subprocess.run(
        [sys.executable, "manage.py", "celery_health", "--format", "json", *args],
        cwd=BASE_DIR,
        env={**os.environ, "FLOWER_URL": "off", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(completed.stdout)
    return (
        completed.returncode,
        {check["name"]: check for check in report["checks"]},
        completed.stdout + completed.stderr,
    )


@pytest.fixture
def sentinel(private_redis, tmp_path):
    """A password-protected primary and one Sentinel watching it."""
    password, master = "prim-s3cret", "health-primary"
    primary = private_redis("--requirepass", password, "--appendonly", "yes")
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nlogfile {tmp_path / 'sentinel.log'}\n"
        f"sentinel monitor {master} 127.0.0.1 {primary.port} 1\n"
        f"sentinel auth-pass {master} {password}\n"
    )
    process = subprocess.Popen(
        [redis_server_binary(), str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            if client.sentinel_get_master_addr_by_name(master):
                break
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, "Sentinel did not come up"
        time.sleep(0.1)
    yield {"port": port, "primary": primary, "password": password, "master": master}
    process.terminate()
    process.wait(10)


def test_sentinel_broker_is_checked_through_the_primary_it_names(sentinel):
    password = sentinel["password"]
    primary = f"redis://:{password}@127.0.0.1:{sentinel['primary'].port}"
    env = {
        "CELERY_BROKER_URL": f"sentinel://127.0.0.1:{sentinel['port']}/0",
        "REDIS_PASSWORD": password,
        "REDIS_SENTINEL_MASTER": sentinel["master"],
        "CELERY_RESULT_BACKEND": f"{primary}/1",
        "CACHE_URL": f"{primary}/2",
    }

    code, checks, output = health(
        "--check-redis", "--only", "broker,result_backend,cache,queues,redis,beat", env=env
    )

    assert password not in output and "Traceback" not in output
    assert checks["broker"]["status"] == "ok", checks["broker"]
    assert "through Sentinel" in checks["broker"]["detail"]
    assert checks["broker"]["data"]["kind"] == "sentinel"
    for name in ("result_backend", "cache", "redis.eviction", "redis.persistence",
                 "redis.memory", "redis.server"):  # fmt: skip
        assert checks[name]["status"] == "ok", checks[name]
    for name in QUEUE_NAMES:  # read on the primary; no worker here
        assert checks[f"queue.{name}"]["data"]["depth"] == 0
        assert checks[f"queue.{name}"]["status"] == "warning"
    assert checks["beat"]["status"] == "warning"  # heartbeat looked for on the primary
    assert code == 1


@pytest.mark.skipif(os.environ.get("RUN_RABBITMQ_TESTS") == "0", reason="RUN_RABBITMQ_TESTS=0")
def test_rabbitmq_broker_is_checked_and_redis_checks_say_not_applicable():
    code, checks, output = health(
        "--only", "broker,queues,redis,beat,config", env={"CELERY_BROKER_URL": RABBITMQ_URL}
    )

    assert "Traceback" not in output
    broker = checks["broker"]
    assert broker["status"] == "ok", broker
    assert broker["data"]["kind"] == "amqp"
    assert "RabbitMQ" in broker["detail"]
    if "guest:guest" in RABBITMQ_URL:
        assert "guest:guest" not in output and "amqp://guest:****@" in broker["detail"]
    for name in ("redis.eviction", "redis.persistence"):
        assert checks[name]["status"] == "ok"
        assert "not applicable" in checks[name]["detail"]
    for name in QUEUE_NAMES:
        queue = checks[f"queue.{name}"]
        assert queue["data"]["oldest_age_s"] is None  # not readable on RabbitMQ
        assert queue["data"]["consumers"] is not None, queue
    # Beat's heartbeat lives in the result backend's Redis when the broker is RabbitMQ.
    assert checks["beat"]["status"] == "warning"
    assert "cannot read" not in checks["beat"]["detail"]
    assert code in (1, 2)
