"""Task outcomes and runtimes per queue, counted in the workers, read by the dashboard.

Celery events would give the same figures, but only to a process listening all
the time. Instead each worker process counts, from the task pipeline's
``FINISHED`` event (taskcore.pipeline; subscribed in ``DashboardConfig.ready()``), into
10-second buckets in Redis (``HINCRBY``, ``EXPIRE``, and for successes
``LPUSH``/``LTRIM`` of the runtime into the queue's last 1,000 runtimes),
summed in memory and written in one pipelined round trip per second per process
(``taskcore.batching``), not one per task. The dashboard reads the last minute
of buckets and the runtime lists: a handful of O(1)/O(N<=1000) commands.

The same batch also adds to the Prometheus totals and runtime histograms per
task and queue (``taskcore.health.metrics.add_task_outcomes``): one subscriber,
one write, so the dashboard and ``/metrics`` never disagree on what ran. The
``FAILED`` event (a task failed for good: a dead letter is kept) counts as
``dead_lettered``; after each task the pool process's peak memory is recorded
for the worker-memory alert.

The ``DASHBOARD_TASK_STATS`` setting (False) turns the counting off.
Counting never fails a task: a Redis error pauses it for 30 s.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import statistics
import time

from taskcore.batching import FlushingBuffer
from taskcore.health import metrics
from taskcore.pipeline import TaskEvent
from taskcore.redis_clients import state_redis

PREFIX = "admin_backend:dashboard:"
BUCKET_SECONDS = 10
BUCKET_TTL = 3600
RUNTIMES_KEPT = 1000
OUTCOMES = ("succeeded", "failed", "retried")
_STATE_TO_OUTCOME = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}

logger = logging.getLogger(__name__)
_counting = {"paused_until": 0.0}


def enabled() -> bool:
    from django.conf import settings

    return bool(getattr(settings, "DASHBOARD_TASK_STATS", True))


def bucket_key(bucket: int) -> str:
    return f"{PREFIX}tp:{bucket}"


def runtimes_key(queue: str) -> str:
    return f"{PREFIX}rt:{queue}"


def stats_redis(timeout: float | None = None):
    """The Redis holding the counters and samples: the state Redis (taskcore.redis_clients)."""
    return state_redis(timeout=timeout)


def record(
    queue: str, outcome: str, runtime: float | None, now: float | None = None, task: str = ""
) -> None:
    now = time.time() if now is None else now
    _outcomes.add((int(now // BUCKET_SECONDS), queue, outcome, runtime, task))


def _peak_memory_bytes() -> int:
    # ru_maxrss (KiB on Linux) is what Celery compares with max_memory_per_child.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _write_outcomes(items: list[tuple]) -> None:
    """One pipeline for a batch of outcomes: counts summed per bucket, runtimes in order."""
    if time.monotonic() < _counting["paused_until"]:
        return  # Redis failed lately: drop the batch (counters, not work)
    counts: dict[tuple[int, str], int] = {}
    runtimes: dict[str, list[float]] = {}
    ran_queues = set()
    for bucket, queue, outcome, runtime, _task in items:
        if outcome != "dead_lettered":
            ran_queues.add(queue)
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
            batch = [(task, queue, outcome, runtime) for _, queue, outcome, runtime, task in items]
            metrics.add_task_outcomes(pipe, batch)
            process, now = f"{socket.gethostname()}:{os.getpid()}", time.time()
            for queue in ran_queues:
                metrics.add_pool_memory(pipe, queue, process, _peak_memory_bytes(), now)
            pipe.execute()
    except Exception as exc:  # counting must never fail a task
        _counting["paused_until"] = time.monotonic() + 30
        logger.warning("dashboard task stats paused for 30s: %s", exc)


_outcomes = FlushingBuffer("dashboard-task-stats", _write_outcomes, max_items=1000)


def on_task_finished(run: TaskEvent) -> None:
    """The pipeline's FINISHED subscriber: count the outcome, keep a success's runtime."""
    outcome = _STATE_TO_OUTCOME.get(run.state)
    if outcome is not None:
        record(run.queue, outcome, run.runtime, task=run.name)


def on_task_failed(failed: TaskEvent) -> None:
    """The pipeline's FAILED subscriber: a task failed for good, its dead letter is kept."""
    record(failed.queue, "dead_lettered", None, task=failed.name)


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
