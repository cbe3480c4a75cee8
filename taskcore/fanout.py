"""Bulk fan-out: publish many calls of one task over one connection and producer.

``task.delay()`` in a loop takes a producer (and its connection) from the pool
and gives it back for every message. ``publish_many`` holds one producer, on
one broker connection, for the whole batch (a campaign's thousands of batches).
Every
message still goes through the task's own ``apply_async`` (argument checks,
``sent_at`` header, ``before_task_publish`` signals), so what a worker receives
is exactly what ``delay()`` would have sent.

On Redis the messages (and their ``task-sent`` events) are written through
kombu's publish batches: one pipelined round trip per :data:`PIPELINE_SIZE`
commands instead of one per message. A failed round trip raises kombu's
``BatchPublishError`` ("delivery is uncertain"): some messages of that chunk may
have been queued, so the tasks must be idempotent (ours are). On RabbitMQ
messages are published one by one, each confirmed.

Publish after the transaction that wrote the rows commits (``transaction.on_commit``),
as for any task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from celery import Task
from celery.result import AsyncResult

# Redis commands per pipelined round trip (a message is 2-3 commands, its event 1).
PIPELINE_SIZE = 500


def publish_many(
    task: Task,
    arg_tuples: Iterable[tuple | list],
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> list[AsyncResult]:
    """Send ``task(*args, **kwargs)`` for every ``args`` in ``arg_tuples``; return the results.

    ``options`` are ``apply_async`` options shared by every message (``queue``,
    ``countdown``, ``priority``...).
    """
    results = []
    with task.app.producer_or_acquire() as producer, producer.batch(max_size=PIPELINE_SIZE):
        for args in arg_tuples:
            results.append(
                task.apply_async(tuple(args), dict(kwargs or {}), producer=producer, **options)
            )
    return results
