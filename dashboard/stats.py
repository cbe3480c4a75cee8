"""Task outcomes and runtimes per queue, counted in the workers, read by the dashboard.

Celery events would give the same figures, but only to a process listening all
the time. Instead each worker process counts, from ``task_postrun``, into
10-second buckets in Redis (``HINCRBY``, ``EXPIRE``, and for successes
``LPUSH``/``LTRIM`` of the runtime into the queue's last 1,000 runtimes),
summed in memory and written in one pipelined round trip per second per process
(``taskcore.batching``), not one per task. The dashboard reads the last minute
of buckets and the runtime lists: a handful of O(1)/O(N<=1000) commands.

``DASHBOARD_TASK_STATS=0`` (setting or environment) turns the counting off.
Counting never fails a task: a Redis error pauses it for 30 s.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time

from celery import signals

from taskcore.batching import FlushingBuffer

PREFIX = "admin_backend:dashboard:"
BUCKET_SECONDS = 10
BUCKET_TTL = 3600
RUNTIMES_KEPT = 1000
OUTCOMES = ("succeeded", "failed", "retried")
_STATE_TO_OUTCOME = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}

logger = logging.getLogger(__name__)
_started: dict[str, float] = {}
_client = {"pid": None, "client": None, "paused_until": 0.0}
_lock = threading.Lock()


def enabled() -> bool:
    from django.conf import settings

    value = getattr(settings, "DASHBOARD_TASK_STATS", os.environ.get("DASHBOARD_TASK_STATS", "1"))
    return str(value).lower() not in ("0", "false", "no", "off")


def bucket_key(bucket: int) -> str:
    return f"{PREFIX}tp:{bucket}"


def runtimes_key(queue: str) -> str:
    return f"{PREFIX}rt:{queue}"


def stats_redis(timeout: float = 2.0):
    """The Redis holding the counters: the broker's, or the result backend's on RabbitMQ.

    One client per process (prefork children must not share the parent's sockets).
    """
    with _lock:
        if _client["pid"] != os.getpid() or _client["client"] is None:
            from admin_backend.celery import app
            from taskcore.health.connections import liveness_redis

            _client.update(pid=os.getpid(), client=liveness_redis(app, timeout))
        return _client["client"]


def _queue_of(task, name: str) -> str:
    delivery = getattr(getattr(task, "request", None), "delivery_info", None) or {}
    queue = delivery.get("routing_key")
    if queue:
        return str(queue)
    from admin_backend.queues import queue_for_task

    return queue_for_task(name)


def record(queue: str, outcome: str, runtime: float | None, now: float | None = None) -> None:
    now = time.time() if now is None else now
    _outcomes.add((int(now // BUCKET_SECONDS), queue, outcome, runtime))


def _write_outcomes(items: list[tuple]) -> None:
    """One pipeline for a batch of outcomes: counts summed per bucket, runtimes in order."""
    if time.monotonic() < _client["paused_until"]:
        return  # Redis failed lately: drop the batch (counters, not work)
    counts: dict[tuple[int, str], int] = {}
    runtimes: dict[str, list[float]] = {}
    for bucket, queue, outcome, runtime in items:
        field = (bucket, f"{queue}|{outcome}")
        counts[field] = counts.get(field, 0) + 1
        if outcome == "succeeded" and runtime is not None:
            runtimes.setdefault(queue, []).append(round(runtime, 6))
    try:
        with stats_redis().pipeline(transaction=False) as pipe:
            for (bucket, field), count in counts.items():
                pipe.hincrby(bucket_key(bucket), field, count)
                pipe.expire(bucket_key(bucket), BUCKET_TTL)
            for queue, values in runtimes.items():
                pipe.lpush(runtimes_key(queue), *values[-RUNTIMES_KEPT:])
                pipe.ltrim(runtimes_key(queue), 0, RUNTIMES_KEPT - 1)
            pipe.execute()
    except Exception as exc:  # counting must never fail a task
        _client["paused_until"] = time.monotonic() + 30
        _client["client"] = None
        logger.warning("dashboard task stats paused for 30s: %s", exc)


_outcomes = FlushingBuffer("dashboard-task-stats", _write_outcomes, max_items=1000)


def on_prerun(task_id=None, **kwargs):
    if task_id:
        _started[task_id] = time.monotonic()


def on_postrun(task_id=None, task=None, state=None, **kwargs):
    began = _started.pop(task_id, None)
    outcome = _STATE_TO_OUTCOME.get(state or "")
    if outcome is None:
        return
    name = getattr(task, "name", "") or ""
    runtime = time.monotonic() - began if began is not None else None
    record(_queue_of(task, name), outcome, runtime)


def connect_signals() -> None:
    if not enabled():
        return
    signals.task_prerun.connect(on_prerun, weak=False, dispatch_uid="dashboard.stats.prerun")
    signals.task_postrun.connect(on_postrun, weak=False, dispatch_uid="dashboard.stats.postrun")


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def read(client, queues, now: float | None = None, window: int = 60) -> dict[str, dict]:
    """Per queue: outcomes per minute over the last ``window`` seconds, runtime p50/p95."""
    now = time.time() if now is None else now
    current = int(now // BUCKET_SECONDS)
    # The current bucket is still filling: the window is the complete buckets before it.
    buckets = [current - offset for offset in range(1, window // BUCKET_SECONDS + 1)]
    with client.pipeline(transaction=False) as pipe:
        for bucket in buckets:
            pipe.hgetall(bucket_key(bucket))
        for queue in queues:
            pipe.lrange(runtimes_key(queue), 0, RUNTIMES_KEPT - 1)
        replies = pipe.execute()
    totals = {queue: dict.fromkeys(OUTCOMES, 0) for queue in queues}
    for counts in replies[: len(buckets)]:
        for field, value in (counts or {}).items():
            field = field.decode() if isinstance(field, bytes) else field
            queue, _, outcome = field.partition("|")
            if queue in totals and outcome in totals[queue]:
                totals[queue][outcome] += int(value)
    per_minute = 60.0 / (len(buckets) * BUCKET_SECONDS)
    result = {}
    for queue, raw in zip(queues, replies[len(buckets) :], strict=True):
        runtimes = sorted(float(value) for value in raw or [])
        result[queue] = {
            **{
                f"{name}_per_min": round(count * per_minute, 2)
                for name, count in totals[queue].items()
            },
            "runtime_p50_s": _round(_percentile(runtimes, 0.50)),
            "runtime_p95_s": _round(_percentile(runtimes, 0.95)),
            "runtime_mean_s": _round(statistics.fmean(runtimes) if runtimes else None),
            "runtimes_counted": len(runtimes),
        }
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
