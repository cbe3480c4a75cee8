"""Prometheus metrics from a health report: what Flower's own metrics lack.

Queue depth and oldest-message age per queue (read from Redis, so they count
messages no worker has seen yet), consumers per queue, workers answering, beat
heartbeat age, dead letters, outbox backlog, Redis memory, and every check's
status. Flower's /metrics (task events, runtimes) stays available beside it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .model import HealthReport

PREFIX = "admin_backend"


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
        for result in report.results:
            if not result.name.startswith("queue.") or "depth" not in result.data:
                continue
            queue = result.name.split(".", 1)[1]
            depth.add_metric([queue], result.data["depth"])
            age.add_metric([queue], result.data.get("oldest_age_s") or 0)
            if result.data.get("consumers") is not None:
                consumers.add_metric([queue], result.data["consumers"])
        yield from (depth, age, consumers)

        workers = report.get("workers")
        if workers and "count" in workers.data:
            family = _gauge("workers", "Workers answering the control broadcast")
            family.add_metric([], workers.data["count"])
            yield family
            if workers.data.get("unacked") is not None:
                family = _gauge("messages_unacked", "Messages taken by workers, not yet acked")
                family.add_metric([], workers.data["unacked"])
                yield family

        beat = report.get("beat")
        if beat and beat.data.get("age_s") is not None:
            family = _gauge("beat_heartbeat_age_seconds", "Seconds since beat's last heartbeat")
            family.add_metric([], beat.data["age_s"])
            yield family

        dead = report.get("dead_letters")
        if dead and dead.data.get("available"):
            family = _gauge("dead_letters", "Dead letters not replayed")
            family.add_metric([], dead.data["unreplayed"])
            yield family
            if dead.data.get("last_hour") is not None:
                family = _gauge("dead_letters_last_hour", "Dead letters created in the last hour")
                family.add_metric([], dead.data["last_hour"])
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
            family = _gauge("redis_evicted_keys", "Keys evicted by the broker Redis since start")
            family.add_metric([], server.data["evicted_keys"])
            yield family


def render_metrics(report: HealthReport) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReportCollector(report))
    return generate_latest(registry)
