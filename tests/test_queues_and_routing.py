"""Routing: every queue's work reaches a worker consuming that queue, and only it."""

from __future__ import annotations

import time

import pytest
import redis
from celery.exceptions import QueueNotFound
from PIL import Image

from admin_backend import queues
from maintenance.tasks import health_check_task
from media.tasks import inspect_image
from notifications.tasks import send_email_message
from reports.tasks import export_model_csv
from taskcore.tasks import debug_task


def test_routes_follow_the_app_of_the_task():
    assert queues.queue_for_task("notifications.tasks.send_email_message") == "email"
    assert queues.queue_for_task("media.tasks.inspect_image") == "media"
    assert queues.queue_for_task("reports.tasks.export_model_csv") == "reports"
    assert queues.queue_for_task("maintenance.tasks.health_check_task") == "maintenance"
    assert queues.queue_for_task("taskcore.tasks.debug_task") == "default"
    assert queues.queue_for_task("anything.else") == "default"


def test_declared_queues_are_exactly_the_queue_table(app):
    assert sorted(q.name for q in app.conf.task_queues) == sorted(queues.QUEUE_NAMES)
    assert app.conf.task_create_missing_queues is False


def test_annotations_apply_the_queue_table_limits(app):
    for task, queue in [(send_email_message, "email"), (export_model_csv, "reports")]:
        spec = queues.QUEUES_BY_NAME[queue]
        assert task.time_limit == spec.time_limit
        assert task.soft_time_limit == spec.soft_time_limit
        assert task.max_retries == spec.max_retries
    assert send_email_message.rate_limit == queues.QUEUES_BY_NAME["email"].rate_limit


def test_a_task_sent_to_an_unknown_queue_fails_clearly():
    with pytest.raises(QueueNotFound, match="'no-such-queue' missing from task_queues"):
        debug_task.apply_async(queue="no-such-queue")


def _queue_length(app, queue: str) -> int:
    return redis.Redis.from_url(app.conf.broker_url).llen(queue)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("queue", queues.QUEUE_NAMES)
def test_each_queue_is_served_by_a_worker_consuming_only_it(
    queue, app, start_worker, smtp_server, settings, django_user_model
):
    """Start a worker on one queue; its queue's task runs there, others' stay queued."""
    worker = start_worker([queue], env=smtp_server.worker_env)

    if queue == "default":
        result = debug_task.delay("routing")
        assert result.get(timeout=20)["queue"] == "default"
    elif queue == "email":
        result = send_email_message.delay(["ada@example.org"], "Routing check", "Hello from email")
        result.get(timeout=20)
        assert smtp_server.messages[0]["Subject"] == "Routing check"
        assert smtp_server.messages[0]["To"] == "ada@example.org"
    elif queue == "media":
        path = settings.MEDIA_ROOT / "routing.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), "red").save(path)
        result = inspect_image.delay("routing.png")
        assert result.get(timeout=20) == {"format": "PNG", "width": 64, "height": 48}
    elif queue == "reports":
        django_user_model.objects.create_user("ada", password="irrelevant-pw-123")
        django_user_model.objects.create_user("=cmd|calc", password="irrelevant-pw-123")
        result = export_model_csv.delay("auth.User", ["id", "username"])
        report = result.get(timeout=20)
        assert report["rows"] == 2
        lines = open(report["path"], encoding="utf-8").read().splitlines()
        assert lines[0] == "id,username" and lines[2].endswith(",'=cmd|calc")
    else:
        result = health_check_task.delay(sent_at=time.time())
        report = result.get(timeout=20)
        assert report["ok"] and report["worker"]["queues_consumed"] == ["maintenance"]

    assert app.AsyncResult(result.id).result  # stored in the result backend
    # The worker consumed only its own queue: a task for another queue waits.
    other = "maintenance" if queue != "maintenance" else "default"
    waiting = health_check_task.apply_async(queue=other)
    time.sleep(1.0)
    assert waiting.state == "PENDING"
    assert _queue_length(app, other) == 1
    app.control.revoke(waiting.id)
    redis.Redis.from_url(app.conf.broker_url).delete(other)
    assert worker.process.poll() is None
