"""Tunables of the health checks and beat liveness, with their defaults.

The project's settings define each (admin_backend/settings.py reads them from
the environment); a setting that is absent takes the default below, so the
platform also runs under settings that know nothing of it.
"""

from __future__ import annotations

DEFAULTS: dict[str, float | str] = {
    # Whole-run deadline of celery_health and the HTTP endpoints (seconds).
    "HEALTH_TIMEOUT": 5.0,
    # Longest wait for workers to answer a control broadcast (seconds).
    "HEALTH_BROADCAST_TIMEOUT": 1.5,
    # The HTTP endpoints reuse a report this many seconds (probes come often).
    "HEALTH_HTTP_CACHE_SECONDS": 5.0,
    # When set, /metrics and /health/?detail=1 require "Authorization: Bearer <token>".
    "HEALTH_METRICS_TOKEN": "",
    # Beat: how often the heartbeat is written, how long the lock lives unrenewed,
    # and the heartbeat ages that make the check warn / fail.
    "BEAT_HEARTBEAT_INTERVAL": 5.0,
    "BEAT_LOCK_TTL": 30.0,
    "BEAT_HEARTBEAT_WARNING": 60.0,
    "BEAT_HEARTBEAT_CRITICAL": 300.0,
    # Redis memory use (percent of maxmemory).
    "REDIS_MEMORY_WARNING_PERCENT": 80.0,
    "REDIS_MEMORY_CRITICAL_PERCENT": 95.0,
    # Dead letters created within the last hour that make the check critical.
    "DEAD_LETTERS_CRITICAL_PER_HOUR": 50.0,
    # Outbox: unpublished rows and the age (seconds) of the oldest one.
    "OUTBOX_BACKLOG_WARNING": 100.0,
    "OUTBOX_BACKLOG_CRITICAL": 1000.0,
    "OUTBOX_AGE_WARNING": 60.0,
    "OUTBOX_AGE_CRITICAL": 300.0,
    # Flower's health URL; empty or "off" skips the check.
    "FLOWER_URL": "http://127.0.0.1:5555/healthcheck",
}


def _raw(name: str):
    from django.conf import settings

    return getattr(settings, name, DEFAULTS[name])


def number(name: str) -> float:
    value = _raw(name)
    try:
        return float(value)
    except (TypeError, ValueError):
        return float(DEFAULTS[name])


def text(name: str) -> str:
    # An empty value is a value here: FLOWER_URL= turns the Flower check off.
    return str(_raw(name) or "")
