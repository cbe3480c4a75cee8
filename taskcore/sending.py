"""Celery's message sender (``app.amqp``), two costs of a ``.delay()`` lighter.

Selected by the project's Celery app (``amqp_cls``). Every message is sent as
Celery sends it (routing, headers, ``sent_at``, the publish retry policy, the
bell and replica acks of the transport); what changes:

- **task-sent events** (``CELERY_TASK_SEND_SENT_EVENT``, Flower's "sent" state)
  are not published one per message, in a second round trip after the message
  (a quarter of a ``.delay()``'s CPU, B1 steady in docs/benchmarks.md), but
  collected and published as grouped ``task.multi`` event messages (as Celery's
  worker groups its own events) by a daemon thread of the process, at least
  every ``TASKCORE_SENT_EVENT_FLUSH_SECONDS`` (default 0.2; 0: one by one, as
  Celery does), and at exit. Each event keeps the time of its publish. An event
  that cannot be published is kept for the next flush (up to 50,000); a process
  killed with SIGKILL loses the last fraction of a second of them (never a task).
- **the queue declaration** that Celery repeats for every message (kombu binds a
  copy of the queue to the channel to find it in its cache: a tenth of a
  publish) is skipped once the producer's connection has declared that queue.
"""

from __future__ import annotations

import time

from celery.app.amqp import AMQP as CeleryAMQP
from kombu import Queue
from kombu.common import Broadcast
from kombu.utils.objects import cached_property

from .batching import FlushingBuffer

# task-sent events per grouped event message.
EVENTS_PER_MESSAGE = 500


def sent_event_flush_seconds() -> float:
    from django.conf import settings

    return float(getattr(settings, "TASKCORE_SENT_EVENT_FLUSH_SECONDS", 0.2))


class BufferedSentEvents:
    """Stands in for Celery's dispatcher of ``task-sent`` events in ``send_task_message``."""

    def __init__(self, app, max_age: float):
        self.app = app
        self.buffer = FlushingBuffer(
            "task-sent-events",
            self._publish,
            max_items=EVENTS_PER_MESSAGE,
            max_age=max_age,
            everywhere=True,
        )

    def publish(self, type, fields, producer=None, **kwargs):
        # The event's time is the publish's, not the flush's.
        self.buffer.add((type, {**fields, "timestamp": time.time()}))

    def _publish(self, events: list) -> None:
        with self.app.producer_or_acquire() as producer:
            dispatcher = self.app.events.Dispatcher(
                producer.connection, buffer_group=["task"], buffer_limit=EVENTS_PER_MESSAGE
            )
            try:
                for type, fields in events:
                    dispatcher.send(type, **fields)
                dispatcher.flush()
            finally:
                dispatcher.close()


class AMQP(CeleryAMQP):
    """Celery's ``app.amqp`` with grouped task-sent events and queues declared once."""

    @cached_property
    def _event_dispatcher(self):
        max_age = sent_event_flush_seconds()
        if max_age <= 0:
            return super()._event_dispatcher
        return BufferedSentEvents(self.app, max_age)

    def _create_task_sender(self):
        send = super()._create_task_sender()
        queues = self.queues

        def send_task_message(producer, name, message, declare=None, queue=None, **kwargs):
            if declare is None and queue is not None:
                entity = queue if isinstance(queue, Queue) else queues.get(queue)
                if (
                    entity is not None
                    and not isinstance(entity, Broadcast)
                    and hash(entity) in producer.connection.declared_entities
                ):
                    declare = ()  # declared on this connection already (kombu's cache)
            return send(producer, name, message, declare=declare, queue=queue, **kwargs)

        return send_task_message
