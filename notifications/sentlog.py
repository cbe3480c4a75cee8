"""The per-message proof of sending, kept in Redis until the batch commits its outcomes.

Recording each message's outcome in the database as it goes costs one commit
(an fsync, about 2 ms, serialised across processes on SQLite) per recipient,
which caps a whole installation at a few hundred emails per second. Instead, a
batch writes one Redis key per message the moment the server accepts it
(about 0.1 ms) and commits all its outcomes to the database in one transaction
at the end (and every few seconds, so the admin sees progress).

A worker killed in between leaves the keys behind: the batch's next run (the
broker redelivers it) finds them before sending and marks those deliveries
sent instead of sending them again. The keys live in the broker's Redis, the
server whose durability (no eviction, AOF) the task queue already depends on,
and expire after twice the visibility timeout, when no redelivery can come.
"""

from __future__ import annotations

from functools import cache

import redis
from django.conf import settings

KEY_PREFIX = "notifications:sent:"


@cache
def _client() -> redis.Redis:
    # redis-py notices a fork and opens new connections in each pool child.
    url = str(settings.CELERY_BROKER_URL).split(";")[0]
    return redis.Redis.from_url(
        url,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=settings.REDIS_SOCKET_CONNECT_TIMEOUT,
        socket_keepalive=True,
        health_check_interval=settings.REDIS_HEALTH_CHECK_INTERVAL,
        retry_on_timeout=True,
    )


def _ttl() -> int:
    visibility_timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    return 2 * int(visibility_timeout)


def _key(delivery_id: int) -> str:
    return f"{KEY_PREFIX}{delivery_id}"


def note_sent(delivery_id: int) -> None:
    _client().set(_key(delivery_id), 1, ex=_ttl())


def sent_among(delivery_ids: list[int]) -> set[int]:
    """The deliveries among ``delivery_ids`` that a run before this one sent."""
    if not delivery_ids:
        return set()
    values = _client().mget([_key(pk) for pk in delivery_ids])
    return {pk for pk, value in zip(delivery_ids, values, strict=True) if value is not None}


def forget(delivery_ids: list[int]) -> None:
    """Drop the keys once the database holds the outcome."""
    if delivery_ids:
        _client().delete(*[_key(pk) for pk in delivery_ids])
