"""Which broker a URL names, and a broker-agnostic reading of queue depths and consumers.

Three setups are supported from configuration alone: Redis (``redis://``,
``rediss://``), Redis behind Sentinel (``sentinel://h1:26379;sentinel://h2:26379``)
and RabbitMQ (``amqp://``, ``pyamqp://``, ``amqps://``). Settings, the config audit
and the health checks ask :func:`broker_kind` instead of testing URL prefixes.

:func:`read_queues` answers "how many messages wait in each queue and how many
consumers take from it" the same way on all three:

- messages: a passive ``queue_declare`` through kombu. RabbitMQ answers with the
  queue's ``message_count`` and ``consumer_count``; kombu's Redis transport
  (plain or Sentinel-managed) answers with the summed length of the queue's
  priority lists. A passive declare never creates a queue.
- consumers: RabbitMQ knows them (``consumer_count``). Redis does not (a consumer
  is a ``BRPOP``), so there the workers are asked (``inspect().active_queues()``),
  when ``ask_workers`` is true.

This module must stay importable without Django settings (settings import it).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

REDIS = "redis"
SENTINEL = "sentinel"
AMQP = "amqp"
OTHER = "other"

_KINDS = {
    "redis": REDIS,
    "rediss": REDIS,
    "sentinel": SENTINEL,
    "amqp": AMQP,
    "amqps": AMQP,
    "pyamqp": AMQP,
}


def broker_kind(url: str | None) -> str:
    """``"redis"``, ``"sentinel"``, ``"amqp"`` or ``"other"`` from a broker or backend URL."""
    scheme = (url or "").split("://", 1)[0].lower()
    # kombu's transport aliases: "redis+socket", "sentinel", "amqp" ...
    return _KINDS.get(scheme.split("+", 1)[0], OTHER)


def sentinel_urls(url: str) -> list[str]:
    """The ``;``-separated parts of a Sentinel URL (one per Sentinel)."""
    return [part.strip() for part in url.split(";") if part.strip()]


def with_password(url: str, password: str) -> str:
    """Put ``password`` into every ``;``-separated part of ``url`` that has none.

    kombu and Celery take the Redis password of a Sentinel-managed primary from
    the URL; operators set it once in ``REDIS_PASSWORD``.
    """
    if not password:
        return url
    parts = []
    for part in sentinel_urls(url) if ";" in url else [url]:
        split = urlsplit(part)
        if split.password is None and split.hostname:
            user = quote(split.username or "", safe="")
            netloc = f"{user}:{quote(password, safe='')}@{split.netloc.rsplit('@', 1)[-1]}"
            part = urlunsplit(split._replace(netloc=netloc))
        parts.append(part)
    return ";".join(parts)


@dataclass
class QueueReading:
    name: str
    # Messages waiting (not delivered to a consumer); None when unreadable.
    messages: int | None = None
    # Consumers of the queue; None when neither the broker nor the workers told.
    consumers: int | None = None
    exists: bool = True
    error: str | None = None

    def as_dict(self) -> dict:
        return {
            "messages": self.messages,
            "consumers": self.consumers,
            "exists": self.exists,
            "error": self.error,
        }


@dataclass
class BrokerReading:
    kind: str
    reachable: bool
    queues: dict[str, QueueReading] = field(default_factory=dict)
    # "broker" (RabbitMQ counts its consumers), "workers" (asked over the
    # control channel) or None (not asked).
    consumers_source: str | None = None
    error: str | None = None
    read_at: float = field(default_factory=time.time)

    def without_consumers(self) -> list[str]:
        """Queues known to have no consumer (unknown counts are not listed)."""
        return sorted(name for name, q in self.queues.items() if q.consumers == 0)

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "reachable": self.reachable,
            "consumers_source": self.consumers_source,
            "error": self.error,
            "queues": {name: reading.as_dict() for name, reading in self.queues.items()},
        }


def _masked_error(exc: BaseException) -> str:
    try:
        from taskcore.secrets import mask_text
    except Exception:  # pragma: no cover - secrets needs nothing from Django, but be safe
        return type(exc).__name__
    return mask_text(f"{type(exc).__name__}: {exc}")


def _declare_passive(connection, name: str) -> tuple[int, int | None] | None:
    """(messages, consumers or None) of an existing queue, None when it does not exist."""
    from amqp.exceptions import NotFound as AMQPNotFound
    from kombu.exceptions import ChannelError

    channel = connection.channel()
    try:
        ok = channel.queue_declare(queue=name, passive=True)
    except (AMQPNotFound, ChannelError):
        return None
    finally:
        try:
            channel.close()
        except Exception:  # noqa: S110 - a channel closed by a 404 cannot be closed twice
            pass
    consumers = ok.consumer_count if connection.transport.driver_type == "amqp" else None
    return ok.message_count, consumers


def _consumers_from_workers(app, names: Iterable[str], timeout: float) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    for worker_queues in replies.values():
        for queue in worker_queues or ():
            if queue.get("name") in counts:
                counts[queue["name"]] += 1
    return counts


def read_queues(
    app=None,
    queue_names: Iterable[str] | None = None,
    *,
    ask_workers: bool = True,
    timeout: float = 1.0,
) -> BrokerReading:
    """Depth and consumers of each queue on the app's broker (Redis, Sentinel or RabbitMQ).

    ``queue_names`` defaults to the queue table. Never raises for an unreachable
    broker: the reading says ``reachable=False`` with the (masked) error.
    """
    if app is None:
        from celery import current_app as app
    if queue_names is None:
        from taskcore.queues import queue_table

        queue_names = queue_table().names
    names = list(queue_names)
    kind = broker_kind(app.conf.broker_url)
    reading = BrokerReading(kind=kind, reachable=False)
    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
            for name in names:
                answer = _declare_passive(connection, name)
                if answer is None:
                    reading.queues[name] = QueueReading(name, exists=False, messages=0)
                else:
                    messages, consumers = answer
                    reading.queues[name] = QueueReading(name, messages, consumers)
            reading.reachable = True
    except Exception as exc:
        reading.error = _masked_error(exc)
        reading.queues = {name: QueueReading(name, error=reading.error) for name in names}
        return reading
    if kind == AMQP:
        reading.consumers_source = "broker"
        for queue in reading.queues.values():
            if not queue.exists:
                queue.consumers = 0
    elif ask_workers:
        try:
            counts = _consumers_from_workers(app, names, timeout)
        except Exception as exc:
            reading.error = _masked_error(exc)
        else:
            reading.consumers_source = "workers"
            for name, count in counts.items():
                reading.queues[name].consumers = count
    return reading


def declare_queues(app=None) -> list[str]:
    """Declare every queue of the table (and its exchange and binding) on the broker.

    On RabbitMQ a worker declares only the queues it consumes, so before every
    worker group has started once, the other groups' exchanges do not exist and
    Celery's delayed-delivery setup cannot bind them (it logs an error per
    queue). Declaring all of them at deploy time (or worker start) avoids that.
    Idempotent; a no-op in effect on Redis, where queues are lists created on use.
    """
    if app is None:
        from celery import current_app as app
    declared = []
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in app.amqp.queues.values():
            queue.bind(channel).declare()
            declared.append(queue.name)
    return declared


_AUTHENTICATION_FAILURES = (
    "NOAUTH",
    "WRONGPASS",
    "invalid password",
    "HELLO must be called",
    "Authentication required",
    "ACCESS_REFUSED",
    "AuthenticationError",
)


def describe_connection_error(exc: BaseException) -> str:
    """A broker or Redis error in words an operator acts on; authentication named as such."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        text += f" ({type(cause).__name__}: {cause})"
    if "maxmemory" in text:
        return (
            "Redis is out of memory (maxmemory reached; it refuses writes): free memory or "
            f"raise maxmemory [{text}]"
        )
    if any(marker.lower() in text.lower() for marker in _AUTHENTICATION_FAILURES):
        return (
            "authentication failed: the server refused the password (or needs one); "
            f"check REDIS_PASSWORD or the URL's password [{text}]"
        )
    return text
