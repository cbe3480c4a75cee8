"""Tasks for the retry-horizon tests and the stuck-writer chaos test.

Loaded where CELERY_EXTRA_TASK_MODULES names this module (the tests that use them).
"""

from __future__ import annotations

import os
import time

from celery import shared_task
from django.core.cache import cache
from django.db import transaction

from taskcore.base import TransientError


@shared_task(
    name="taskcore.testing.fails_for_a_while",
    max_retries=1,
    retry_backoff=1,
    retry_backoff_max=1,
    retry_horizon=120,
)
def fails_for_a_while(key: str, failures: int) -> int:
    """Fail the first ``failures`` calls for ``key``; more failures than max_retries allows."""
    cache.add(f"calls:{key}", 0, timeout=3600)
    calls = cache.incr(f"calls:{key}")
    if calls <= failures:
        raise TransientError(f"call {calls} of {key}: not yet")
    return calls


@shared_task(
    name="taskcore.testing.fails_until_the_horizon",
    max_retries=0,
    retry_backoff=1,
    retry_backoff_max=1,
    retry_horizon=3,
)
def fails_until_the_horizon(key: str) -> None:
    """Always a transient error: retried for 3 s (its horizon), though max_retries is 0."""
    raise TransientError(f"{key}: never")


@shared_task(name="taskcore.testing.holds_a_write")
def holds_a_write(key: str, release_key: str, hold_at_most: float = 60.0) -> None:
    """Write inside a transaction, say so (``chaos:writer``), then hold it until released.

    On SQLite the open write transaction holds the database's one write lock: a
    process frozen here is a stuck writer.
    """
    from taskcore.idempotency import claim_effect
    from taskcore.redis_clients import state_redis

    client = state_redis()
    with transaction.atomic():
        claim_effect("stuck-writer", key)
        client.rpush("chaos:writer", os.getpid())
        deadline = time.monotonic() + hold_at_most
        while not client.exists(release_key) and time.monotonic() < deadline:
            time.sleep(0.05)
