"""Autoscale (issue 13): the `mail` group's pool grows under a burst and shrinks when idle.

The queue table gives the ``email`` queue its own group, ``mail``, with a prefork
pool and ``autoscale=(max, min)``; its worker command carries ``--autoscale``.
The real-worker test runs that command's shape with a small range (4, 1) and
``AUTOSCALE_KEEPALIVE=2`` so that it is quick, sends a burst of sleeping tasks
to ``email`` and follows ``manage.py celery_monitor --watch --format json``:
the worker's ``processes`` climbs from min to max, then falls back to min.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from rich.console import Console

from admin_backend import queues
from admin_backend.worker_commands import for_group
from taskcore.management.commands.celery_monitor import Command as MonitorCommand
from taskcore.queues import QueueTableError, table_problems, validate_table
from taskcore.tasks import debug_task

BASE_DIR = Path(__file__).resolve().parent.parent

# The test's range: small, so that the pool reaches its max with a short burst.
TEST_MAX, TEST_MIN = 4, 1
KEEPALIVE_S = 2
TASK_SLEEP_S = 2.0
BURST = 4 * TEST_MAX  # four rounds of the full pool: ~8 s at the max


# --- the table and the commands ---------------------------------------------------


def test_email_has_its_own_autoscaled_prefork_group():
    email = queues.QUEUES_BY_NAME["email"]
    assert email.worker_group == "mail"
    assert email.pool == "prefork"
    high, low = email.autoscale
    assert high >= low >= 1 and email.concurrency == high
    assert [spec.name for spec in queues.worker_groups()["mail"]] == ["email"]
    # default stays on the measured threads shape (B1).
    default = queues.QUEUES_BY_NAME["default"]
    assert (default.worker_group, default.pool, default.autoscale) == ("io", "threads", None)


def test_the_mail_worker_command_autoscales_instead_of_a_fixed_concurrency():
    high, low = queues.QUEUES_BY_NAME["email"].autoscale
    args = for_group("mail").args
    assert f"--autoscale={high},{low}" in args
    assert not any(arg.startswith("--concurrency") for arg in args)
    assert "--pool=prefork" in args and "--queues=email" in args
    # Groups without autoscale keep their fixed size.
    assert "--concurrency=8" in for_group("io").args
    assert not any(arg.startswith("--autoscale") for arg in for_group("io").args)


def _email(**changes) -> queues.QueueSpec:
    return replace(queues.QUEUES_BY_NAME["email"], **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pool": "threads"}, "autoscale needs pool 'prefork' (the 'threads' pool cannot grow"),
        ({"pool": "solo"}, "autoscale needs pool 'prefork'"),
        ({"autoscale": (2, 4), "concurrency": 2}, "needs max >= min >= 1, got (2, 4)"),
        ({"autoscale": (4, 0), "concurrency": 4}, "needs max >= min >= 1, got (4, 0)"),
        ({"autoscale": (8,)}, "autoscale must be (max, min), got (8,)"),
        ({"autoscale": (8.0, 2)}, "must be integers"),
        ({"concurrency": 4}, "concurrency 4 must equal the autoscale max 8"),
    ],
)
def test_invalid_autoscale_is_refused_clearly(changes, message):
    table = (*[s for s in queues.QUEUES if s.name != "email"], _email(**changes))
    problems = table_problems(table)
    assert any(message in problem for problem in problems), problems
    assert all("'email'" in problem for problem in problems)
    with pytest.raises(QueueTableError, match=re.escape("queue table: queue 'email'")):
        validate_table(table)


def test_a_group_whose_queues_disagree_on_autoscale_is_refused():
    media_in_mail = replace(queues.QUEUES_BY_NAME["media"], worker_group="mail")
    problems = table_problems((queues.QUEUES_BY_NAME["email"], media_in_mail))
    assert problems == [
        "worker group 'mail': its queues disagree on autoscale (email=(8, 2), media=None); "
        "a group is one worker command line"
    ]


def test_the_table_as_shipped_is_valid():
    assert table_problems(queues.QUEUES) == []


# --- a real worker ----------------------------------------------------------------


class MonitorWatch:
    """``celery_monitor --watch --format json``: one compact JSON snapshot per line."""

    def __init__(self, interval: float = 0.5):
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "celery_monitor",
                "--watch",
                "--format",
                "json",
                "--interval",
                str(interval),
                "--timeout",
                "2",
            ],
            cwd=BASE_DIR,
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def next_snapshot(self, timeout: float) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"celery_monitor printed nothing for {timeout}s (exit {self.process.poll()})"
            ) from None
        return json.loads(line)

    def stop(self) -> str:
        self.process.terminate()
        try:
            _, stderr = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        return stderr


def worker_row(snapshot: dict, hostname: str) -> dict | None:
    return next((w for w in snapshot["workers"] if w["worker"] == hostname), None)


@pytest.mark.django_db(transaction=True)
def test_a_burst_grows_the_mail_pool_to_its_max_and_idle_shrinks_it_to_its_min(app, start_worker):
    app.control.purge()
    group = for_group("mail")
    args = list(group.args)
    pool = next(arg for arg in args if arg.startswith("--pool=")).split("=", 1)[1]
    # The group's command, with a range and keepalive small enough for a test.
    shape = [
        arg for arg in args if arg.startswith(("--prefetch-multiplier=", "--max-tasks-per-child="))
    ]
    worker = start_worker(
        list(group.queues),
        pool=pool,
        name="mail",
        extra_args=[*shape, f"--autoscale={TEST_MAX},{TEST_MIN}"],
        env={"AUTOSCALE_KEEPALIVE": str(KEEPALIVE_S)},
    )
    watch = MonitorWatch()
    # (seconds since the first snapshot, processes, reserved), by the snapshots' clock:
    # the lines pile up while the test waits for results.
    seen: list[tuple[float, int | None, int | None]] = []
    first: list[datetime] = []

    def follow(until, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snapshot = watch.next_snapshot(timeout=20)
            row = worker_row(snapshot, worker.hostname)
            if row is None:
                continue
            scale = row["autoscale"] or {}
            at = datetime.fromisoformat(snapshot["generated_at"])
            first[:] = first or [at]
            elapsed = round((at - first[0]).total_seconds(), 1)
            seen.append((elapsed, row["processes"], scale.get("reserved")))
            if until(row):
                return row
        raise AssertionError(f"not reached in {timeout}s; seen (t, processes, reserved): {seen}")

    try:
        # Idle: the pool starts at its min; the JSON shows the range.
        idle = follow(lambda row: row["processes"] == TEST_MIN, 20)
        assert idle["pool"] == "prefork"
        assert idle["autoscale"]["max"] == TEST_MAX and idle["autoscale"]["min"] == TEST_MIN
        assert idle["concurrency"] == TEST_MAX  # the ceiling, not the size it started with

        # The burst: more sleeping tasks than the max can run at once.
        results = [
            debug_task.apply_async(("autoscale burst",), {"sleep": TASK_SLEEP_S}, queue="email")
            for _ in range(BURST)
        ]
        peak = follow(lambda row: row["processes"] == TEST_MAX, 30)
        assert peak["autoscale"]["reserved"] >= TEST_MAX
        assert len(worker.child_pids()) >= TEST_MAX  # real processes, not just a number
        busy = [r for r in results if not r.ready()]
        assert busy, "the burst ended before the pool was seen at its max"

        # The burst drains; after the keepalive the pool returns to its min.
        for result in results:
            assert result.get(timeout=40)["queue"] == "email"
        last = follow(lambda row: row["processes"] == TEST_MIN, 10 + 4 * KEEPALIVE_S)
    finally:
        stderr = watch.stop()
    assert "Traceback" not in stderr, stderr

    counts = [processes for _, processes, _ in seen]
    assert max(counts) == TEST_MAX and counts[-1] == TEST_MIN
    assert all(TEST_MIN <= count <= TEST_MAX for count in counts), seen
    assert last["autoscale"] == {"max": TEST_MAX, "min": TEST_MIN, "reserved": 0}
    deadline = time.monotonic() + 15
    while len(worker.child_pids()) > TEST_MIN and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(worker.child_pids()) == TEST_MIN
    print("autoscale seen (t s, processes, reserved):", seen)

    # The table format shows the same: processes with the autoscale range.
    snapshot = {
        "generated_at": "2026-01-01T00:00:00+00:00",
        "broker": "redis://",
        "window_s": 1,
        "notices": [],
        "events": {"events_seen": 0, "tasks": {}, "queues": {}},
        "workers": [last],
        "active": [],
        "queues": {},
        "unacked": 0,
    }
    text = io.StringIO()
    Console(file=text, width=200).print(MonitorCommand().render(snapshot))
    assert f"{TEST_MIN} (autoscale {TEST_MIN}-{TEST_MAX})" in text.getvalue()


@pytest.mark.parametrize("processes", [0, -1, 1.5, True, "2"])
def test_worker_processes_must_be_a_whole_number_of_at_least_one(processes):
    default = replace(queues.QUEUES_BY_NAME["default"], worker_processes=processes)
    table = (*[s for s in queues.QUEUES if s.name != "default"], default)
    problems = table_problems(table)
    assert (
        f"queue 'default': worker_processes must be a whole number >= 1, got {processes!r}"
        in problems
    )


def test_a_group_whose_queues_disagree_on_worker_processes_is_refused():
    maintenance_in_io = replace(queues.QUEUES_BY_NAME["maintenance"], worker_group="io")
    problems = table_problems((queues.QUEUES_BY_NAME["default"], maintenance_in_io))
    assert any("its queues disagree on worker_processes" in problem for problem in problems)
