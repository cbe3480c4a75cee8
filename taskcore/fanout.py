"""Bulk fan-out: publish many calls of one task, fast.

``task.delay()`` in a loop pays, per message: a producer taken from the pool,
Celery's option merging and routing, a Redis round trip, and a second publish
for the ``task-sent`` event. ``publish_many`` pays once what is the same for
every message of the batch:

- one producer on one broker connection for the whole batch;
- the route (queue, exchange, routing key) computed and the queue declared once;
- on Redis, kombu's publish batches: one pipelined round trip per
  :data:`PIPELINE_SIZE` commands instead of one per message;
- the ``task-sent`` events (when ``task_send_sent_event`` is on) sent as
  grouped ``task.multi`` messages, which Celery's event receivers (Flower,
  ``celery_monitor``) unpack, instead of one publish each.

Each message is still Celery's own (``create_task_message``), published by
``send_task_message``: the ``before_task_publish`` signal runs (our ``sent_at``
header), arguments are checked like ``BaseTask.apply_async`` checks them (no
model instances). Options: ``queue``, ``priority``, ``countdown``, ``expires``,
``ignore_result``; shared by every message. B1 in docs/benchmarks.md: 2x the
rate of ``apply_async`` in a loop.

A failed round trip raises kombu's ``BatchPublishError`` ("delivery is
uncertain"): some messages of that chunk may have been queued, so the tasks
must be idempotent (ours are). On RabbitMQ messages are published one by one,
each confirmed.

Publish after the transaction that wrote the rows commits (``transaction.on_commit``),
as for any task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from celery import Task
from celery.result import AsyncResult
from kombu import Queue
from kombu.common import Broadcast
from kombu.utils.uuid import uuid

from .base import reject_model_instances

# Redis commands per pipelined round trip (a message is 2-3 commands).
PIPELINE_SIZE = 500
# task-sent events per grouped event message.
EVENTS_PER_MESSAGE = 500
ROUTING_OPTIONS = ("queue", "priority")
MESSAGE_OPTIONS = ("countdown", "expires", "ignore_result")


def publish_many(
    task: Task,
    arg_tuples: Iterable[tuple | list],
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> list[AsyncResult]:
    """Send ``task(*args, **kwargs)`` for every ``args`` in ``arg_tuples``; return the results."""
    unknown = set(options) - set(ROUTING_OPTIONS) - set(MESSAGE_OPTIONS)
    if unknown:
        raise TypeError(f"publish_many does not take {sorted(unknown)}; use apply_async")
    app = task.app
    kwargs = dict(kwargs or {})
    reject_model_instances(kwargs.values())
    route = app.amqp.router.route(
        {key: options[key] for key in ROUTING_OPTIONS if key in options},
        task.name,
        (),
        kwargs,
        task,
    )
    message_options = {key: options[key] for key in MESSAGE_OPTIONS if key in options}
    message_options.setdefault("ignore_result", task.ignore_result)
    send_events = bool(app.conf.task_send_sent_event)
    results = []
    with app.producer_or_acquire() as producer:
        events = _SentEvents(app, producer, route) if send_events else None
        queue = route.get("queue")
        if isinstance(queue, Queue) and not isinstance(queue, Broadcast):
            # Declared once here; send_task_message would declare (bind a copy of
            # the queue, look it up in the cache) for every message: a quarter of
            # a publish.
            producer.maybe_declare(queue)
            route = {**route, "declare": ()}
        with producer.batch(max_size=PIPELINE_SIZE):
            for args in arg_tuples:
                args = tuple(args)
                reject_model_instances(args)
                task_id = uuid()
                message = app.amqp.create_task_message(
                    task_id,
                    task.name,
                    args,
                    kwargs,
                    create_sent_event=send_events,
                    **message_options,
                )
                if events is not None:
                    # Grouped below instead of published one by one by send_task_message.
                    events.add(message.sent_event)
                    message = message._replace(sent_event=None)
                app.amqp.send_task_message(producer, task.name, message, **route)
                results.append(app.AsyncResult(task_id))
        if events is not None:
            events.flush()
    return results


class _SentEvents:
    """``task-sent`` events of a fan-out, published as grouped ``task.multi`` messages."""

    def __init__(self, app, producer, route):
        queue = route.get("queue")
        exchange = route.get("exchange")
        self.where = {
            "queue": getattr(queue, "name", queue),
            "exchange": getattr(exchange, "name", exchange) or "",
            "routing_key": route.get("routing_key") or getattr(queue, "routing_key", ""),
        }
        self.dispatcher = app.events.Dispatcher(
            producer.connection, buffer_group=["task"], buffer_limit=EVENTS_PER_MESSAGE
        )

    def add(self, fields: dict) -> None:
        self.dispatcher.send("task-sent", **fields, **self.where)

    def flush(self) -> None:
        try:
            self.dispatcher.flush()
        finally:
            self.dispatcher.close()
