"""R10 (part): a caller's .delay() and send_after_commit return quickly when Redis cannot answer.

A web request must not hang on a broker that is paused, full or gone: the caller
runs in its own process (as a web process would), against a private Redis the
test pauses (``CLIENT PAUSE``), fills (``maxmemory``) or stops; during the pause a
worker consumes too, and must resume by itself.
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
from celery import Celery

PROJECT_DIR = Path(__file__).resolve().parent.parent
EFFECT_TASK = "taskcore.testing.record_effect"

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
def test_client_pause_callers_return_within_a_second_and_workers_resume(
    private_redis, worker_database_url, start_worker, monkeypatch
):
    """R10: ``CLIENT PAUSE 20000 ALL`` while a worker consumes and a web process calls."""
    from taskcore.models import DeadLetter, EffectClaim

    server = private_redis()
    url = server.url
    client = redis.Redis.from_url(url)
    # Celery's variables win over arguments: the client app must see them too.
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", url)
    client_app = Celery("pause-client", broker=url, backend=url, set_as_current=False)
    env = {"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url, "CACHE_URL": url}
    worker = start_worker(["default"], concurrency=2, env=env, client_app=client_app)
    total, pause_s = 5_000, 20
    with client_app.producer_or_acquire() as producer:
        for n in range(total):
            client_app.send_task(
                EFFECT_TASK, args=[f"pause-{n}"], queue="default", producer=producer
            )

    def effects() -> int:
        return EffectClaim.objects.filter(scope="chaos").count()

    deadline = time.monotonic() + 120
    while effects() < total // 10:
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.1)
    paused_until, at_pause, near_the_end = [0.0], [0], [0]

    def pause():
        client.execute_command("CLIENT", "PAUSE", pause_s * 1000, "ALL")
        paused_until[0] = time.monotonic() + pause_s
        at_pause[0] = effects()

    def wait_for_the_pause_to_end():
        time.sleep(max(0.0, paused_until[0] - 1 - time.monotonic()))
        near_the_end[0] = effects()
        time.sleep(max(0.0, paused_until[0] - time.monotonic()))

    out = run_caller(url, worker_database_url, during=pause, after=wait_for_the_pause_to_end)
    at_resume = effects()
    resumed_at = time.monotonic()
    first_after = None
    deadline = resumed_at + 300
    while (done := effects()) < total and time.monotonic() < deadline:
        if first_after is None and done > at_resume:
            first_after = time.monotonic() - resumed_at
        time.sleep(0.1)
    figures = {
        "pause_s": pause_s,
        "effects_at_pause": at_pause[0],
        # At most those in flight when the pause began (prefetch and running).
        "effects_during_pause": near_the_end[0] - at_pause[0],
        "effects": done,
        "lost": total - done,
        "dead_letters": DeadLetter.objects.count(),
        "worker_consuming_again_after_s": first_after,
        "worker_alive": worker.process.poll() is None,
        **{key: value for key, value in out.items() if key.endswith("_s")},
    }
    print(figures)
    assert done == total, figures
    # It did pause: only what was in flight then finished (prefetch and running).
    assert figures["effects_during_pause"] <= 8 and near_the_end[0] < total, figures
    assert figures["dead_letters"] == 0, figures
    assert first_after is not None and first_after < 30, figures
    assert figures["worker_alive"], worker.output()[-3000:]
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
