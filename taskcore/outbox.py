"""The transactional outbox: the project's way to send a task from application code.

``send_after_commit(task, args, kwargs, **options)`` writes the task into the
database inside the caller's transaction. After the commit it is published at
once; if the broker is unreachable, the row waits and the relay
(``relay_outbox``: a beat task, a worker start-up hook and ``manage.py outbox
relay``) publishes it when Redis is back. A rolled-back transaction sends
nothing; a committed one is never lost.

Each row is published by whoever claims it first (an atomic UPDATE with a
lease), with the row's id as the task id. If a publisher dies between publish
and marking the row, the lease expires and the row is published again under the
same task id: at least once, which the effects' idempotency absorbs.

On a Redis broker, the publish after commit marks the row "published" in Redis,
in the message's own round trip (``taskcore.reliable_redis``), instead of a
second transaction in the caller's thread (that UPDATE and its commit were a
third of a ``send_after_commit``, B1 in docs/benchmarks.md). The relay copies the
marks into the rows' ``published_at`` in batches (``record_published_marks``)
before it looks for rows to publish, so a marked row is never published again,
and a row whose message Redis lost with its mark (a restart without persistence)
is. Until then a row is held by its publisher's lease, not counted as waiting.
On RabbitMQ the row is marked by an UPDATE, as before.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from . import arguments
from .secrets import mask_text

logger = logging.getLogger("taskcore.outbox")

CLAIM_LEASE = timedelta(seconds=60)
RELAY_BATCH = 500
# After a failed publish, leave new rows to the relay for this long instead of
# making every request wait on a broker that is known to be down.
BROKER_DOWN_BACKOFF = 5.0
# One retry (a broken pooled connection): with the caller's broker timeouts
# (CELERY_CALLER_TIMEOUT) a commit waits about a second at most on a dead broker.
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}

_broker_down_until = 0.0
_state_lock = threading.Lock()


def _task_name(task) -> str:
    return task if isinstance(task, str) else task.name


def _task(task):
    """The task object of a task or task name (every task module imported if needed)."""
    if not isinstance(task, str):
        return task
    from celery import current_app

    found = arguments.registered_task(current_app, task)
    if found is None:
        raise arguments.InvalidTaskArguments(f"unknown task {task!r}: nothing sent")
    return found


def send_after_commit(task, args=None, kwargs=None, **options):
    """Record a task in the current transaction; publish it after commit.

    ``task`` is a task object or its name; ``options`` are apply_async options
    that survive JSON (queue, countdown, priority, expires as seconds).
    Returns the OutboxMessage; its id is the task id.
    """
    from .base import reject_model_instances

    args, kwargs = list(args or ()), dict(kwargs or {})
    reject_model_instances(args)
    reject_model_instances(kwargs.values())
    # Checked now, in the caller, not when the relay publishes the row.
    args, kwargs = arguments.check_message(_task(task), args, kwargs, options.get("queue"))
    args, kwargs = list(args), dict(kwargs)
    # Claimed by this process from the start: after the commit it publishes the row
    # as it has it in memory (no SELECT, no claim round trip), marked published by
    # the publish itself on Redis (one UPDATE on RabbitMQ). If this process dies
    # first, the relay takes it after the lease.
    message = _insert_row().create(
        task_name=_task_name(task),
        args=args,
        kwargs=kwargs,
        options=options,
        claimed_until=timezone.now() + CLAIM_LEASE,
    )
    transaction.on_commit(lambda: publish_committed(message))
    return message


@functools.cache
def _insert_row():
    """The outbox's INSERT, compiled once (``Model.objects.create`` compiles it per row)."""
    from .inserts import CompiledInsert
    from .models import OutboxMessage

    return CompiledInsert(OutboxMessage)


def publish_committed(row, *, app=None) -> bool:
    """Publish a row that ``send_after_commit`` wrote and claimed; True once published.

    When the broker is known to be down, or the publish fails, the claim is
    released so the relay publishes the row as soon as the broker is back.
    """
    from celery import current_app

    from .models import OutboxMessage

    app = app or current_app
    if _broker_known_down():
        OutboxMessage.objects.filter(pk=row.pk).update(claimed_until=None)
        return False
    try:
        with app.producer_or_acquire() as producer:
            marked = _publish(app, producer, row, mark=True)
    except Exception as exc:  # any failure: the row stays for the relay, nothing is lost
        _note_broker_down()
        error = mask_text(f"{type(exc).__name__}: {exc}")
        OutboxMessage.objects.filter(pk=row.pk).update(
            claimed_until=None, attempts=row.attempts + 1, last_error=error[:2000]
        )
        logger.warning("outbox: broker unreachable, the message waits for the relay: %s", error)
        return False
    if marked:  # the broker holds the mark; the relay copies it into the row
        return True
    OutboxMessage.objects.filter(pk=row.pk).update(
        published_at=timezone.now(), claimed_until=None, attempts=row.attempts + 1
    )
    return True


def _broker_known_down() -> bool:
    return time.monotonic() < _broker_down_until


def _note_broker_down() -> None:
    global _broker_down_until
    with _state_lock:
        _broker_down_until = time.monotonic() + BROKER_DOWN_BACKOFF


def _claim(pk) -> bool:
    claimed = waiting_rows().filter(pk=pk).update(claimed_until=timezone.now() + CLAIM_LEASE)
    return claimed == 1


def waiting_rows():
    """Rows not published and not held by a publisher's lease: the relay's work."""
    from .models import OutboxMessage

    return OutboxMessage.objects.filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=timezone.now()),
        published_at__isnull=True,
    )


MARKS_READ_TIMEOUT = 5.0


def record_published_marks(app=None) -> int:
    """Copy the broker's "published" marks into their rows; how many rows were marked.

    A mark leaves Redis only after its row's UPDATE (committed), so a crash here
    repeats an UPDATE that changes nothing. ``published_at`` is the time of the
    newest mark of its batch (within a relay interval of the publish).
    """
    from celery import current_app

    from .models import OutboxMessage
    from .redis_clients import NotRedis, broker_key_prefix, broker_redis
    from .reliable_redis import PUBLISHED_MARKS_KEY

    app = app or current_app
    try:
        # Its own short-lived client: ``app`` may name another broker than the
        # process's shared clients do (tests, several apps).
        client = broker_redis(app, timeout=MARKS_READ_TIMEOUT)
    except NotRedis:
        return 0
    key = broker_key_prefix(app) + PUBLISHED_MARKS_KEY
    recorded = 0
    try:
        while True:
            marks = client.zrange(key, 0, RELAY_BATCH - 1, withscores=True)
            if not marks:
                return recorded
            members = [member for member, _ in marks]
            newest = datetime.fromtimestamp(max(score for _, score in marks), tz=UTC)
            recorded += OutboxMessage.objects.filter(
                pk__in=_row_ids(members), published_at__isnull=True
            ).update(published_at=newest, claimed_until=None, attempts=F("attempts") + 1)
            client.zrem(key, *members)
            if len(marks) < RELAY_BATCH:
                return recorded
    finally:
        client.close()


def _row_ids(members) -> list[uuid.UUID]:
    """The row ids among the marks (anything else written there is dropped with them)."""
    ids = []
    for member in members:
        try:
            ids.append(uuid.UUID(member.decode() if isinstance(member, bytes) else member))
        except (ValueError, UnicodeDecodeError, AttributeError):
            logger.warning("outbox: %.100r in the published marks is not a row id", member)
    return ids


def _record_marks_quietly(app) -> None:
    try:
        record_published_marks(app)  # a row published after commit is not published again
    except Exception as exc:  # the broker is away: the publishes that follow find out and wait
        logger.warning(
            "outbox: cannot read the published marks: %s", mask_text(f"{type(exc).__name__}: {exc}")
        )


def publish_pending(pks=None, *, app=None, force: bool = False, record_marks: bool = True) -> dict:
    """Publish waiting rows (the given ones, or the oldest RELAY_BATCH).

    The broker's "published" marks are recorded first (``record_marks``; ``relay``
    records them once for all its batches). Returns counts: published, failed,
    skipped (claimed by someone else).
    """
    from celery import current_app

    from .models import OutboxMessage

    app = app or current_app
    counts = {"published": 0, "failed": 0, "skipped": 0}
    if not force and _broker_known_down():
        counts["skipped"] = len(pks) if pks else 0
        return counts
    if record_marks:
        _record_marks_quietly(app)
    if pks is not None:
        pending = OutboxMessage.objects.filter(published_at__isnull=True, pk__in=pks)
    else:
        pending = waiting_rows()
    rows = list(pending.order_by("created_at")[:RELAY_BATCH])
    if not rows:
        return counts
    try:
        # One connection and producer for the whole batch: publishing is the cost.
        with app.producer_or_acquire() as producer:
            for row in rows:
                if not _claim(row.pk):
                    counts["skipped"] += 1
                    continue
                try:
                    _publish(app, producer, row)
                except Exception as exc:
                    OutboxMessage.objects.filter(pk=row.pk).update(
                        claimed_until=None,
                        attempts=row.attempts + 1,
                        last_error=mask_text(f"{type(exc).__name__}: {exc}")[:2000],
                    )
                    counts["failed"] += 1
                    raise
                OutboxMessage.objects.filter(pk=row.pk).update(
                    published_at=timezone.now(), claimed_until=None, attempts=row.attempts + 1
                )
                counts["published"] += 1
    except Exception as exc:
        _note_broker_down()
        logger.warning(
            "outbox: broker unreachable, %d message(s) wait for the relay: %s",
            len(rows) - counts["published"],
            mask_text(f"{type(exc).__name__}: {exc}"),
        )
    return counts


ROUTING_OPTIONS = ("queue", "priority")


def _publish(app, producer, row, *, mark: bool = False) -> bool:
    """Publish one row as a task message, with the row's id as the task id.

    With ``mark``, a transport that can (Redis) records the row as published in
    the same round trip; returns whether it did.

    Lower level than ``send_task`` on purpose: ``send_task`` also subscribes
    this process to the task's result in the result backend, which blocks for
    many seconds when Redis is away, and a publisher does not wait for results.
    """
    from .reliable_redis import PUBLISHED_MARK_PROPERTY

    options = dict(row.options or {})
    task = app.tasks.get(row.task_name)
    route = app.amqp.router.route(
        {key: options[key] for key in ROUTING_OPTIONS if key in options},
        row.task_name,
        row.args,
        row.kwargs,
        task,
    )
    message = app.amqp.create_task_message(
        str(row.pk),
        row.task_name,
        row.args,
        row.kwargs,
        countdown=options.get("countdown"),
        expires=options.get("expires"),
        create_sent_event=app.conf.task_send_sent_event,
        # As .delay() sends it: a task that ignores its result stores none.
        ignore_result=bool(task is not None and task.ignore_result),
    )
    marked = mark and getattr(producer.connection.transport, "records_published_marks", False)
    properties = {PUBLISHED_MARK_PROPERTY: str(row.pk)} if marked else {}
    app.amqp.send_task_message(
        producer,
        row.task_name,
        message,
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
        **route,
        **properties,
    )
    return marked


def relay(max_batches: int = 100, *, app=None) -> dict:
    """Publish every pending row, batch after batch (the relay's job)."""
    from celery import current_app

    app = app or current_app
    total = {"published": 0, "failed": 0, "skipped": 0}
    _record_marks_quietly(app)
    for _ in range(max_batches):
        counts = publish_pending(app=app, force=True, record_marks=False)
        for key, value in counts.items():
            total[key] += value
        if counts["published"] == 0:
            break
    return total


def backlog() -> int:
    """Rows waiting for the relay (published ones and those in a publisher's hands are not)."""
    return waiting_rows().count()
