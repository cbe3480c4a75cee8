"""`manage.py celery_monitor` with a real worker: events, rates, runtimes, workers, queues."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from admin_backend.queues import QUEUE_NAMES
from taskcore.tasks import debug_task
from taskcore.testing.redis_server import free_port

BASE_DIR = Path(__file__).resolve().parent.parent


def monitor(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "celery_monitor", "--timeout", "5", *args],
        cwd=BASE_DIR,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def send_while_running(process: subprocess.Popen, limit: float = 60) -> int:
    """Keep tasks flowing while the monitor collects its window; return how many failed."""
    deadline = time.monotonic() + limit
    sent = failing = 0
    while process.poll() is None and time.monotonic() < deadline:
        debug_task.delay("monitored", sleep=0.05)
        sent += 1
        if sent % 8 == 0:
            debug_task.delay("bad", sleep=-1)  # PermanentError: a failed event
            failing += 1
        time.sleep(0.1)
    return failing


@pytest.mark.django_db(transaction=True)
def test_one_shot_json_counts_events_and_turns_events_on(start_worker, worker_database_url):
    # A worker that does not send task events: the monitor must turn them on and say so.
    worker = start_worker(
        ["default"],
        env={"CELERY_WORKER_SEND_TASK_EVENTS": "0", "DATABASE_URL": worker_database_url},
    )
    process = monitor("--format", "json", "--interval", "4")
    send_while_running(process)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 0, stderr
    snapshot = json.loads(stdout)
    assert any(
        f"task events were off on {worker.hostname}" in notice for notice in snapshot["notices"]
    ), snapshot["notices"]
    task = snapshot["events"]["tasks"]["taskcore.tasks.debug_task"]
    assert task["succeeded"] >= 3 and task["started"] >= task["succeeded"]
    assert task["failed"] >= 1
    assert task["runtime"]["avg_s"] >= 0.05
    assert task["rate_per_s"]["succeeded"] > 0
    default = snapshot["events"]["queues"]["default"]
    assert default["succeeded"] == task["succeeded"]
    assert set(snapshot["queues"]) == set(QUEUE_NAMES)
    assert snapshot["queues"]["default"]["consumers"] == 1
    assert snapshot["queues"]["media"]["consumers"] == 0
    [stats] = [w for w in snapshot["workers"] if w["worker"] == worker.hostname]
    assert stats["pool"] == "prefork"
    assert stats["tasks_done"] >= 1
    assert stats["max_rss_kb"] > 0


@pytest.mark.django_db(transaction=True)
def test_table_shows_every_section_and_active_tasks(start_worker, worker_database_url):
    worker = start_worker(["default"], env={"DATABASE_URL": worker_database_url})
    running = debug_task.delay("long one", sleep=4)
    deadline = time.monotonic() + 20
    while running.state != "STARTED" and time.monotonic() < deadline:
        time.sleep(0.05)

    process = monitor("--interval", "1")
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 0, stderr
    for heading in ("Tasks", "Queues", "Active tasks", "Workers"):
        assert heading in stdout
    assert running.id in stdout  # the running task, by id
    assert worker.hostname in stdout
    assert "Traceback" not in stdout + stderr


def test_broker_down_is_one_line_exit_2_and_masked():
    url = f"redis://:mon-s3cret@127.0.0.1:{free_port()}/0"
    process = monitor("--timeout", "1", env={"CELERY_BROKER_URL": url})
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 2
    assert "celery_monitor failed" in stderr and "cannot reach the broker" in stderr
    assert "mon-s3cret" not in stdout + stderr
    assert "Traceback" not in stdout + stderr
