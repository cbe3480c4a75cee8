"""Health probes run inside a worker: real database and cache round trips."""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import UTC, datetime

from django.core.cache import cache
from django.db import connection


def _timed(check) -> dict:
    started = time.perf_counter()
    try:
        detail = check()
    except Exception as exc:  # a probe reports a failure, it never raises
        return {
            "ok": False,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "error": f"{type(exc).__name__}: {exc}",
        }
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3), **detail}


def check_database() -> dict:
    def query():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return {"vendor": connection.vendor}

    return _timed(query)


def check_cache() -> dict:
    def round_trip():
        key = f"health:{uuid.uuid4().hex}"
        value = uuid.uuid4().hex
        cache.set(key, value, timeout=30)
        read_back = cache.get(key)
        cache.delete(key)
        if read_back != value:
            raise RuntimeError("cache returned a different value than was written")
        return {}

    return _timed(round_trip)


def worker_identity(app, request) -> dict:
    delivery = request.delivery_info or {}
    consumed = sorted(app.amqp.queues.consume_from or app.amqp.queues)
    return {
        "hostname": request.hostname,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pool": app.conf.worker_pool,
        "queue": delivery.get("routing_key"),
        "queues_consumed": consumed,
    }


def health_report(app, request, sent_at: float | None = None) -> dict:
    started = datetime.now(UTC)
    report = {
        "database": check_database(),
        "cache": check_cache(),
        "worker": worker_identity(app, request),
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
    }
    if sent_at is not None:
        report["queue_wait_ms"] = round((started.timestamp() - sent_at) * 1000, 3)
    report["ok"] = report["database"]["ok"] and report["cache"]["ok"]
    return report
