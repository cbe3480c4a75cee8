"""Short-timeout Redis clients for the health checks, built from the Celery settings.

The checks use their own clients rather than the app's pools: those retry for
a long time (broker_connection_max_retries, socket timeouts of 30 s), which is
right for a worker and wrong for a probe that must answer within its timeout.

Brokers (``taskcore.brokers.broker_kind``): Redis, Redis behind Sentinel (the
client talks to the current primary, found through the Sentinels) and RabbitMQ
(no Redis client: queue readings go through kombu; beat's heartbeat then lives
in the result backend's Redis).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskcore.brokers import AMQP, REDIS, SENTINEL, broker_kind


class NotRedis(RuntimeError):
    """The URL names no Redis (RabbitMQ, or another transport)."""


def first_url(url) -> str:
    """The first URL of a failover list (``a;b`` or a list), as kombu tries it first."""
    return full_url(url).split(";")[0].strip()


def full_url(url) -> str:
    if isinstance(url, list | tuple):
        return ";".join(str(part) for part in url)
    return str(url or "").strip()


def is_redis_url(url: str) -> bool:
    return broker_kind(url) in (REDIS, SENTINEL) or url.startswith("unix://")


def _no_retry(timeout: float) -> dict:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),  # a probe reports, it does not insist
        "health_check_interval": 0,
    }


def redis_client(url: str, timeout: float, ssl_options: dict | None = None) -> redis.Redis:
    kwargs = _no_retry(timeout)
    if url.startswith("rediss://") and ssl_options:
        kwargs.update({key: value for key, value in ssl_options.items() if key.startswith("ssl_")})
    return redis.Redis.from_url(first_url(url), **kwargs)


def sentinel_primary(url: str, timeout: float, options: dict | None) -> redis.Redis:
    """A client of the primary the Sentinels of ``sentinel://h1:26379;sentinel://h2:26379`` name.

    As kombu's Sentinel transport does: the URL's password and database are the
    primary's; ``master_name`` and ``sentinel_kwargs`` come from the transport options.
    """
    from redis.sentinel import Sentinel

    options = options or {}
    parts = [urlsplit(part.strip()) for part in url.split(";") if part.strip()]
    first = parts[0]
    database = int((first.path or "/0").strip("/") or 0)
    sentinel_kwargs = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        **(options.get("sentinel_kwargs") or {}),
    }
    sentinel = Sentinel(
        [(part.hostname, part.port or 26379) for part in parts],
        sentinel_kwargs=sentinel_kwargs,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    return sentinel.master_for(
        options.get("master_name") or "mymaster",
        password=unquote(first.password) if first.password else None,
        db=database,
        **_no_retry(timeout),
    )


def client_for(url: str, timeout: float, *, ssl_options=None, transport_options=None):
    kind = broker_kind(url)
    if kind == SENTINEL:
        return sentinel_primary(url, timeout, transport_options)
    if kind == REDIS or url.startswith("unix://"):
        return redis_client(url, timeout, ssl_options)
    raise NotRedis(f"{url.split('://', 1)[0]}:// is not Redis")


def broker_url(app) -> str:
    return full_url(app.conf.broker_url)


def backend_url(app) -> str:
    return full_url(app.conf.result_backend)


def broker_is_amqp(app) -> bool:
    return broker_kind(broker_url(app)) == AMQP


def broker_redis(app, timeout: float) -> redis.Redis:
    return client_for(
        broker_url(app),
        timeout,
        ssl_options=app.conf.broker_use_ssl or None,
        transport_options=app.conf.broker_transport_options,
    )


def backend_redis(app, timeout: float) -> redis.Redis:
    return client_for(
        backend_url(app),
        timeout,
        ssl_options=app.conf.redis_backend_use_ssl or None,
        transport_options=app.conf.result_backend_transport_options,
    )


def liveness_redis(app, timeout: float) -> redis.Redis:
    """Where beat's lock and heartbeat live: the broker's Redis, else the result backend's."""
    if is_redis_url(broker_url(app)):
        return broker_redis(app, timeout)
    return backend_redis(app, timeout)
