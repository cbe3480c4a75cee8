"""Every Redis client of the project comes from here: one seam for the three broker setups.

Setups (``taskcore.brokers.broker_kind`` of a URL):

- ``redis://``, ``rediss://``, ``unix://``: a client of that server (the first
  of a ``;``-separated failover list, as kombu tries it first);
- ``sentinel://h1:26379;sentinel://h2:26379``: a client of the primary the
  Sentinels name, found again by redis-py after a failover. The master's name
  and the Sentinels' password come from ``REDIS_SENTINEL_MASTER`` and
  ``REDIS_SENTINEL_PASSWORD`` (for the broker and the result backend: from their
  transport options, which settings fill with the same values); the primary's
  password is the URL's, else ``REDIS_PASSWORD``;
- ``amqp://`` (RabbitMQ): no Redis. The broker has no Redis client
  (:class:`NotRedis`); the apps' Redis state lives at ``TASKCORE_STATE_REDIS_URL``.

Roles:

- :func:`state_redis`: the apps' small durable state in Redis: e-mail sent
  marks, dashboard counters and samples, beat's heartbeat and lock, parked dead
  letters. ``TASKCORE_STATE_REDIS_URL`` (settings: the broker's Redis, plain or
  Sentinel, whose durability the queue already depends on; ``REDIS_URL`` beside
  a RabbitMQ broker);
- :func:`broker_redis`: the broker's Redis, for reading queues (NotRedis on RabbitMQ);
- :func:`backend_redis`: the result backend's Redis.

Without ``timeout``, a role's client is the process's long-lived one, with the
pool options of settings (``REDIS_SOCKET_TIMEOUT``, ``REDIS_SOCKET_CONNECT_TIMEOUT``,
``REDIS_HEALTH_CHECK_INTERVAL``, ``REDIS_MAX_CONNECTIONS``, keepalive, retry on
timeout), built once per process: a prefork child builds its own, it never
shares the sockets of the parent it was forked from. With ``timeout``, a new
client for a probe (the health checks): short timeouts, no retry, no
health-check round trips, since a probe must answer within its deadline.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskcore.brokers import AMQP, REDIS, SENTINEL, broker_kind, with_password

STATE, BROKER, BACKEND = "state", "broker", "backend"


class NotRedis(RuntimeError):
    """The URL names no Redis (RabbitMQ, or another transport)."""


# --- URLs ------------------------------------------------------------------------
def full_url(url) -> str:
    if isinstance(url, list | tuple):
        return ";".join(str(part) for part in url)
    return str(url or "").strip()


def first_url(url) -> str:
    """The first URL of a failover list (``a;b`` or a list), as kombu tries it first."""
    return full_url(url).split(";")[0].strip()


def is_redis_url(url: str) -> bool:
    return broker_kind(url) in (REDIS, SENTINEL) or str(url).startswith("unix://")


def _app(app):
    if app is None:
        from celery import current_app

        return current_app
    return app


def broker_url(app=None) -> str:
    return full_url(_app(app).conf.broker_url)


def backend_url(app=None) -> str:
    return full_url(_app(app).conf.result_backend)


def broker_is_amqp(app=None) -> bool:
    return broker_kind(broker_url(app)) == AMQP


def _setting(name: str, default):
    from django.conf import settings

    try:
        return getattr(settings, name, default)
    except Exception:  # settings not configured: a library use outside the project
        return default


def state_url(app=None) -> str:
    """Where the apps' Redis state lives (``TASKCORE_STATE_REDIS_URL``).

    Without the setting: the broker's Redis, else the result backend's.
    """
    url = full_url(_setting("TASKCORE_STATE_REDIS_URL", ""))
    if url:
        return url
    broker = broker_url(app)
    return broker if is_redis_url(broker) else backend_url(app)


# --- options ---------------------------------------------------------------------
def pool_options() -> dict:
    """Options of a long-lived client: the spec's pool behaviour, from settings."""
    return {
        "socket_keepalive": True,
        "socket_timeout": float(_setting("REDIS_SOCKET_TIMEOUT", 30.0)),
        "socket_connect_timeout": float(_setting("REDIS_SOCKET_CONNECT_TIMEOUT", 5.0)),
        "health_check_interval": int(_setting("REDIS_HEALTH_CHECK_INTERVAL", 25)),
        # Retried once after a timeout, as the spec asks. Most state writes are
        # idempotent (SET, scripts that check before they write, parked letters
        # stored by task id); an INCR or HINCRBY retried after a timeout may count
        # twice: a dashboard counter one too high, or a redelivery counted twice, so
        # a poison message is parked one delivery early (never later).
        "retry_on_timeout": True,
        "max_connections": int(_setting("REDIS_MAX_CONNECTIONS", 50)),
    }


def probe_options(timeout: float) -> dict:
    """Options of a probe's client: it reports, it does not insist."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }


# --- building clients --------------------------------------------------------------
def connect(
    url, options: dict, *, ssl_options: dict | None = None, sentinel_options: dict | None = None
) -> redis.Redis:
    """A client of the Redis ``url`` names (the primary, behind Sentinel); NotRedis otherwise."""
    url = full_url(url)
    kind = broker_kind(url)
    if kind == SENTINEL:
        return _sentinel_primary(url, options, sentinel_options or {})
    if kind == REDIS or url.startswith("unix://"):
        kwargs = dict(options)
        if url.startswith("rediss://") and ssl_options:
            kwargs.update({k: v for k, v in ssl_options.items() if k.startswith("ssl_")})
        return redis.Redis.from_url(first_url(url), **kwargs)
    raise NotRedis(f"{url.split('://', 1)[0]}:// is not Redis")


def _sentinel_primary(url: str, options: dict, sentinel_options: dict) -> redis.Redis:
    """The primary the Sentinels of ``sentinel://h1:26379;sentinel://h2:26379`` name.

    As kombu's Sentinel transport does: the URL's password and database are the
    primary's; ``master_name`` and ``sentinel_kwargs`` come from the options.
    """
    from redis.sentinel import Sentinel

    url = with_password(url, str(_setting("REDIS_PASSWORD", "") or ""))
    parts = [urlsplit(part.strip()) for part in url.split(";") if part.strip()]
    first = parts[0]
    connect_timeout = options.get("socket_connect_timeout")
    sentinel = Sentinel(
        [(part.hostname, part.port or 26379) for part in parts],
        sentinel_kwargs={
            "socket_timeout": connect_timeout,
            "socket_connect_timeout": connect_timeout,
            **(sentinel_options.get("sentinel_kwargs") or {}),
        },
    )
    return sentinel.master_for(
        sentinel_options.get("master_name") or "mymaster",
        password=unquote(first.password) if first.password else None,
        db=int((first.path or "/0").strip("/") or 0),
        **options,
    )


def _where(role: str, app) -> tuple[str, dict]:
    """The URL of a role's Redis and how to connect to it (ssl, Sentinel options)."""
    app = _app(app)
    conf = app.conf
    if role == BROKER:
        return broker_url(app), {
            "ssl_options": conf.broker_use_ssl or None,
            "sentinel_options": conf.broker_transport_options or {},
        }
    if role == BACKEND:
        return backend_url(app), {
            "ssl_options": conf.redis_backend_use_ssl or None,
            "sentinel_options": conf.result_backend_transport_options or {},
        }
    return state_url(app), {
        # The master's name and the Sentinels' password, as the settings give the broker.
        "sentinel_options": dict(_setting("REDIS_SENTINEL_OPTIONS", {"master_name": "mymaster"}))
    }


_clients: dict[str, tuple[int, redis.Redis]] = {}
_clients_lock = threading.Lock()


def _forget_after_fork() -> None:
    # A child forked while another thread held the lock would wait on it forever;
    # its parent's clients are not its own either.
    global _clients_lock
    _clients_lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _client(role: str, app, timeout: float | None) -> redis.Redis:
    if timeout is not None:
        url, how = _where(role, app)
        return connect(url, probe_options(timeout), **how)
    with _clients_lock:
        pid, client = _clients.get(role, (None, None))
        if pid != os.getpid() or client is None:
            url, how = _where(role, app)
            client = connect(url, pool_options(), **how)
            _clients[role] = (os.getpid(), client)
        return client


def state_redis(app=None, timeout: float | None = None) -> redis.Redis:
    """The Redis of the apps' state: sent marks, counters, samples, heartbeats, locks."""
    return _client(STATE, app, timeout)


def broker_key_prefix(app=None) -> str:
    """The prefix kombu puts before the broker's keys (``global_keyprefix``), or ''."""
    return (_app(app).conf.broker_transport_options or {}).get("global_keyprefix") or ""


def broker_redis(app=None, timeout: float | None = None) -> redis.Redis:
    """The broker's Redis (its primary, behind Sentinel); NotRedis when the broker is RabbitMQ."""
    if broker_is_amqp(app):
        raise NotRedis("the broker is RabbitMQ: its queues are not in Redis")
    return _client(BROKER, app, timeout)


def backend_redis(app=None, timeout: float | None = None) -> redis.Redis:
    """The result backend's Redis."""
    return _client(BACKEND, app, timeout)


def forget_clients() -> None:
    """Drop this process's long-lived clients (after the settings changed, in tests)."""
    with _clients_lock:
        for _, client in _clients.values():
            client.close()
        _clients.clear()
