"""Short-timeout Redis clients for the health checks, built from the Celery settings.

The checks use their own clients rather than the app's pools: those retry for
a long time (broker_connection_max_retries, socket timeouts of 30 s), which is
right for a worker and wrong for a probe that must answer within its timeout.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def first_url(url) -> str:
    """The first URL of a failover list (``a;b`` or a list), as kombu tries it first."""
    if isinstance(url, list | tuple):
        url = url[0] if url else ""
    return str(url or "").split(";")[0].strip()


def is_redis_url(url: str) -> bool:
    return url.startswith(REDIS_SCHEMES)


def redis_client(url: str, timeout: float, ssl_options: dict | None = None) -> redis.Redis:
    kwargs = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),  # a probe reports, it does not insist
        "health_check_interval": 0,
    }
    if url.startswith("rediss://") and ssl_options:
        kwargs.update({key: value for key, value in ssl_options.items() if key.startswith("ssl_")})
    return redis.Redis.from_url(url, **kwargs)


def broker_url(app) -> str:
    return first_url(app.conf.broker_url)


def backend_url(app) -> str:
    return first_url(app.conf.result_backend)


def broker_redis(app, timeout: float) -> redis.Redis:
    return redis_client(broker_url(app), timeout, app.conf.broker_use_ssl or None)


def backend_redis(app, timeout: float) -> redis.Redis:
    return redis_client(backend_url(app), timeout, app.conf.redis_backend_use_ssl or None)
