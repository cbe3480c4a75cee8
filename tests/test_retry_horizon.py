"""The retry horizon: a transient error retries for a time, not only a number of attempts."""

from __future__ import annotations

import pytest

from admin_backend import queues
from admin_backend.celery import app as celery_app
from taskcore.base import TransientError
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
