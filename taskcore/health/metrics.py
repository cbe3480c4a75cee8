"""Prometheus metrics: the health report's figures and the task counters, for alerting.

From the health report (read when scraped): queue depth and oldest-message age
per queue (read from Redis, so they count messages no worker has seen yet),
consumers per queue, workers answering, beat heartbeat age, the dead-letter
backlog, outbox backlog, Redis memory and evictions, and every check's status.

From the task counters (written by the workers): per task name and queue, the
runtime histogram and succeeded / failed / retried / dead-lettered totals, and
the largest pool-process memory per queue beside its recycling limit.

Why counters in Redis and not prometheus-client's multiprocess mode: that mode
shares files in one directory, so it counts the processes of one host; our
workers run in several containers and the web process that is scraped runs
none of them. Every worker process adds its batch to one Redis hash
(``HINCRBY``; :func:`add_task_outcomes`, called by the subscriber that also
feeds the dashboard's rates, so both read what one write recorded) and
``/metrics`` reads it with one ``HGETALL``. The totals never expire: they are
counters, and ``rate()``/``increase()`` handle a reset (Redis flushed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .model import HealthReport

PREFIX = "admin_backend"
TASKS_KEY = f"{PREFIX}:metrics:tasks"
MEMORY_KEY = f"{PREFIX}:metrics:memory"
# Tasks here run from milliseconds (mail) to many minutes (exports).
RUNTIME_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
OUTCOMES = ("succeeded", "failed", "retried", "dead_lettered")
# A pool process that ran no task for this long is gone or idle: its memory is not shown.
MEMORY_FRESH_SECONDS = 300
SEPARATOR = "\t"  # not in task or queue names

logger = logging.getLogger(__name__)


def _gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels)


class ReportCollector:
    def __init__(self, report: HealthReport):
        self.report = report

    def collect(self):
        report = self.report
        status = _gauge("health_status", "Check status: 0 ok, 1 warning, 2 critical", ["check"])
        latency = _gauge("health_check_latency_seconds", "Check latency", ["check"])
        for result in report.results:
            status.add_metric([result.name], result.status.severity)
            if result.latency_ms is not None:
                latency.add_metric([result.name], result.latency_ms / 1000)
        overall = _gauge("health_overall_status", "Worst check status: 0 ok, 1 warning, 2 critical")
        overall.add_metric([], report.status.severity)
        yield from (status, latency, overall)

        depth = _gauge("queue_depth", "Messages waiting in the queue (all priorities)", ["queue"])
        age = _gauge(
            "queue_oldest_message_age_seconds",
            "Age of the oldest waiting message (0 when empty)",
            ["queue"],
        )
        consumers = _gauge("queue_consumers", "Workers consuming the queue", ["queue"])
        scheduled = _gauge(
            "queue_scheduled",
            "Delayed messages (countdown, ETA, retry backoff) parked until due (Redis)",
            ["queue"],
        )
        overdue = _gauge(
            "queue_scheduled_overdue_seconds",
            "How long the most overdue delayed message is past due (0 when none)",
            ["queue"],
        )
        # The queue table's thresholds, so alert rules compare with them instead of
        # repeating them (deploy/prometheus/alerts.yml).
        age_limit = _gauge(
            "queue_oldest_message_age_threshold_seconds",
            "Oldest-message age at which the queue's health check warns / fails",
            ["queue", "severity"],
        )
        depth_limit = _gauge(
            "queue_depth_threshold",
            "Queue depth at which the queue's health check warns / fails",
            ["queue", "severity"],
        )
        for result in report.results:
            if not result.name.startswith("queue.") or "depth" not in result.data:
                continue
            queue = result.name.split(".", 1)[1]
            depth.add_metric([queue], result.data["depth"])
            age.add_metric([queue], result.data.get("oldest_age_s") or 0)
            if "scheduled" in result.data:
                scheduled.add_metric([queue], result.data["scheduled"])
                overdue.add_metric([queue], result.data.get("most_overdue_s") or 0)
            if result.data.get("consumers") is not None:
                consumers.add_metric([queue], result.data["consumers"])
            thresholds = result.data.get("thresholds") or {}
            for severity in ("warning", "critical"):
                if thresholds.get(f"age_{severity}_s") is not None:
                    age_limit.add_metric([queue, severity], thresholds[f"age_{severity}_s"])
                if thresholds.get(f"depth_{severity}") is not None:
                    depth_limit.add_metric([queue, severity], thresholds[f"depth_{severity}"])
        yield from (depth, age, consumers, scheduled, overdue, age_limit, depth_limit)

        workers = report.get("workers")
        if workers and "count" in workers.data:
            family = _gauge("workers", "Workers answering the control broadcast")
            family.add_metric([], workers.data["count"])
            yield family
            # Answering but taking no waiting work (taskcore/watchdog.py).
            family = _gauge("workers_stalled", "Workers that answer but make no progress")
            family.add_metric([], len(workers.data.get("stalled") or {}))
            yield family
            if workers.data.get("unacked") is not None:
                family = _gauge("messages_unacked", "Messages taken by workers, not yet acked")
                family.add_metric([], workers.data["unacked"])
                yield family

        beat = report.get("beat")
        # Declared even without a heartbeat (beat never ran): no sample, but the
        # family exists for rules and dashboards (the beat check's status fails then).
        family = _gauge("beat_heartbeat_age_seconds", "Seconds since beat's last heartbeat")
        if beat and beat.data.get("age_s") is not None:
            family.add_metric([], beat.data["age_s"])
        yield family

        dead = report.get("dead_letters")
        if dead and dead.data.get("available"):
            # The backlog falls when letters are replayed; for "how many were created"
            # use increase(admin_backend_tasks_dead_lettered_total[1h]), which does not.
            family = _gauge("dead_letters_backlog", "Dead letters waiting (not replayed)")
            family.add_metric([], dead.data["unreplayed"])
            yield family

        outbox = report.get("outbox")
        if outbox and outbox.data.get("available"):
            family = _gauge("outbox_backlog", "Outbox messages not yet published")
            family.add_metric([], outbox.data["backlog"])
            yield family
            family = _gauge("outbox_oldest_age_seconds", "Age of the oldest unpublished message")
            family.add_metric([], outbox.data.get("oldest_age_s") or 0)
            yield family

        memory = report.get("redis.memory")
        if memory and "used_memory" in memory.data:
            family = _gauge("redis_used_memory_bytes", "Memory used by the broker Redis")
            family.add_metric([], memory.data["used_memory"])
            yield family
            family = _gauge("redis_maxmemory_bytes", "maxmemory of the broker Redis (0: none)")
            family.add_metric([], memory.data["maxmemory"])
            yield family
        server = report.get("redis.server")
        if server and "evicted_keys" in server.data:
            family = CounterMetricFamily(
                f"{PREFIX}_redis_evicted_keys", "Keys evicted by the broker Redis since it started"
            )
            family.add_metric([], server.data["evicted_keys"])
            yield family


# --- task counters -------------------------------------------------------------
def _field(*parts: object) -> str:
    return SEPARATOR.join(str(part) for part in parts)


def _bucket_of(runtime: float) -> str:
    for bound in RUNTIME_BUCKETS:
        if runtime <= bound:
            return str(bound)
    return "+Inf"


def add_task_outcomes(pipe, outcomes: Iterable[tuple[str, str, str, float | None]]) -> None:
    """Queue on ``pipe`` the increments of a batch of (task, queue, outcome, runtime).

    Increments are summed per field first: one HINCRBY per field and batch. A
    runtime goes into the histogram of its task and queue (any outcome: a run
    that failed after a minute took a minute).
    """
    counts: dict[str, int] = {}
    sums: dict[str, float] = {}
    for task, queue, outcome, runtime in outcomes:
        counts[_field(task, queue, outcome)] = counts.get(_field(task, queue, outcome), 0) + 1
        if runtime is not None and runtime >= 0:
            bucket = _field(task, queue, "le", _bucket_of(runtime))
            counts[bucket] = counts.get(bucket, 0) + 1
            count = _field(task, queue, "count")
            counts[count] = counts.get(count, 0) + 1
            total = _field(task, queue, "sum")
            sums[total] = sums.get(total, 0.0) + runtime
    for field, value in counts.items():
        pipe.hincrby(TASKS_KEY, field, value)
    for field, value in sums.items():
        pipe.hincrbyfloat(TASKS_KEY, field, round(value, 6))


def add_pool_memory(pipe, queue: str, process: str, max_rss_bytes: int, now: float) -> None:
    """Record a pool process's peak memory (what Celery's max_memory_per_child compares)."""
    pipe.hset(f"{MEMORY_KEY}:{queue}", process, f"{max_rss_bytes} {now:.0f}")
    pipe.expire(f"{MEMORY_KEY}:{queue}", 3600)


def task_metrics_redis():
    """The Redis the workers count into: the state Redis, with a scrape's short timeout."""
    from taskcore.redis_clients import state_redis

    return state_redis(timeout=2.0)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def outcome_totals(client) -> dict[str, dict[str, int]]:
    """Per queue, the workers' running total of each outcome (summed over task names).

    The dashboard's throughput charts are differences of these: the counters
    /metrics serves, not a second count.
    """
    totals: dict[str, dict[str, int]] = {}
    for field, value in (client.hgetall(TASKS_KEY) or {}).items():
        parts = _text(field).split(SEPARATOR)
        if len(parts) == 3 and parts[2] in OUTCOMES:
            queue = totals.setdefault(parts[1], dict.fromkeys(OUTCOMES, 0))
            queue[parts[2]] += int(value)
    return totals


class TaskCollector:
    """The workers' totals, histograms and pool memory, read from Redis when scraped."""

    def __init__(self, client, queues: Iterable[tuple[str, int | None]], now: float | None = None):
        self.client = client
        self.queues = list(queues)  # (name, max_memory_per_child_kb or None)
        self.now = time.time() if now is None else now

    def collect(self):
        up = _gauge("task_metrics_up", "1 when the workers' task counters could be read")
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.hgetall(TASKS_KEY)
                for name, _ in self.queues:
                    pipe.hgetall(f"{MEMORY_KEY}:{name}")
                replies = pipe.execute()
        except Exception as exc:  # a scrape still shows the health figures
            logger.warning("task counters unreadable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._tasks({_text(k): _text(v) for k, v in (replies[0] or {}).items()})
        yield from self._memory(replies[1:])

    def _tasks(self, fields: dict[str, str]):
        labels = ["task", "queue"]
        outcomes = {
            outcome: CounterMetricFamily(
                f"{PREFIX}_tasks_{outcome}", f"Task runs {outcome.replace('_', ' ')}", labels=labels
            )
            for outcome in OUTCOMES
        }
        histograms: dict[tuple[str, str], dict] = {}
        for field, value in sorted(fields.items()):
            parts = field.split(SEPARATOR)
            if len(parts) == 3 and parts[2] in outcomes:
                outcomes[parts[2]].add_metric(parts[:2], float(value))
            elif len(parts) >= 3:
                entry = histograms.setdefault((parts[0], parts[1]), {"le": {}})
                if parts[2] == "le" and len(parts) == 4:
                    entry["le"][parts[3]] = int(value)
                elif parts[2] in ("sum", "count"):
                    entry[parts[2]] = float(value)
        yield from outcomes.values()
        runtime = HistogramMetricFamily(
            f"{PREFIX}_task_runtime_seconds", "Task run time in the worker", labels=labels
        )
        for (task, queue), entry in sorted(histograms.items()):
            cumulative, buckets = 0, []
            for bound in [*map(str, RUNTIME_BUCKETS), "+Inf"]:
                cumulative += entry["le"].get(bound, 0)
                buckets.append((bound, cumulative))
            runtime.add_metric([task, queue], buckets, entry.get("sum", 0.0))
        yield runtime

    def _memory(self, replies):
        memory = _gauge(
            "worker_pool_memory_max_bytes",
            "Largest peak RSS of a pool process that ran a task of the queue in the last 5 min",
            ["queue"],
        )
        limit = _gauge(
            "worker_pool_memory_limit_bytes",
            "max_memory_per_child of the queue's workers: a process above it is recycled",
            ["queue"],
        )
        for (name, limit_kb), processes in zip(self.queues, replies, strict=True):
            fresh = []
            for value in (processes or {}).values():
                rss, _, at = _text(value).partition(" ")
                if self.now - float(at or 0) <= MEMORY_FRESH_SECONDS:
                    fresh.append(int(rss))
            if fresh:
                memory.add_metric([name], max(fresh))
            if limit_kb:
                limit.add_metric([name], limit_kb * 1024)
        yield from (memory, limit)


def render_metrics(report: HealthReport, task_client=None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReportCollector(report))
    if task_client is not None:
        from taskcore.queues import queue_table

        queues = [(spec.name, spec.max_memory_per_child_kb) for spec in queue_table().specs]
        registry.register(TaskCollector(task_client, queues))
    return generate_latest(registry)
