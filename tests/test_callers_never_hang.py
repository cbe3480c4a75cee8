"""R10 (part): a caller's .delay() and send_after_commit return quickly when Redis cannot answer.

A web request must not hang on a broker that is paused, full or gone: the caller
runs in its own process (as a web process would), against a private Redis the
test pauses (``CLIENT PAUSE``), fills (``maxmemory``) or stops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

PROJECT_DIR = Path(__file__).resolve().parent.parent

CALLER = """
import json, os, sys, time
import django
django.setup()
print("ready", flush=True)
sys.stdin.readline()  # the outage has begun
from django.db import transaction
from taskcore.outbox import send_after_commit
from taskcore.tasks import debug_task
out = {}
for attempt in range(2):
    started = time.monotonic()
    try:
        debug_task.delay("hello")
        out[f"delay_{attempt}"] = "sent"
    except Exception as exc:
        out[f"delay_{attempt}"] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    out[f"delay_{attempt}_s"] = round(time.monotonic() - started, 3)
started = time.monotonic()
with transaction.atomic():
    row = send_after_commit(debug_task, ["outbox"])
out["after_commit_s"] = round(time.monotonic() - started, 3)
out["row"] = str(row.pk)
print("called", flush=True)
sys.stdin.readline()  # the test lets the outage end, then: does this process recover?
started = time.monotonic()
try:
    debug_task.delay("after")
    out["delay_after"] = "sent"
except Exception as exc:
    out["delay_after"] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
out["delay_after_s"] = round(time.monotonic() - started, 3)
print(json.dumps(out))
"""


def run_caller(server_url: str, database_url: str, during, after=None) -> dict:
    env = {
        **os.environ,
        "CELERY_BROKER_URL": server_url,
        "CELERY_RESULT_BACKEND": server_url,
        "REDIS_URL": server_url,
        "CACHE_URL": server_url,
        "DATABASE_URL": database_url,
    }
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER],
        cwd=PROJECT_DIR,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert caller.stdout.readline().strip() == "ready", caller.stderr.read()[-3000:]
    during()
    caller.stdin.write("go\n")
    caller.stdin.flush()
    assert caller.stdout.readline().strip() == "called"
    if after:
        after()
    out, err = caller.communicate("\n", timeout=120)
    assert caller.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.chaos
@pytest.mark.django_db(transaction=True)
def test_callers_return_within_a_second_while_redis_is_paused(private_redis, worker_database_url):
    server = private_redis()
    client = redis.Redis.from_url(server.url)
    paused_until = [0.0]

    def pause():
        client.execute_command("CLIENT", "PAUSE", 12000, "ALL")
        paused_until[0] = time.monotonic() + 12

    out = run_caller(
        server.url,
        worker_database_url,
        during=pause,
        after=lambda: time.sleep(max(0.0, paused_until[0] - time.monotonic())),
    )
    assert_callers_returned_and_recovered(out)


@pytest.mark.chaos
@pytest.mark.django_db(transaction=True)
def test_callers_return_at_once_while_redis_is_out_of_memory(private_redis, worker_database_url):
    server = private_redis("--maxmemory-policy", "noeviction")
    client = redis.Redis.from_url(server.url)
    out = run_caller(
        server.url,
        worker_database_url,
        during=lambda: client.config_set("maxmemory", 1),
        after=lambda: client.config_set("maxmemory", 0),
    )
    assert "Redis is out of memory" in out["delay_0"], out
    assert_callers_returned_and_recovered(out)


def assert_callers_returned_and_recovered(out: dict) -> None:
    from taskcore import outbox
    from taskcore.models import OutboxMessage

    print(out)
    # CELERY_CALLER_TIMEOUT is 1 s; the margin is for a loaded machine, a hang is 12 s+.
    for attempt in ("delay_0", "delay_1"):
        assert out[f"{attempt}_s"] < 2.5, out
        assert out[attempt].startswith("taskcore.base.TaskNotSent"), out
    assert out["after_commit_s"] < 2.5, out
    assert out["delay_after"] == "sent", out  # the process recovered by itself
    row = OutboxMessage.objects.get(pk=out["row"])
    if row.published_at is None:  # the relay's job, once the broker is back
        outbox.publish_pending([row.pk], force=True)
        row.refresh_from_db()
    assert row.published_at is not None
