"""Worker groups: disjoint queue sets on differently named nodes, independent of each other.

Two groups of the queue table (``mail``: email, ``ops``: maintenance) run as
separate workers with their own hostnames. Stopping ``mail`` leaves
``maintenance`` flowing, the email queue keeps its messages, and both the
broker-agnostic reader (taskcore.brokers) and ``celery_health`` name exactly the
queues left without consumers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from admin_backend import queues
from admin_backend.worker_commands import for_group, processes_of_group
from taskcore import brokers
from taskcore.models import EffectClaim
from taskcore.testing.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent
EFFECT_TASK = "taskcore.testing.record_effect"


def effect_done(key: str) -> bool:
    return EffectClaim.objects.filter(scope="chaos", key=key).exists()


def group_queues(group: str) -> list[str]:
    return list(for_group(group).queues)


def health_consumers(db_env: dict) -> dict[str, int | None]:
    completed = subprocess.run(
        [sys.executable, "manage.py", "celery_health", "--format", "json", "--only", "queues"],
        cwd=BASE_DIR,
        env={**os.environ, "FLOWER_URL": "off", **db_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(completed.stdout)
    return {
        check["name"].removeprefix("queue."): check["data"].get("consumers")
        for check in report["checks"]
        if check["name"].startswith("queue.")
    }


def test_two_groups_consume_disjoint_queues_and_one_survives_the_other(
    app, start_worker, worker_database_url
):
    app.control.purge()
    mail_queues, ops_queues = group_queues("mail"), group_queues("ops")
    assert mail_queues == ["email"] and ops_queues == ["maintenance"]
    assert not set(mail_queues) & set(ops_queues)

    mail = start_worker(mail_queues, concurrency=1, name="mail")
    ops = start_worker(ops_queues, concurrency=1, name="ops")
    assert mail.hostname.startswith("mail-") and ops.hostname.startswith("ops-")

    # Each node consumes exactly its group's queues.
    active = app.control.inspect(destination=[mail.hostname, ops.hostname], timeout=2)
    by_node = {
        node: sorted(queue["name"] for queue in node_queues)
        for node, node_queues in (active.active_queues() or {}).items()
    }
    assert by_node == {mail.hostname: mail_queues, ops.hostname: ops_queues}

    reading = brokers.read_queues(app, timeout=2)
    assert reading.consumers_source == "workers"
    assert reading.without_consumers() == ["default", "media", "reports"]

    # Both groups work.
    app.send_task(EFFECT_TASK, args=["groups-email-1"], queue="email", ignore_result=True)
    app.send_task(EFFECT_TASK, args=["groups-ops-1"], queue="maintenance", ignore_result=True)
    assert wait_until(lambda: effect_done("groups-email-1") and effect_done("groups-ops-1"), 30)

    # Stop the mail group: maintenance keeps flowing, email waits (nothing lost).
    mail.stop()
    app.send_task(EFFECT_TASK, args=["groups-email-2"], queue="email", ignore_result=True)
    app.send_task(EFFECT_TASK, args=["groups-ops-2"], queue="maintenance", ignore_result=True)
    assert wait_until(lambda: effect_done("groups-ops-2"), 30)
    assert not effect_done("groups-email-2")

    reading = brokers.read_queues(app, timeout=2)
    assert reading.queues["email"].messages == 1
    assert reading.without_consumers() == ["default", "email", "media", "reports"]

    # celery_health names exactly the queues without consumers.
    consumers = health_consumers({"DATABASE_URL": worker_database_url})
    assert set(consumers) == set(queues.QUEUE_NAMES)
    assert sorted(name for name, count in consumers.items() if count == 0) == [
        "default",
        "email",
        "media",
        "reports",
    ]

    # The group comes back and finds its waiting work.
    start_worker(mail_queues, concurrency=1, name="mail")
    assert wait_until(lambda: effect_done("groups-email-2"), 30)


def test_the_io_group_runs_the_tables_processes_which_share_the_default_queue(app, start_worker):
    spec = queues.QUEUES_BY_NAME[queues.DEFAULT_QUEUE]
    processes = processes_of_group(spec.worker_group)
    assert len(processes) == spec.worker_processes == 2
    nodes = [arg for process in processes for arg in process.args if arg.startswith("--hostname")]
    assert nodes == ["--hostname=io-1@%h", "--hostname=io-2@%h"]  # one node name each

    app.control.purge()
    workers = [
        start_worker(
            list(process.queues), pool=spec.pool, concurrency=spec.concurrency, name=process.name
        )
        for process in processes
    ]
    keys = [f"io-processes-{index}" for index in range(120)]
    for key in keys:
        app.send_task(EFFECT_TASK, args=[key], queue=spec.name, ignore_result=True)
    assert wait_until(lambda: all(effect_done(key) for key in keys), 60)

    # Both processes took a share of the queue (each holds at most its prefetch).
    stats = app.control.inspect(destination=[w.hostname for w in workers], timeout=2).stats()
    ran = {node: sum(node_stats.get("total", {}).values()) for node, node_stats in stats.items()}
    assert set(ran) == {w.hostname for w in workers}
    assert all(count > 0 for count in ran.values()), ran
    assert sum(ran.values()) >= len(keys)
