"""Chaos suite, the database: PostgreSQL stopped under load (R9), a stuck SQLite writer.

Real workers, a Redis of the test's own with AOF, and for R9 a PostgreSQL cluster
of the test's own (``tests/postgres_cluster.py``): the machine's service is never
touched. Figures go to var/chaos-figures.json and docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import signal
import time

import psycopg
import pytest
import redis
from postgres_cluster import PostgresCluster, postgres_bin_dir
from test_chaos import AOF_EVERYSEC, PROJECT_DIR, ChaosStack, record_figures

from taskcore import deadletters
from taskcore.testing.waiting import wait_until

pytestmark = pytest.mark.chaos

EFFECTS_SQL = "SELECT count(*) FROM taskcore_effectclaim WHERE scope = 'chaos'"
DEAD_LETTERS_SQL = "SELECT count(*) FROM taskcore_deadletter"


@pytest.fixture
def postgres():
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    cluster = PostgresCluster(bin_dir).init()
    cluster.start()
    yield cluster
    cluster.destroy()


def effects_now(cluster: PostgresCluster, database: str) -> int | None:
    """Effects recorded so far; None while the server does not answer."""
    try:
        return cluster.count(database, EFFECTS_SQL)
    except psycopg.OperationalError:
        return None


def test_r9_postgres_stopped_for_60_s_under_load_costs_no_task(
    postgres, private_redis, monkeypatch, start_worker
):
    total, outage = 10_000, 60.0
    database_url = postgres.create_database("r9", PROJECT_DIR)
    stack = ChaosStack(private_redis(*AOF_EVERYSEC), monkeypatch, database_url)
    started = time.monotonic()
    sent = stack.publish(range(total))
    start_worker(["default"], concurrency=2, env=stack.env, client_app=stack.client)

    while (done := effects_now(postgres, "r9") or 0) < total // 5:
        time.sleep(0.2)
    postgres.stop("immediate")  # every session dropped at once, as in a crash or failover
    stopped_after = done
    time.sleep(outage)
    postgres.start()
    restarted = time.monotonic()
    at_restart = effects_now(postgres, "r9") or 0  # what committed just before the stop

    # Progress, not a deadline: give up after 60 s without a new effect.
    done, last_done, last_progress, resumed_after = 0, -1, time.monotonic(), None
    while done < total and time.monotonic() - last_progress < 60:
        done = effects_now(postgres, "r9") or 0
        if done != last_done:
            if resumed_after is None and done > at_restart:
                resumed_after = round(time.monotonic() - restarted, 1)
            last_done, last_progress = done, time.monotonic()
        time.sleep(0.5)
    time.sleep(3)  # a late dead letter or duplicate would show by now
    dead = postgres.count("r9", DEAD_LETTERS_SQL)
    parked = redis.Redis.from_url(stack.server.url).llen(deadletters.PARKED_KEY)
    figures = {
        "sent": sent,
        "effects": done,
        "lost": sent - done,
        "dead_letters": dead,
        "parked_dead_letters": parked,
        "duplicates_absorbed": stack.duplicates(),
        "stopped_after_effects": stopped_after,
        "effects_at_restart": at_restart,
        "outage_s": outage,
        "first_effect_after_restart_s": resumed_after,
        "run_s": round(time.monotonic() - started, 1),
    }
    record_figures("R9", figures)
    assert done == total, figures
    assert dead == 0 and parked == 0, figures


# --- SQLite: a writer stuck inside its transaction ----------------------------------

BUSY_TIMEOUT = 2.0
FREEZE = 20.0


@pytest.mark.django_db(transaction=True)
def test_a_stuck_sqlite_writer_blocks_other_workers_only_for_the_busy_timeout(
    private_redis, monkeypatch, start_worker, worker_database_url
):
    from django.db import connection

    from taskcore.models import DeadLetter, EffectClaim

    if connection.vendor != "sqlite":
        pytest.skip("the busy timeout is SQLite's")
    stack = ChaosStack(private_redis(*AOF_EVERYSEC), monkeypatch, worker_database_url)
    env = {
        **stack.env,
        "CELERY_EXTRA_TASK_MODULES": "taskcore.testing.tasks,taskcore.testing.outage_tasks",
        "SQLITE_BUSY_TIMEOUT": str(BUSY_TIMEOUT),
        # The frozen worker's message must not come back to be run again meanwhile.
        "CELERY_VISIBILITY_TIMEOUT": "120",
    }
    state = redis.Redis.from_url(stack.server.url)
    # The stuck writer: a threads worker (no time limit kills it), frozen mid-transaction.
    writer = start_worker(["maintenance"], pool="threads", env=env, client_app=stack.client)
    start_worker(["default"], concurrency=2, env=env, client_app=stack.client)
    stack.client.send_task(
        "taskcore.testing.holds_a_write", args=["w", "chaos:release"], queue="maintenance"
    )
    assert wait_until(lambda: state.lpop("chaos:writer"), timeout=30), writer.output()
    os.kill(writer.process.pid, signal.SIGSTOP)
    frozen_at = time.time()

    def effect(key: str):
        return stack.client.send_task("taskcore.testing.record_effect", args=[key], queue="default")

    # Two writes take both slots of the other worker; then a task that does not
    # write: it waits for a free slot, i.e. for one busy timeout to end a write.
    results = [effect("before-0"), effect("before-1")]
    probe_sent = time.time()
    stack.client.send_task(
        "taskcore.testing.record_execution", args=["probe", probe_sent], queue="default"
    )
    results += [effect(f"after-{n}") for n in range(4)]
    probe = wait_until(lambda: state.lpop("chaos:executions"), timeout=FREEZE, interval=0.05)
    probe_ran = json.loads(probe)[2] if probe else None
    time.sleep(max(0.0, frozen_at + FREEZE - time.time()))
    state.set("chaos:release", 1)
    os.kill(writer.process.pid, signal.SIGCONT)
    released_at = time.time()

    for result in results:
        assert result.get(timeout=120) is True
    retries = [result.retries for result in results]
    dead = DeadLetter.objects.count()
    figures = {
        "busy_timeout_s": BUSY_TIMEOUT,
        "freeze_s": round(released_at - frozen_at, 1),
        "probe_latency_s": round(probe_ran - probe_sent, 2) if probe_ran else None,
        "writes_retried": sum(1 for count in retries if count),
        "retries": sum(retries),
        "dead_letters": dead,
        "effects": EffectClaim.objects.filter(scope="chaos").count(),
    }
    record_figures("SQLite stuck writer", figures)
    # The worker kept serving: the probe ran while the writer was still frozen, about
    # one busy timeout after it was sent (a time limit would have taken 10 s).
    assert probe_ran is not None and probe_ran < released_at, figures
    assert probe_ran - probe_sent < 2 * BUSY_TIMEOUT + 2, figures
    # Every write met the lock, was retried ("database is locked" is transient), and
    # ran once the writer resumed: no time-limit dead letter, nothing lost.
    assert all(count >= 1 for count in retries[:2]), figures
    assert dead == 0, figures
    assert figures["effects"] == len(results), figures
    assert EffectClaim.objects.filter(scope="stuck-writer", key="w").count() == 1
