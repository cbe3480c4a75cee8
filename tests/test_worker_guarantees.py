"""What the worker promises: JSON only, acks late, redelivery when a child dies."""

from __future__ import annotations

import os
import signal
import time

import pytest

from taskcore.tasks import debug_task


def _wait_for(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.mark.django_db(transaction=True)
def test_a_pickle_message_is_refused_and_the_worker_lives_on(app, start_worker):
    worker = start_worker(["default"])

    refused = app.send_task("taskcore.tasks.debug_task", args=["pickled"], serializer="pickle")
    accepted = debug_task.delay("json")

    assert accepted.get(timeout=20)["message"] == "json"
    _wait_for(
        lambda: "Refusing to deserialize untrusted content of type pickle" in worker.output(), 10
    )
    assert refused.state == "PENDING"  # never executed
    assert worker.process.poll() is None
    assert app.control.ping(destination=[worker.hostname], timeout=2)


@pytest.mark.django_db(transaction=True)
def test_a_task_whose_child_is_killed_is_redelivered_and_completes(app, start_worker):
    """acks_late + reject_on_worker_lost: SIGKILL of the pool child requeues at once.

    The configured redelivery time for this case is immediate (the main process
    rejects the message with requeue); only the loss of the main process waits
    for the visibility timeout (CELERY_VISIBILITY_TIMEOUT).
    """
    start_worker(["default"], concurrency=1)
    result = debug_task.delay("survivor", sleep=3)

    started = _wait_for(lambda: result.state == "STARTED" and result.info, timeout=20)
    victim = started["pid"]
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)

    outcome = result.get(timeout=30)
    assert outcome["message"] == "survivor"
    assert outcome["redelivered"] is True
    assert outcome["pid"] != victim
    # The second run started promptly: no visibility-timeout wait for a child loss.
    assert outcome["started_at"] - killed_at < 15
