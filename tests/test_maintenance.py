"""Maintenance queue: health checks on every queue, cleanups, the beat schedule, a real beat."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from admin_backend import queues
from maintenance.schedule import default_entries, install_default_schedule
from maintenance.tasks import health_check_task, run_cleanup
from taskcore.models import DeadLetter, EffectClaim, OutboxMessage
from taskcore.testing.workers import BeatProcess


@pytest.mark.django_db(transaction=True)
def test_health_check_task_reports_real_latencies_on_every_queue(start_worker):
    start_worker(list(queues.QUEUE_NAMES), concurrency=2)
    results = {
        queue: health_check_task.apply_async(kwargs={"sent_at": time.time()}, queue=queue)
        for queue in queues.QUEUE_NAMES
    }
    for queue, result in results.items():
        report = result.get(timeout=30)
        assert report["ok"] is True
        assert report["worker"]["queue"] == queue
        assert sorted(report["worker"]["queues_consumed"]) == sorted(queues.QUEUE_NAMES)
        assert report["database"]["latency_ms"] > 0
        assert report["cache"]["ok"] and report["cache"]["latency_ms"] > 0
        assert report["queue_wait_ms"] >= 0


def _age(model, pks, field, days):
    model.objects.filter(pk__in=pks).update(**{field: timezone.now() - timedelta(days=days)})


@pytest.mark.django_db(transaction=True)
def test_each_cleanup_removes_exactly_what_it_should_twice_the_same(start_worker, settings):
    now = timezone.now()
    Session.objects.create(
        session_key="expired1", session_data="x", expire_date=now - timedelta(hours=1)
    )
    Session.objects.create(
        session_key="current1", session_data="x", expire_date=now + timedelta(days=1)
    )
    old_letter = DeadLetter.objects.create(
        task_id="old", task_name="t", queue="default", reason="permanent_error", exception_type="E"
    )
    DeadLetter.objects.create(
        task_id="new", task_name="t", queue="default", reason="permanent_error", exception_type="E"
    )
    _age(DeadLetter, [old_letter.pk], "last_seen", 31)
    published_old = OutboxMessage.objects.create(
        task_name="t", published_at=now - timedelta(days=8)
    )
    OutboxMessage.objects.create(task_name="t", published_at=now - timedelta(days=1))
    unpublished_old = OutboxMessage.objects.create(task_name="t")
    _age(OutboxMessage, [unpublished_old.pk], "created_at", 60)
    old_claim = EffectClaim.objects.create(scope="s", key="old")
    EffectClaim.objects.create(scope="s", key="new")
    _age(EffectClaim, [old_claim.pk], "created_at", 31)
    log_dir = settings.LOG_DIR
    old_log = log_dir / "celery.log.4"
    new_log = log_dir / "celery.log.1"
    for path in (old_log, new_log):
        path.write_text("rotated\n")
    month_ago = time.time() - 31 * 86400
    os.utime(old_log, (month_ago, month_ago))

    start_worker(["maintenance"])
    expected_first = {
        "expired_sessions": {"sessions": 1},
        "old_dead_letters": {"dead_letters": 1},
        "published_outbox_rows": {"outbox_messages": 1},
        "old_effect_claims": {"effect_claims": 1},
        "old_log_files": {"log_files": 1},
    }
    for name, removed in expected_first.items():
        assert run_cleanup.delay(name).get(timeout=30)["removed"] == removed, name
        again = run_cleanup.delay(name).get(timeout=30)["removed"]
        assert again == {key: 0 for key in removed}, name

    assert list(Session.objects.values_list("session_key", flat=True)) == ["current1"]
    assert list(DeadLetter.objects.values_list("task_id", flat=True)) == ["new"]
    assert OutboxMessage.objects.filter(pk=unpublished_old.pk).exists()  # unsent work is kept
    assert not OutboxMessage.objects.filter(pk=published_old.pk).exists()
    assert OutboxMessage.objects.count() == 2
    assert list(EffectClaim.objects.values_list("key", flat=True)) == ["new"]
    assert not old_log.exists() and new_log.exists() and (log_dir / "celery.log").exists()


@pytest.mark.django_db(transaction=True)
def test_an_unknown_cleanup_fails_clearly_without_retry(start_worker):
    from taskcore.base import PermanentError

    start_worker(["maintenance"])
    result = run_cleanup.delay("everything")
    with pytest.raises(PermanentError, match="unknown cleanup 'everything'"):
        result.get(timeout=30)
    # The dead letter is written just after the result is stored: give it a moment.
    deadline = time.monotonic() + 10
    while not DeadLetter.objects.filter(task_id=result.id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert DeadLetter.objects.get(task_id=result.id).attempts == 1


@pytest.mark.django_db
def test_the_default_schedule_installs_once_however_often_it_runs(capsys):
    names = {entry.name for entry in default_entries()}
    # The migration installed it already; installing again only updates.
    assert set(PeriodicTask.objects.filter(name__in=names).values_list("name", flat=True)) == names
    before = PeriodicTask.objects.count(), IntervalSchedule.objects.count()
    assert set(install_default_schedule().values()) == {"updated"}
    call_command("install_beat_schedule")
    assert "created" not in capsys.readouterr().out
    assert (PeriodicTask.objects.count(), IntervalSchedule.objects.count()) == before
    for task in PeriodicTask.objects.filter(name__in=names):
        assert task.expire_seconds, f"{task.name} has no expiry"
        assert task.queue in queues.QUEUE_NAMES
    health = PeriodicTask.objects.get(name="health check")
    assert health.interval.every == 60 and json.loads(health.args) == []


@pytest.mark.django_db(transaction=True)
def test_a_real_beat_sends_scheduled_tasks_that_a_worker_runs(
    start_worker, worker_database_url, test_work_dir
):
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    PeriodicTask.objects.filter(name="health check").update(enabled=False)
    PeriodicTask.objects.create(
        name="test: health every second",
        task="maintenance.tasks.health_check_task",
        interval=every_second,
        queue="maintenance",
        expire_seconds=30,
    )
    # Verbose task lines: Celery's own "received"/"succeeded in" lines on the console.
    worker = start_worker(["maintenance"], env={"CELERY_TASK_LOG_LINES": "verbose"})
    beat = BeatProcess(
        log_path=test_work_dir / "beat" / "beat.out",
        run_dir=test_work_dir / "beat",
        env={"DATABASE_URL": worker_database_url},
    ).start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if worker.output().count("maintenance.tasks.health_check_task[") >= 4:
                break
            time.sleep(0.5)
    finally:
        beat.stop()
    assert "Sending due task test: health every second" in beat.output()
    assert PeriodicTask.objects.get(name="test: health every second").total_run_count >= 2
    assert worker.output().count("succeeded in") >= 2


@pytest.mark.django_db(transaction=True)
def test_media_orphans_cleanup_removes_only_unreferenced_old_files(start_worker):
    from django.core.files.base import ContentFile

    from media import conf as media_conf
    from media.models import Rendition, Upload

    storage = media_conf.originals_storage()
    kept = Upload.objects.create(
        file=ContentFile(b"jpeg bytes", name="photo.jpg"),
        original_name="photo.jpg",
        status=Upload.Status.READY,
    )
    gone = Upload.objects.create(
        file=ContentFile(b"jpeg bytes", name="gone.jpg"),
        original_name="gone.jpg",
        status=Upload.Status.READY,
    )
    storage.delete(gone.file.name)
    Rendition.objects.create(
        upload=kept,
        name="thumb",
        file=f"{kept.renditions_dir}/thumb.jpg",
        format="JPEG",
        width=1,
        height=1,
        size_bytes=1,
    )
    old_orphan = storage.save(f"{media_conf.ORIGINALS_PREFIX}/orphan-old.jpg", ContentFile(b"x"))
    new_orphan = storage.save(f"{media_conf.ORIGINALS_PREFIX}/orphan-new.jpg", ContentFile(b"x"))
    two_hours_ago = time.time() - 7200
    for name in (old_orphan, kept.file.name):
        os.utime(storage.path(name), (two_hours_ago, two_hours_ago))
    Upload.objects.filter(pk=gone.pk).update(updated_at=timezone.now() - timedelta(hours=2))

    start_worker(["maintenance"])
    first = run_cleanup.delay("media_orphans").get(timeout=30)["removed"]
    assert first == {
        "orphan_originals": 1,
        "orphan_renditions": 0,
        "rendition_records_without_file": 1,
        "uploads_without_original": 1,
    }
    again = run_cleanup.delay("media_orphans").get(timeout=30)["removed"]
    assert set(again.values()) == {0}
    assert not storage.exists(old_orphan)
    assert storage.exists(new_orphan) and storage.exists(kept.file.name)  # young or referenced
    assert Upload.objects.get(pk=gone.pk).status == Upload.Status.FAILED
    assert Upload.objects.get(pk=kept.pk).status == Upload.Status.READY
    assert not Rendition.objects.exists()
