"""The per-message proof of sending, kept in Redis until the batch commits its outcomes.

Recording each message's outcome in the database as it goes costs one commit
(an fsync, about 2 ms, serialised across processes on SQLite) per recipient,
which caps a whole installation at a few hundred emails per second. Instead, a
batch writes one Redis key per message the moment the server accepts it
(about 0.1 ms) and commits all its outcomes to the database in one transaction
at the end (and every few seconds, so the admin sees progress).

A worker killed in between leaves the keys behind: the batch's next run (the
broker redelivers it) finds them before sending and marks those deliveries
sent instead of sending them again. The keys live in the state Redis
(``taskcore.redis_clients.state_redis``: the broker's Redis, plain or behind
Sentinel, whose durability the task queue already depends on; ``REDIS_URL``
beside a RabbitMQ broker), and expire after twice the visibility timeout, when
no redelivery can come.
"""

from __future__ import annotations

from django.conf import settings

from taskcore.redis_clients import state_redis

KEY_PREFIX = "notifications:sent:"


def _ttl() -> int:
    # A message a dead worker had taken comes back after the Redis visibility
    # timeout; on RabbitMQ at the latest after the server's consumer_timeout.
    horizon = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout") or getattr(
        settings, "CELERY_RABBITMQ_CONSUMER_TIMEOUT", 3600
    )
    return 2 * int(horizon)


def _key(delivery_id: int) -> str:
    return f"{KEY_PREFIX}{delivery_id}"


def note_sent(delivery_id: int) -> None:
    state_redis().set(_key(delivery_id), 1, ex=_ttl())


def sent_among(delivery_ids: list[int]) -> set[int]:
    """The deliveries among ``delivery_ids`` that a run before this one sent."""
    if not delivery_ids:
        return set()
    values = state_redis().mget([_key(pk) for pk in delivery_ids])
    return {pk for pk, value in zip(delivery_ids, values, strict=True) if value is not None}


def forget(delivery_ids: list[int]) -> None:
    """Drop the keys once the database holds the outcome."""
    if delivery_ids:
        state_redis().delete(*[_key(pk) for pk in delivery_ids])
