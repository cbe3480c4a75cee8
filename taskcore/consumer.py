"""The worker's consumer, guarded: a message that is not a valid task message is refused.

Celery's consumer runs each message through ``on_task_received`` in the worker's
main process. A message of the wrong shape there (headers that are not a mapping,
a body that is not ``[args, kwargs, embed]``) raises out of the consumer and the
worker exits ("Unrecoverable error"); the message goes back to its queue and
kills the next worker. Celery's own refusals (unknown task, undecodable body,
disallowed content type) drop the message with only a log line.

Here every such message is *refused*: it becomes one dead letter (reason
``refused``, the raw message kept for inspection, see :mod:`taskcore.deadletters`)
through the pipeline's ``REJECTED`` event, and is then removed from the queue.
Nothing is raised into the consumer. Selected by the setting
``CELERY_WORKER_CONSUMER = "taskcore.consumer:GuardedConsumer"``.

Task events (``task-received``, ``-started``, ``-succeeded``... for Flower) are
published in batches: Celery groups a task's events into ``task.multi`` messages
but flushes them at every turn of the event loop, which at a steady, shallow load
is one Redis ``PUBLISH`` per event (a fifth of the worker's CPU per task, B1
steady in docs/benchmarks.md). Here a flush waits up to
``TASKCORE_EVENT_FLUSH_SECONDS`` (default 0.2 s; 0: Celery's behaviour) for the
events that follow; Celery still flushes at once when ``buffer_limit`` events
wait. No event is dropped: Flower sees every one, at most that much later.
"""

from __future__ import annotations

import logging
import time

from celery import signals
from celery.exceptions import NotRegistered
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed, DecodeError
from vine import promise

from .queues import queue_table

logger = logging.getLogger("taskcore.consumer")


class RefusedMessage(Exception):
    """A message that is not a valid task message; the text says what is wrong."""


def problem_of(message, registered, max_bytes: int | None) -> str | None:
    """What makes ``message`` unfit to run, or None: checks Celery's own code assumes.

    The body is decoded here (kombu caches it; Celery's strategy decodes it
    again from that cache), so its shape is checked before a request is built.
    """
    headers = message.headers
    if not isinstance(headers, dict):
        return f"no task headers (headers are {type(headers).__name__}): not a Celery task message"
    name, task_id = headers.get("task"), headers.get("id")
    if not isinstance(name, str) or not name:
        return f"no task name in the headers (task={name!r}): not a Celery task message"
    if not isinstance(task_id, str) or not task_id:
        return f"no task id in the headers (id={task_id!r})"
    if name not in registered:
        return f"unknown task {name!r}: no task of that name is registered in this worker"
    size = len(message.body or b"")
    if max_bytes and size > max_bytes:
        return f"message body of {size:,} bytes is over this queue's limit of {max_bytes:,} bytes"
    try:
        body = message.payload
    except ContentDisallowed as exc:
        return f"content refused: {exc}"
    except DecodeError as exc:
        return f"body cannot be decoded: {exc}"
    if not (
        isinstance(body, list | tuple)
        and len(body) == 3
        and isinstance(body[0], list | tuple)
        and isinstance(body[1], dict)
        and isinstance(body[2], dict | type(None))
    ):
        return "body is not [args (a list), kwargs (an object), options (an object)]"
    return None


def _queue_of(message) -> str:
    info = getattr(message, "delivery_info", None) or {}
    return str(info.get("routing_key") or "")


def event_flush_seconds() -> float:
    from django.conf import settings

    return float(getattr(settings, "TASKCORE_EVENT_FLUSH_SECONDS", 0.2))


class GuardedConsumer(Consumer):
    """Celery's consumer; what is not a valid task message is refused, never raised."""

    # When a delayed flush of buffered task events was scheduled (monotonic), or None.
    _event_flush_due: float | None = None
    # TASKCORE_EVENT_FLUSH_SECONDS, read once: this runs for every task event
    # (three a task), where reading the setting was ~2% of the worker's CPU.
    _event_flush_delay: float | None = None

    def on_send_event_buffered(self):
        """An event was buffered (in the loop or in a pool thread): flush it a little later."""
        delay = self._event_flush_delay
        if delay is None:
            delay = self._event_flush_delay = event_flush_seconds()
        if not self.hub or delay <= 0:
            return super().on_send_event_buffered()
        due = self._event_flush_due
        # A flush scheduled long ago and never run (its timer dropped with a reset
        # hub on reconnection) does not hold back the next one.
        if due is not None and time.monotonic() < due + 10 * delay + 1:
            return
        self._event_flush_due = time.monotonic() + delay
        # call_soon is how Celery hands a flush to the loop from a pool thread;
        # the timer is then set from the loop's own thread.
        self.hub.call_soon(self._schedule_event_flush, delay)

    def _schedule_event_flush(self, delay: float) -> None:
        self.hub.call_later(delay, self._delayed_event_flush)

    def _delayed_event_flush(self) -> None:
        self._event_flush_due = None
        self._flush_events()

    def _flush_events_quietly(self) -> None:
        try:
            self._flush_events()
        except Exception:  # the connection is going away: nothing more to do
            logger.warning("buffered task events not sent at shutdown", exc_info=True)

    # Celery's events step closes its dispatcher without a flush: events still
    # waiting for the delayed flush go out first.
    def stop(self):
        self._flush_events_quietly()
        super().stop()

    def shutdown(self):
        self._flush_events_quietly()
        super().shutdown()

    def create_task_handler(self, promise=promise):
        handle = super().create_task_handler(promise)
        registered = self.app.tasks
        table = queue_table()
        connection_errors = self.connection_errors

        def on_task_received(message):
            try:
                problem = problem_of(
                    message, registered, table.max_message_bytes(_queue_of(message))
                )
                if problem is not None:
                    return self.refuse(message, problem)
                return handle(message)
            except connection_errors:
                raise  # the consumer reconnects; the message comes back
            except Exception as exc:
                self.refuse(message, f"the worker could not accept it: {type(exc).__name__}: {exc}")

        return on_task_received

    def refuse(self, message, reason: str) -> None:
        """Record the message as a refused dead letter (pipeline ``REJECTED``), then drop it."""
        headers = message.headers if isinstance(message.headers, dict) else {}
        logger.error(
            "message refused from queue %r (task %.200r, id %.100r): %.500s",
            _queue_of(message),
            headers.get("task"),
            headers.get("id"),
            reason,
        )
        signals.task_rejected.send(sender=self, message=message, exc=RefusedMessage(reason))
        if message.acknowledged:
            return
        message.reject_log_error(logger, self.connection_errors)
        name, task_id = headers.get("task"), headers.get("id")
        if isinstance(task_id, str) and isinstance(name, str) and name not in self.app.tasks:
            # A caller waiting on the result learns at once, as with Celery's own refusal.
            try:
                self.app.backend.mark_as_failure(task_id, NotRegistered(name))
            except Exception:
                logger.warning("could not store the refusal of %s", task_id, exc_info=True)

    # Celery's own refusals: refused the same way, not dropped.
    def on_unknown_message(self, body, message):
        self.refuse(message, "not a Celery task message (no task name)")

    def on_unknown_task(self, body, message, exc):
        self.refuse(message, f"unknown task: {exc}")

    def on_invalid_task(self, body, message, exc):
        self.refuse(message, f"invalid task message: {exc}")

    def on_decode_error(self, message, exc):
        if not hasattr(message, "reject_log_error"):  # kombu could not even build a Message
            raise exc
        self.refuse(message, f"body cannot be decoded: {exc}")
