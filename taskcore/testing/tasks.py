"""Tasks that misbehave on purpose, for the reliability tests and the chaos suite.

Loaded only where CELERY_EXTRA_TASK_MODULES names this module (the test runs).
"""

from __future__ import annotations

import os
import signal
import time

from celery import shared_task
from django.core.cache import cache

from taskcore.base import PermanentError, TransientError
from taskcore.idempotency import effect_once
from taskcore.testing import faults  # noqa: F401 - registers the workers' fault commands


@shared_task(name="taskcore.testing.fails_permanently")
def fails_permanently(reason: str) -> None:
    raise PermanentError(f"refused: {reason}")


@shared_task(
    bind=True,
    name="taskcore.testing.fails_transiently",
    max_retries=3,
    # Celery's backoff in whole seconds: 0 or 1 s before each retry.
    retry_backoff=1,
    retry_backoff_max=1,
    # The count alone ends its retries (no time horizon), so tests can exhaust them.
    retry_horizon=0,
)
def fails_transiently(self, key: str, failures: int) -> int:
    """Fail with a transient error the first ``failures`` calls for ``key``, then succeed."""
    cache.add(f"calls:{key}", 0, timeout=3600)
    calls = cache.incr(f"calls:{key}")
    if calls <= failures:
        raise TransientError(f"call {calls} of {key}: not yet")
    return calls


@shared_task(name="taskcore.testing.task_signal_receivers")
def task_signal_receivers() -> dict[str, list[str]]:
    """Where each Celery task signal's receivers are defined, seen from inside a worker."""
    from taskcore.testing.signals import task_signal_receivers as receivers

    return receivers()


@shared_task(name="taskcore.testing.kills_its_process")
def kills_its_process() -> None:
    """A poison message: the process running it dies every time."""
    os.kill(os.getpid(), signal.SIGKILL)


@shared_task(bind=True, name="taskcore.testing.record_effect")
def record_effect(self, key: str) -> bool:
    """The chaos suite's unit of work: an effect claimed once per key.

    Returns False (and counts it) when a redelivered duplicate was absorbed.
    """
    with effect_once("chaos", key, task_id=self.request.id) as first:
        if not first:
            cache.add("chaos:duplicates", 0, timeout=3600)
            cache.incr("chaos:duplicates")
        return first


@shared_task(bind=True, name="taskcore.testing.result_backend_retries")
def result_backend_retries(self) -> dict:
    """How this worker's result backend rides out an outage (workers retry, web fails fast)."""
    backend = self.app.backend
    return {"always_retry": backend.always_retry, "max_retries": backend.max_retries}


@shared_task(name="taskcore.testing.outlives_its_soft_time_limit")
def outlives_its_soft_time_limit(seconds: float) -> None:
    """Sleeps through SoftTimeLimitExceeded, so the hard time limit has to kill its process."""
    from celery.exceptions import SoftTimeLimitExceeded

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            continue


@shared_task(name="taskcore.testing.record_execution")
def record_execution(key: str, due: float) -> None:
    """Count every execution (no idempotency claim): when it ran against when it was due."""
    import json

    from taskcore.redis_clients import state_redis

    state_redis().rpush("chaos:executions", json.dumps([key, due, time.time()]))
