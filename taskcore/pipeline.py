"""The task pipeline: the one place that connects Celery's task signals.

One receiver per signal. Each turns what Celery reports into one
:class:`TaskEvent` and hands it to the subscribers registered for that event.
Apps register in their ``AppConfig.ready()``::

    pipeline.subscribe(on_failed, events=[pipeline.FAILED], tasks=["reports.tasks.run_export"])

Events, in a task's life:

- ``SENT``: a message is published (``before_task_publish``; also stamps ``sent_at``);
- ``RECEIVED``: a worker took the message (main process);
- ``STARTED``: the task starts running;
- ``FINISHED``: one execution ended, whatever its state (``SUCCESS``, ``FAILURE``,
  ``RETRY``...). Exactly one per execution: also for a failure the worker's main
  process reports (hard time limit, lost child), where no run was seen;
- ``RETRIED``: the execution asked for a retry;
- ``FAILED``: the task failed for good (no retry follows). For a
  :class:`~taskcore.base.BaseTask` it is sent *before* the failure is stored, so a
  caller who sees the failed result also sees what the subscribers recorded;
- ``REJECTED``, ``REVOKED``, ``UNKNOWN``: the message was refused, the task revoked,
  or its name is not registered.

The start time is taken once per task. A subscriber that raises is logged (at
most once a minute per subscriber) and never fails the task nor stops the others.
"""

from __future__ import annotations

import logging
import time
import traceback as traceback_module
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from celery import signals

SENT = "sent"
RECEIVED = "received"
STARTED = "started"
FINISHED = "finished"
RETRIED = "retried"
FAILED = "failed"
REJECTED = "rejected"
REVOKED = "revoked"
UNKNOWN = "unknown"
EVENTS = (SENT, RECEIVED, STARTED, FINISHED, RETRIED, FAILED, REJECTED, REVOKED, UNKNOWN)

# The header every published message carries: its publication time (epoch seconds),
# so the health checks can tell the age of a queue's oldest message.
SENT_AT_HEADER = "sent_at"

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class TaskEvent:
    """What a subscriber gets: one task's event, with what is known of it then."""

    event: str
    task_id: str
    name: str
    queue: str = ""
    # FINISHED: Celery's final state of the execution (SUCCESS, FAILURE, RETRY, ...).
    state: str = ""
    # Seconds between STARTED and FINISHED in this process; None when not seen.
    runtime: float | None = None
    retries: int = 0
    max_retries: int | None = None
    args: list | tuple = ()
    kwargs: dict | None = None
    exception: BaseException | None = None
    traceback: str = ""
    hostname: str = ""
    # False for an outcome the worker's main process reports without a run here.
    in_run: bool = True
    # Event specific: eta (RECEIVED), reason (RETRIED; REJECTED with the kombu
    # message), terminated/signum/expired (REVOKED), soft_time_limit (FAILED).
    detail: dict | None = None

    @property
    def exception_type(self) -> str:
        return type(self.exception).__name__ if self.exception is not None else ""


Callback = Callable[[TaskEvent], object]


@dataclass(slots=True)
class _Subscriber:
    key: str
    callback: Callback
    events: frozenset[str]
    tasks: frozenset[str] | None
    failures: int = 0
    last_logged: float = float("-inf")


_subscribers: dict[str, _Subscriber] = {}
# Per event, the subscribers to call: computed when one subscribes, not per task.
_by_event: dict[str, tuple[_Subscriber, ...]] = {event: () for event in EVENTS}
ERROR_LOG_INTERVAL = 60.0


def subscribe(
    callback: Callback,
    *,
    events: Iterable[str],
    tasks: Iterable[str] | None = None,
    key: str | None = None,
) -> None:
    """Call ``callback(event)`` for each of ``events`` (of the ``tasks`` named, or all).

    Subscribing again under the same ``key`` (default: the callback's qualified
    name) replaces the earlier subscription.
    """
    events = frozenset(events)
    unknown = events - set(EVENTS)
    if unknown:
        raise ValueError(f"unknown pipeline events {sorted(unknown)}; known: {EVENTS}")
    key = key or f"{callback.__module__}.{callback.__qualname__}"
    _subscribers[key] = _Subscriber(
        key, callback, events, frozenset(tasks) if tasks is not None else None
    )
    _rebuild()


def unsubscribe(key: str) -> None:
    _subscribers.pop(key, None)
    _rebuild()


def subscribers(event: str) -> list[str]:
    """Keys of the subscribers of ``event``, in call order."""
    return [subscriber.key for subscriber in _by_event[event]]


def _rebuild() -> None:
    for event in EVENTS:
        _by_event[event] = tuple(s for s in _subscribers.values() if event in s.events)


def _dispatch(subscribers: tuple[_Subscriber, ...], record: TaskEvent) -> None:
    for subscriber in subscribers:
        if subscriber.tasks is not None and record.name not in subscriber.tasks:
            continue
        try:
            subscriber.callback(record)
        except Exception:
            _subscriber_failed(subscriber, record)


def _subscriber_failed(subscriber: _Subscriber, record: TaskEvent) -> None:
    subscriber.failures += 1
    now = time.monotonic()
    if now - subscriber.last_logged < ERROR_LOG_INTERVAL:
        return
    subscriber.last_logged = now
    logger.error(
        "pipeline subscriber %s failed on %s of %s[%s] (%d failure(s) since last logged)",
        subscriber.key,
        record.event,
        record.name,
        record.task_id,
        subscriber.failures,
        exc_info=True,
    )
    subscriber.failures = 0


# --- the task's runs in this process -----------------------------------------


class _Run:
    """A task running in this process: started at, and what ended it."""

    __slots__ = ("exception", "failed_sent", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.exception: BaseException | None = None
        self.failed_sent = False


_running: dict[str, _Run] = {}


def _name_of(task=None, request=None) -> str:
    # A worker-side Request names its task in .task_name, a task's Context in .task.
    name = (
        getattr(task, "name", None)
        or getattr(request, "task_name", None)
        or getattr(request, "task", None)
    )
    return name if isinstance(name, str) else "?"


def _queue_of(name: str, request) -> str:
    delivery = getattr(request, "delivery_info", None) or {}
    queue = delivery.get("routing_key")
    if queue:
        return str(queue)
    # A hard time limit is reported by the main process, where the task has no
    # delivery info: the queue the task is routed to.
    from .queues import queue_table

    try:
        return queue_table().queue_for_task(name)
    except Exception:
        return ""


def _record(event: str, task, task_id, request=None, **fields) -> TaskEvent:
    request = request if request is not None else getattr(task, "request", None)
    name = _name_of(task, request)
    return TaskEvent(
        event,
        str(task_id or getattr(request, "id", None) or "-"),
        name,
        queue=_queue_of(name, request),
        retries=getattr(request, "retries", 0) or 0,
        **fields,
    )


def _from_headers(event: str, headers: dict, queue, **fields) -> TaskEvent:
    """A record from a message's headers: published or refused, the task never ran here."""
    return TaskEvent(
        event,
        str(headers.get("id") or "-"),
        str(headers.get("task") or "?"),
        queue=str(queue or ""),
        **fields,
    )


# --- receivers: one per Celery task signal -------------------------------------


def stamp_sent_at(headers=None, routing_key=None, **kwargs):
    """before_task_publish: stamp ``sent_at``; each publish (send, retry, replay) is new."""
    if headers is not None:
        headers[SENT_AT_HEADER] = time.time()
    subscribers = _by_event[SENT]
    if subscribers:
        headers = headers or {}
        record = _from_headers(SENT, headers, routing_key, retries=headers.get("retries") or 0)
        _dispatch(subscribers, record)


def _on_received(request=None, **kwargs):
    subscribers = _by_event[RECEIVED]
    if subscribers:
        record = _record(RECEIVED, None, None, request)
        record.retries = getattr(request, "request_dict", {}).get("retries", 0) or 0
        record.detail = {"eta": getattr(request, "eta", None)}
        _dispatch(subscribers, record)


def _on_prerun(task_id=None, task=None, args=None, kwargs=None, **extra):
    _running[task_id] = _Run(time.perf_counter())
    subscribers = _by_event[STARTED]
    if subscribers:
        _dispatch(subscribers, _record(STARTED, task, task_id, args=args or (), kwargs=kwargs))


def _on_postrun(task_id=None, task=None, state=None, args=None, kwargs=None, **extra):
    run = _running.pop(task_id, None)
    subscribers = _by_event[FINISHED]
    if subscribers:
        _dispatch(
            subscribers,
            _record(
                FINISHED,
                task,
                task_id,
                state=state or "",
                runtime=time.perf_counter() - run.started if run is not None else None,
                exception=run.exception if run is not None else None,
                args=args or (),
                kwargs=kwargs,
            ),
        )


def _on_retry(sender=None, request=None, reason=None, einfo=None, **kwargs):
    task_id = getattr(request, "id", None)
    cause = getattr(reason, "exc", None) or reason
    run = _running.get(task_id)
    if run is not None:
        run.exception = cause if isinstance(cause, BaseException) else None
    record = _record(
        RETRIED,
        sender,
        task_id,
        request,
        args=getattr(request, "args", None) or (),
        kwargs=getattr(request, "kwargs", None),
        exception=cause if isinstance(cause, BaseException) else None,
        detail={"reason": reason},
    )
    _dispatch(_by_event[RETRIED], record)
    if run is None:  # no postrun follows in this process
        _finished_outside_run(record, "RETRY")


# Failures the worker's main process reported (no run here), by task id: Celery 5.7
# sends task_failure twice for a child killed at the hard time limit (billiard's
# error callback, then Request.on_timeout). Kept a minute, at most a few thousand.
_reported_outside_run: dict[str, float] = {}
REPORTED_OUTSIDE_RUN_SECONDS = 60.0


def _first_report_outside_run(task_id) -> bool:
    now = time.monotonic()
    if len(_reported_outside_run) > 4096:
        for key, at in list(_reported_outside_run.items()):
            if now - at > REPORTED_OUTSIDE_RUN_SECONDS:
                del _reported_outside_run[key]
    at = _reported_outside_run.get(task_id)
    if at is not None and now - at <= REPORTED_OUTSIDE_RUN_SECONDS:
        return False
    _reported_outside_run[task_id] = now
    return True


def _on_failure(
    sender=None, task_id=None, exception=None, args=None, kwargs=None, einfo=None, **extra
):
    run = _running.get(task_id)
    if run is not None:
        run.exception = exception
        if run.failed_sent:  # the task sent FAILED itself, before its result was stored
            return
    elif not _first_report_outside_run(task_id):
        return
    record = _failed_record(
        sender, task_id, exception, args, kwargs, str(einfo.traceback) if einfo else ""
    )
    _dispatch(_by_event[FAILED], record)
    if run is None:  # the main process reports it (time limit, lost child): no postrun
        _finished_outside_run(record, "FAILURE")


def _on_rejected(message=None, exc=None, **kwargs):
    subscribers = _by_event[REJECTED]
    if subscribers:
        headers = getattr(message, "headers", None) or {}
        delivery = getattr(message, "delivery_info", None) or {}
        record = _from_headers(
            REJECTED,
            headers,
            delivery.get("routing_key"),
            exception=exc if isinstance(exc, BaseException) else None,
            detail={"reason": exc, "message": message},
        )
        _dispatch(subscribers, record)


def _on_revoked(request=None, terminated=None, signum=None, expired=None, **kwargs):
    subscribers = _by_event[REVOKED]
    if subscribers:
        record = _record(REVOKED, None, None, request)
        record.detail = {"terminated": terminated, "signum": signum, "expired": expired}
        _dispatch(subscribers, record)


def _on_unknown(name=None, id=None, message=None, exc=None, **kwargs):
    subscribers = _by_event[UNKNOWN]
    if subscribers:
        _dispatch(
            subscribers,
            TaskEvent(UNKNOWN, str(id or "-"), str(name or "?"), detail={"reason": exc}),
        )


def _finished_outside_run(record: TaskEvent, state: str) -> None:
    subscribers = _by_event[FINISHED]
    if subscribers:
        _dispatch(
            subscribers,
            TaskEvent(
                FINISHED,
                record.task_id,
                record.name,
                queue=record.queue,
                state=state,
                retries=record.retries,
                exception=record.exception,
                in_run=False,
            ),
        )


def _failed_record(task, task_id, exception, args, kwargs, traceback: str) -> TaskEvent:
    request = getattr(task, "request", None)
    timelimit = getattr(request, "timelimit", None) or (None, None)
    return _record(
        FAILED,
        task,
        task_id,
        request,
        max_retries=getattr(task, "max_retries", None),
        args=args or (),
        kwargs=kwargs,
        exception=exception,
        traceback=traceback,
        hostname=getattr(request, "hostname", "") or "",
        detail={"soft_time_limit": timelimit[1] or getattr(task, "soft_time_limit", None)},
    )


def failed_for_good(task, exc: BaseException, args, kwargs) -> None:
    """Send FAILED from inside the task (``BaseTask``), before its result is stored.

    Celery's ``task_failure`` for the same run, which follows, is then not sent again.
    """
    task_id = task.request.id
    run = _running.get(task_id)
    if run is not None:
        run.failed_sent = True
    traceback = "".join(traceback_module.format_exception(exc))
    _dispatch(_by_event[FAILED], _failed_record(task, task_id, exc, args, kwargs, traceback))


RECEIVERS = (
    (signals.before_task_publish, stamp_sent_at),
    (signals.task_received, _on_received),
    (signals.task_prerun, _on_prerun),
    (signals.task_postrun, _on_postrun),
    (signals.task_retry, _on_retry),
    (signals.task_failure, _on_failure),
    (signals.task_rejected, _on_rejected),
    (signals.task_revoked, _on_revoked),
    (signals.task_unknown, _on_unknown),
)


def install() -> None:
    """Connect the receivers (idempotent). Called from taskcore's ``AppConfig.ready()``."""
    for signal, receiver in RECEIVERS:
        signal.connect(receiver, weak=False)
