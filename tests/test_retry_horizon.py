"""The retry horizon: a transient error retries for a time, not only a number of attempts."""

from __future__ import annotations

import time

import pytest

from admin_backend import queues
from admin_backend.celery import app as celery_app
from taskcore.base import FIRST_ATTEMPT_HEADER, TransientError
from taskcore.models import DeadLetter
from taskcore.testing import outage_tasks
from taskcore.testing.waiting import wait_for

WORKER_ENV = {"CELERY_EXTRA_TASK_MODULES": "taskcore.testing.tasks,taskcore.testing.outage_tasks"}


def test_every_task_gets_its_queue_s_retry_horizon_unless_it_sets_its_own():
    celery_app.loader.import_default_modules()
    checked = 0
    for name, task in celery_app.tasks.items():
        if name.startswith("celery.") or name.startswith("taskcore.testing."):
            continue
        assert task.retry_horizon == queues.spec_for_task(name).retry_horizon, name
        checked += 1
    assert checked > 10
    # A task's own option wins over its queue's.
    assert outage_tasks.fails_for_a_while.retry_horizon == 120
    # At least five minutes everywhere: a database restart or failover fits in it.
    assert min(spec.retry_horizon for spec in queues.QUEUES) >= 300


def test_the_last_retry_is_scheduled_by_the_horizon():
    celery_app.loader.import_default_modules()
    task = celery_app.tasks["notifications.tasks.send_delivery_batch"]  # backoff cap 600
    horizon = task.retry_horizon
    first = time.time() - horizon + 5  # 5 s of the horizon left
    task.push_request(retries=9, **{FIRST_ATTEMPT_HEADER: first})
    try:
        delays = [task.retry_countdown() for _ in range(200)]
        assert task.may_retry()  # 9 retries is past max_retries (8), not past the horizon
    finally:
        task.pop_request()
    assert all(0 <= delay <= 5 for delay in delays)
    # A first attempt "in the future" (clock skew, a bad producer) counts from now.
    task.push_request(retries=9, **{FIRST_ATTEMPT_HEADER: time.time() + 10 * horizon})
    try:
        assert task.retry_time_left() <= horizon
    finally:
        task.pop_request()


@pytest.mark.django_db(transaction=True)
def test_within_the_horizon_max_retries_does_not_end_retries(start_worker):
    start_worker(["default"], env=WORKER_ENV)
    # max_retries is 1, yet 4 failures inside its 120 s horizon end in success.
    result = outage_tasks.fails_for_a_while.delay("outage", 4)
    assert result.get(timeout=60) == 5
    assert not DeadLetter.objects.filter(task_id=result.id).exists()


@pytest.mark.django_db(transaction=True)
def test_after_the_horizon_a_transient_error_is_a_dead_letter(start_worker):
    start_worker(["default"], env=WORKER_ENV)
    # max_retries 0 and a 3 s horizon: retried until the horizon (counted from the
    # first attempt across retries, or it would never end), then kept.
    result = outage_tasks.fails_until_the_horizon.delay("forever")
    with pytest.raises(TransientError):
        result.get(timeout=60)
    letter = wait_for(lambda: DeadLetter.objects.filter(task_id=result.id).first())
    assert letter.reason == DeadLetter.Reason.RETRIES_EXHAUSTED
    assert letter.attempts >= 2


# --- dead letters parked while the database was away ----------------------------


@pytest.mark.django_db(transaction=True)
def test_beat_s_relay_stores_parked_dead_letters_without_anyone_asking(
    start_worker, worker_database_url, test_work_dir
):
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from maintenance.schedule import install_default_schedule
    from taskcore import deadletters
    from taskcore.redis_clients import state_redis
    from taskcore.testing.tasks import fails_permanently
    from taskcore.testing.workers import BeatProcess

    # Started first: a worker relays at start-up, and this test shows beat's relay.
    start_worker(["default"])
    # A worker whose database is away parks the dead letter of a task failing for good.
    start_worker(["reports"], env={"DATABASE_URL": "postgres://nobody@127.0.0.1:9/absent"})
    failed = fails_permanently.apply_async(["while the database is away"], queue="reports")
    wait_for(lambda: state_redis().llen(deadletters.PARKED_KEY), what="a parked dead letter")
    assert not DeadLetter.objects.filter(task_id=failed.id).exists()

    # The default schedule's relay entry, every second instead of every minute.
    install_default_schedule()
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    PeriodicTask.objects.exclude(name="outbox relay").update(enabled=False)
    PeriodicTask.objects.filter(name="outbox relay").update(interval=every_second)
    beat = BeatProcess(
        log_path=test_work_dir / "beat" / "relay.out",
        run_dir=test_work_dir / "beat-relay",
        env={"DATABASE_URL": worker_database_url},
    ).start()
    try:
        letter = wait_for(
            lambda: DeadLetter.objects.filter(task_id=failed.id).first(),
            timeout=60,
            what="the parked dead letter stored by beat's relay",
        )
    finally:
        beat.stop()
    assert letter.reason == DeadLetter.Reason.PERMANENT_ERROR
    assert state_redis().llen(deadletters.PARKED_KEY) == 0


def test_a_sqlite_busy_timeout_near_the_soft_time_limit_is_reported(monkeypatch):
    from django.conf import settings

    from taskcore.config_audit import audit

    database = settings.DATABASES["default"]
    if not database["ENGINE"].endswith("sqlite3"):
        pytest.skip("SQLite's busy timeout")
    codes = {problem.code for problem in audit(celery_app.conf)}
    assert "sqlite_busy_timeout_vs_time_limit" not in codes  # the default, 5 s
    shortest = min(spec.soft_time_limit for spec in queues.QUEUES)
    monkeypatch.setitem(database["OPTIONS"], "timeout", shortest)
    codes = {problem.code for problem in audit(celery_app.conf)}
    assert "sqlite_busy_timeout_vs_time_limit" in codes
