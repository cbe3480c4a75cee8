"""Operations dashboard: permissions, the JSON the page renders, actions and the collector.

Against the run's real Redis and real worker processes; the browser tests are in
test_dashboard_browser.py.
"""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import Permission

from dashboard import samples, services, stats
from dashboard.models import OperatorAction
from maintenance.tasks import health_check_task
from taskcore.health import run_health
from taskcore.models import DeadLetter
from taskcore.testing.tasks import fails_permanently
from taskcore.testing.waiting import wait_for

PAGE = "/admin/operations/"
DATA = "/admin/operations/data.json"
ACTION = "/admin/operations/workers/action"
REPLAY = "/admin/operations/dead-letters/replay"
QUEUES = ["default", "email", "media", "reports", "maintenance"]


def grant(user, *codenames: str):
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


@pytest.fixture
def staff(django_user_model):
    def make(username: str, *codenames: str):
        user = django_user_model.objects.create_user(username, password="pw-" + username)
        user.is_staff = True
        user.save()
        return grant(user, *codenames)

    return make


@pytest.fixture(autouse=True)
def clean_broker(app):
    """Each test starts with empty queues and no dashboard counters or samples."""
    from taskcore.redis_clients import broker_redis

    client = broker_redis(app, 5)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.mark.django_db
def test_staff_need_the_dashboard_permission(client, staff):
    assert client.get(PAGE).status_code == 302  # anonymous: to the admin login
    assert "/admin/login/" in client.get(DATA)["Location"]

    client.force_login(staff("plain"))
    assert client.get(PAGE).status_code == 403
    assert client.get(DATA).status_code == 403
    assert b"Operations dashboard" not in client.get("/admin/").content

    client.force_login(staff("operator", "view_operations_dashboard"))
    page = client.get(PAGE)
    assert page.status_code == 200
    assert b'data-url="/admin/operations/data.json"' in page.content
    assert b"Grow pool" not in page.content  # no control permission: no action buttons
    index = client.get("/admin/").content.decode()
    assert 'href="/admin/operations/"' in index


@pytest.mark.django_db
def test_json_reports_queues_with_the_health_checks_statuses(client, staff):
    for _ in range(7):
        health_check_task.apply_async(queue="media")
    client.force_login(staff("operator", "view_operations_dashboard"))
    data = client.get(DATA).json()

    assert [queue["name"] for queue in data["queues"]] == QUEUES
    media = next(queue for queue in data["queues"] if queue["name"] == "media")
    assert media["depth"] == 7
    assert media["consumers"] == 0
    assert media["status"] == "critical"
    assert "no worker consumes media" in media["detail"]
    assert "start a worker consuming media" in media["remedy"]
    assert media["oldest_age_s"] is not None
    # One code path: the same check, with the same verdict, as celery_health.
    check = run_health().get("queue.media")
    assert (check.status.value, check.data["depth"]) == ("critical", 7)
    assert data["banner"]["status"] == "critical"
    assert data["banner"]["remedy"]
    assert data["workers"] == []
    assert data["errors"] == {}
    assert {entry["name"] for entry in data["beat"]} >= {"health check", "outbox relay"}
    assert set(data["work"]) >= {"campaigns", "exports", "uploads"}


@pytest.mark.django_db(transaction=True)
def test_collector_samples_and_throughput_counted_in_workers(start_worker, clean_broker):
    start_worker(["default", "maintenance"], concurrency=2)
    # The collector task, run by a real worker on the maintenance queue: the first sample.
    from dashboard.tasks import collect_sample

    assert collect_sample.apply_async(queue="maintenance").get(timeout=30)["queues"] == 5
    for _ in range(3):
        health_check_task.apply_async(queue="media")
    results = [health_check_task.apply_async(queue="default") for _ in range(5)]
    for result in results:
        result.get(timeout=30)
    fails_permanently.delay("counted")
    wait_for(lambda: DeadLetter.objects.filter(exception_message__contains="counted").exists())

    # The counters are read from complete 10 s buckets: read as if one had passed.
    # Each pool process flushes its own batch: wait for both processes' batches.
    def counted():
        rates = stats.read(clean_broker, QUEUES, now=time.time() + stats.BUCKET_SECONDS)
        default = rates["default"]
        done = default["failed_per_min"] and default["succeeded_per_min"] >= 5
        return default if done else None

    rates = wait_for(counted, timeout=10)
    assert rates["succeeded_per_min"] == 5
    assert rates["failed_per_min"] == 1
    assert rates["runtimes_counted"] == 5
    assert 0 < rates["runtime_p50_s"] <= rates["runtime_p95_s"]

    # The second sample counts what finished since the first, from the same totals
    # /metrics serves (the collector's own run on maintenance included).
    samples.collect_sample()
    series = samples.series(clean_broker, "hour")
    assert len(series["t"]) == 2
    assert series["queues"]["media"]["depth"] == [0, 3]
    assert series["queues"]["default"]["throughput"] == [0, 5]
    assert series["queues"]["default"]["failed"] == [0, 1]


def minute_start() -> float:
    return (time.time() // 60 - 2) * 60  # two minutes ago, on a bucket boundary


def sample(t: float, depth: int, done: int, age: float | None = None) -> dict:
    return {"t": t, "q": {"media": {"depth": depth, "age": age, "done": done, "fails": 0}}}


def test_a_burst_keeps_its_peak_and_its_sum_in_the_day_buckets(clean_broker):
    """Depth and age keep the bucket's maximum, throughput its sum: a 10 s burst shows."""
    start = minute_start()
    for offset, depth, done, age in [
        (0, 0, 100, None),
        (10, 500, 100, 9.5),  # the burst waits ...
        (20, 0, 600, None),  # ... and is done 10 s later
        (30, 0, 600, None),
        (40, 0, 600, None),
        (50, 0, 600, None),
        (60, 2, 601, 1.0),  # the next minute
    ]:
        samples.store(clean_broker, sample(start + offset, depth, done, age))
    now = start + 61

    hour = samples.series(clean_broker, "hour", now=now)
    media = hour["queues"]["media"]
    assert hour["bucket_seconds"] is None  # every sample: full resolution
    assert media["depth"] == [0, 500, 0, 0, 0, 0, 2]
    assert media["throughput"] == [0, 0, 500, 0, 0, 0, 1]

    day = samples.series(clean_broker, "day", now=now)
    media = day["queues"]["media"]
    assert day["bucket_seconds"] == 60
    assert day["t"] == [start, start + 60]
    assert media["depth"] == [500, 2]
    assert media["age"] == [9.5, 1.0]
    assert media["throughput"] == [500, 1]


def test_throughput_after_a_counter_reset_counts_from_zero(clean_broker):
    start = minute_start()
    samples.store(clean_broker, sample(start, 0, 1000))
    samples.store(clean_broker, sample(start + 10, 0, 7))  # state Redis flushed, 7 since
    series = samples.series(clean_broker, "hour", now=start + 11)
    assert series["queues"]["media"]["throughput"] == [0, 7]


def test_samples_are_trimmed_to_their_range(clean_broker):
    now = time.time()
    sample = {"t": 0, "q": {}}
    for offset in (7200, 3000, 10):
        samples.store(clean_broker, {**sample, "t": now - offset})
    assert clean_broker.zcard(samples.key("hour")) == 2
    assert clean_broker.zcard(samples.key("day")) == 3
    samples.store(clean_broker, {**sample, "t": now - 90000 + 86400 * 2})
    assert clean_broker.zcard(samples.key("day")) == 3  # the 7200 s one aged out of neither


@pytest.mark.django_db(transaction=True)
def test_worker_actions_need_permission_confirmation_and_are_audited(client, staff, start_worker):
    worker = start_worker(["default"], concurrency=1)
    client.force_login(staff("viewer", "view_operations_dashboard"))
    body = {"action": "pool_grow", "worker": worker.hostname, "confirm": True}
    assert client.post(ACTION, body, content_type="application/json").status_code == 403

    client.force_login(staff("operator", "view_operations_dashboard", "control_workers"))
    unconfirmed = client.post(ACTION, {**body, "confirm": False}, content_type="application/json")
    assert unconfirmed.status_code == 400
    assert not OperatorAction.objects.exists()

    answer = client.post(ACTION, body, content_type="application/json")
    assert answer.status_code == 200, answer.content
    assert "pool will grow" in answer.json()["outcome"]
    audit = OperatorAction.objects.get()
    assert (audit.username, audit.action, audit.target, audit.succeeded) == (
        "operator",
        "pool_grow",
        worker.hostname,
        True,
    )

    def grown():
        data = client.get(DATA).json()
        row = next(row for row in data["workers"] if row["worker"] == worker.hostname)
        return (data, row) if row["processes"] == 2 else None

    data, row = wait_for(grown, timeout=15, interval=0.5)
    assert row["pool"] == "prefork"
    assert row["memory_kb"] and row["last_heartbeat"]
    assert data["actions"][0]["action"] == "pool grow"

    stop = {"action": "cancel_consumer", "worker": worker.hostname, "queue": "default"}
    answer = client.post(ACTION, {**stop, "confirm": True}, content_type="application/json")
    assert answer.status_code == 200, answer.content
    census = run_health(only=["workers"]).get("workers").data["workers"]
    assert census[worker.hostname] == []
    bad = client.post(
        ACTION, {**stop, "queue": "nope", "confirm": True}, content_type="application/json"
    )
    assert bad.status_code == 400


@pytest.mark.django_db(transaction=True)
def test_dead_letters_grouped_and_replayed_from_the_dashboard(client, staff, start_worker):
    start_worker(["default"])
    for reason in ("a", "b"):
        fails_permanently.delay(reason)
    wait_for(lambda: DeadLetter.objects.count() == 2)
    client.force_login(staff("viewer", "view_operations_dashboard"))
    group = client.get(DATA).json()["dead_letters"]["groups"]
    assert [(g["task_name"], g["exception_type"], g["count"]) for g in group] == [
        ("taskcore.testing.fails_permanently", "PermanentError", 2)
    ]
    body = {
        "task_name": "taskcore.testing.fails_permanently",
        "exception_type": "PermanentError",
        "confirm": True,
    }
    assert client.post(REPLAY, body, content_type="application/json").status_code == 403

    client.force_login(staff("replayer", "view_operations_dashboard", "replay_deadletter"))
    answer = client.post(REPLAY, body, content_type="application/json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["outcome"] == "replayed 2 of 2"
    # The replayed tasks ran again (and failed again, into new dead letters).
    wait_for(lambda: DeadLetter.objects.count() == 4)
    assert OperatorAction.objects.get().action == "replay"


@pytest.mark.django_db
def test_one_broken_part_does_not_blank_the_page(client, staff, monkeypatch):
    def broken():
        raise RuntimeError("beat tables locked")

    monkeypatch.setattr(services, "beat_entries", broken)
    client.force_login(staff("operator", "view_operations_dashboard"))
    data = client.get(DATA).json()
    assert data["errors"] == {"beat": "RuntimeError: beat tables locked"}
    assert len(data["queues"]) == 5


@pytest.mark.django_db
def test_beat_entries_read_like_a_schedule_and_next_runs_lie_ahead():
    from datetime import timedelta

    from django.utils import timezone
    from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

    now = timezone.now()
    every_10s = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)
    # The database's last run trails beat's memory by minutes (the scheduler saves it
    # every few minutes): the next run still lies ahead, on the interval's beat.
    PeriodicTask.objects.create(
        name="stale interval",
        task="maintenance.tasks.health_check_task",
        interval=every_10s,
        last_run_at=now - timedelta(seconds=125),
    )
    nightly = CrontabSchedule.objects.create(minute="30", hour="3", day_of_week="1-5")
    PeriodicTask.objects.create(
        name="weekday nights",
        task="maintenance.tasks.health_check_task",
        crontab=nightly,
        last_run_at=now - timedelta(days=30),  # long missed: beat runs it at its next tick
    )
    rows = {row["name"]: row for row in services.beat_entries()}

    stale = rows["stale interval"]
    assert stale["schedule"] == "every 10 seconds"
    next_run = timezone.datetime.fromisoformat(stale["next_run_at"])
    assert now < next_run <= timezone.now() + timedelta(seconds=10)
    assert (next_run - (now - timedelta(seconds=125))).total_seconds() % 10 == pytest.approx(0)

    weekday = rows["weekday nights"]
    assert weekday["schedule"] == (
        "At 03:30 AM, only on Monday, Tuesday, Wednesday, Thursday, and Friday UTC"
    )
    next_run = timezone.datetime.fromisoformat(weekday["next_run_at"])
    assert next_run > now
    assert (next_run.hour, next_run.minute) == (3, 30)  # the project's time zone is UTC


def test_uplot_is_the_pinned_file_from_the_npm_registry():
    """The chart library is vendored, unchanged, with its licence (no CDN, no build step)."""
    import hashlib
    from pathlib import Path

    vendor = Path(__file__).resolve().parent.parent / "dashboard/static/dashboard/vendor/uplot"
    expected = {
        "uPlot.iife.min.js": "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
        "uPlot.min.css": "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
    }
    for name, digest in expected.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (vendor / "LICENSE").read_text()
    assert "uplot@1.6.32" in (vendor / "README.md").read_text()
