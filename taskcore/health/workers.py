"""Ask the workers over the control channel, without waiting out a fixed timeout.

Celery's ``inspect()`` waits its whole timeout (1 s by default) for replies,
since it cannot know how many workers exist. On Redis a control broadcast is a
``PUBLISH``, whose reply is the number of subscribers that received it: one per
worker listening for control commands. We publish the broadcast ourselves
(kombu's mailbox, our own channel), read that number, and stop collecting as
soon as that many workers have answered. A healthy cluster answers in a few
milliseconds; only a worker that is subscribed but silent (dead socket, busy
solo pool) costs the timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kombu import Producer
from kombu.utils.json import dumps
from kombu.utils.uuid import uuid

from taskcore.queues import queue_table


@dataclass
class Broadcast:
    command: str
    replies: dict[str, object]
    # Clients that received the broadcast (None when the transport cannot tell).
    listeners: int | None
    elapsed_ms: float

    @property
    def silent(self) -> int:
        """Listeners that did not answer (dead, or too busy to answer in time)."""
        if self.listeners is None:
            return 0
        return max(0, self.listeners - len(self.replies))


def _count_receivers(channel, sink: list[int]) -> bool:
    """Make ``channel`` record how many subscribers each fanout publish reached."""
    original = getattr(channel, "_put_fanout", None)
    if original is None or not hasattr(channel, "_get_publish_topics"):
        return False

    def put_fanout(exchange, message, routing_key, **kwargs):
        if kwargs.get("_publish_batch") is not None:
            return original(exchange, message, routing_key, **kwargs)
        payload = dumps(message)
        with channel.conn_or_acquire() as client:
            sink.append(
                sum(
                    int(client.publish(topic, payload))
                    for topic in channel._get_publish_topics(exchange, routing_key)
                )
            )
        return None

    channel._put_fanout = put_fanout
    return True


def broadcast(app, command: str, *, timeout: float, arguments: dict | None = None) -> Broadcast:
    """Send a control command to every worker and collect the replies.

    Raises the broker's connection error when the broker does not answer.
    """
    started = time.perf_counter()
    connection = app.connection_for_read(
        connect_timeout=timeout,
        transport_options={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    with connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
        channel = connection.channel()
        try:
            receivers: list[int] = []
            counted = _count_receivers(channel, receivers)
            mailbox = app.control.mailbox(connection)
            ticket = uuid()
            mailbox._publish(
                command,
                arguments or {},
                reply_ticket=ticket,
                channel=channel,
                timeout=timeout,
                serializer=mailbox.serializer,
                # Our channel, not the app's producer pool: the count is read on it.
                producer=Producer(channel, auto_declare=False),
            )
            listeners = receivers[0] if counted and receivers else None
            replies: list[dict] = []
            if listeners != 0:
                replies = mailbox._collect(
                    ticket, limit=listeners or None, timeout=timeout, channel=channel
                )
        finally:
            channel.close()
    merged: dict[str, object] = {}
    for reply in replies:
        if isinstance(reply, dict):
            merged.update(reply)
    return Broadcast(command, merged, listeners, (time.perf_counter() - started) * 1000)


@dataclass
class WorkerCensus:
    """Which workers answer and which queues each consumes."""

    queues_by_worker: dict[str, list[str]]
    listeners: int | None
    elapsed_ms: float
    consumers: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        self.consumers = {name: [] for name in queue_table().names}
        for worker, queue_names in sorted(self.queues_by_worker.items()):
            for name in queue_names:
                self.consumers.setdefault(name, []).append(worker)

    @property
    def workers(self) -> list[str]:
        return sorted(self.queues_by_worker)

    @property
    def silent(self) -> int:
        if self.listeners is None:
            return 0
        return max(0, self.listeners - len(self.queues_by_worker))


def worker_census(app, timeout: float) -> WorkerCensus:
    """One ``active_queues`` broadcast: answering it is the worker's ping."""
    result = broadcast(app, "active_queues", timeout=timeout)
    queues_by_worker = {
        worker: sorted(queue.get("name") for queue in (reply or []) if isinstance(queue, dict))
        for worker, reply in result.replies.items()
    }
    return WorkerCensus(queues_by_worker, result.listeners, result.elapsed_ms)
