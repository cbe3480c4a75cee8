"""Live task statistics from Celery events, worker stats and the queues.

``EventStats`` aggregates the events workers publish (received, started,
succeeded, failed, retried, ...) per task name and per queue, with rates over
the last interval and runtimes; ``snapshot()`` adds the active tasks and worker
statistics (one control broadcast each, see ``workers.broadcast``) and the
queue depths and ages read from Redis. ``celery_monitor`` renders it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from taskcore.queues import queue_table

from .workers import broadcast

COUNTED = ("received", "started", "succeeded", "failed", "retried", "rejected", "revoked")
UNKNOWN_TASK = "(received before monitoring began)"


@dataclass
class Counter:
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTED, 0))
    runtimes: deque = field(default_factory=lambda: deque(maxlen=1000))
    waits: deque = field(default_factory=lambda: deque(maxlen=1000))

    def runtime_summary(self) -> dict:
        return _summary(self.runtimes)

    def wait_summary(self) -> dict:
        return _summary(self.waits)


def _summary(values) -> dict:
    values = list(values)
    if not values:
        return {"count": 0, "avg_s": None, "p95_s": None, "max_s": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return {
        "count": len(values),
        "avg_s": round(statistics.fmean(values), 4),
        "p95_s": round(p95, 4),
        "max_s": round(ordered[-1], 4),
    }


class EventStats:
    """Thread-safe aggregate of task events (the receiver thread writes, the display reads)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started_at = time.time()
        self.by_task: dict[str, Counter] = defaultdict(Counter)
        self.by_queue: dict[str, Counter] = defaultdict(Counter)
        self.recent: deque = deque(maxlen=100_000)  # (time, kind, task, queue)
        self.tasks: dict[str, dict] = {}  # uuid -> name, queue, sent/received/started times
        self.workers: dict[str, dict] = {}  # hostname -> last heartbeat fields
        self.events_seen = 0

    def learn(self, task_id: str, name: str, queue: str | None = None) -> None:
        """Name (and queue) of a task seen elsewhere, e.g. in the workers' active list."""
        with self.lock:
            entry = self.tasks.setdefault(task_id, {})
            entry.setdefault("name", name)
            if queue:
                entry.setdefault("queue", queue)

    def on_event(self, event: dict) -> None:
        kind = event.get("type", "")
        with self.lock:
            self.events_seen += 1
            if kind.startswith("worker-"):
                self._on_worker(kind, event)
            elif kind.startswith("task-"):
                self._on_task(kind[5:], event)

    def _on_worker(self, kind: str, event: dict) -> None:
        hostname = event.get("hostname", "?")
        if kind == "worker-offline":
            self.workers.pop(hostname, None)
            return
        self.workers[hostname] = {
            "loadavg": event.get("loadavg"),
            "processed": event.get("processed"),
            "active": event.get("active"),
            "freq": event.get("freq"),
            "last_heartbeat": event.get("timestamp", time.time()),
        }

    def _on_task(self, kind: str, event: dict) -> None:
        task_id = event.get("uuid", "")
        entry = self.tasks.setdefault(task_id, {})
        now = event.get("timestamp") or time.time()
        if event.get("name"):
            entry["name"] = event["name"]
        if event.get("queue") or event.get("routing_key"):
            entry["queue"] = event.get("queue") or event.get("routing_key")
        if kind in ("sent", "received", "started"):
            entry[kind] = now
        if len(self.tasks) > 50_000:  # bound memory in long watches
            for stale in list(self.tasks)[:10_000]:
                self.tasks.pop(stale, None)
        if kind not in COUNTED:
            return
        name = entry.get("name") or UNKNOWN_TASK
        queue = entry.get("queue") or (
            queue_table().queue_for_task(name) if "name" in entry else "?"
        )
        for counter in (self.by_task[name], self.by_queue[queue]):
            counter.totals[kind] += 1
            if kind == "succeeded" and event.get("runtime") is not None:
                counter.runtimes.append(float(event["runtime"]))
            if kind == "started":
                queued_at = entry.get("sent") or entry.get("received")
                if queued_at:
                    counter.waits.append(max(0.0, now - queued_at))
        self.recent.append((time.time(), kind, name, queue))
        if kind in ("succeeded", "failed", "revoked", "rejected"):
            self.tasks.pop(task_id, None)

    def rates(self, window: float) -> tuple[dict, dict]:
        """Events per second over the last ``window`` seconds, per task and per queue."""
        since = time.time() - window
        per_task: dict = defaultdict(lambda: dict.fromkeys(COUNTED, 0.0))
        per_queue: dict = defaultdict(lambda: dict.fromkeys(COUNTED, 0.0))
        with self.lock:
            recent = [item for item in self.recent if item[0] >= since]
        for _, kind, name, queue in recent:
            per_task[name][kind] += 1 / window
            per_queue[queue][kind] += 1 / window
        return per_task, per_queue

    def as_dict(self, window: float) -> dict:
        rates_task, rates_queue = self.rates(window)
        with self.lock:
            tasks = {
                name: {
                    **counter.totals,
                    "rate_per_s": {k: round(v, 3) for k, v in rates_task[name].items() if v},
                    "runtime": counter.runtime_summary(),
                    "wait": counter.wait_summary(),
                }
                for name, counter in sorted(self.by_task.items())
            }
            queues = {
                name: {
                    **counter.totals,
                    "rate_per_s": {k: round(v, 3) for k, v in rates_queue[name].items() if v},
                    "runtime": counter.runtime_summary(),
                    "wait": counter.wait_summary(),
                }
                for name, counter in sorted(self.by_queue.items())
            }
            return {
                "events_seen": self.events_seen,
                "tasks": tasks,
                "queues": queues,
                "heartbeats": dict(self.workers),
            }


class EventListener:
    """Capture events in a daemon thread into an EventStats."""

    def __init__(self, app, stats: EventStats):
        self.app, self.stats = app, stats
        self.ready = threading.Event()
        self.error: Exception | None = None
        self.receiver = None
        self.thread = threading.Thread(target=self._run, name="celery-events", daemon=True)

    def start(self, wait: float = 3.0) -> EventListener:
        self.thread.start()
        self.ready.wait(wait)
        return self

    def _run(self) -> None:
        try:
            with self.app.connection_for_read() as connection:
                self.receiver = self.app.events.Receiver(
                    connection, handlers={"*": self.stats.on_event}
                )
                original = self.receiver.on_consume_ready

                def on_ready(*args, **kwargs):
                    original(*args, **kwargs)  # asks workers for a heartbeat at once
                    self.ready.set()

                self.receiver.on_consume_ready = on_ready
                self.receiver.capture(limit=None, timeout=None, wakeup=True)
        except Exception as exc:
            self.error = exc
            self.ready.set()

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True


def enable_events(app, timeout: float) -> dict[str, list[str]]:
    """Turn task events on where they are off; which workers changed, which already had them."""
    result = broadcast(app, "enable_events", timeout=timeout)
    changed, already, failed = [], [], []
    for worker, reply in sorted(result.replies.items()):
        text = str((reply or {}).get("ok") or (reply or {}).get("error") or "")
        if "already" in text:
            already.append(worker)
        elif "enabled" in text:
            changed.append(worker)
        else:
            failed.append(worker)
    return {"enabled": changed, "already": already, "failed": failed}


def worker_snapshot(app, stats: EventStats, timeout: float) -> tuple[list[dict], list[dict]]:
    """Worker statistics and active tasks, from two control broadcasts."""
    worker_stats = broadcast(app, "stats", timeout=timeout).replies
    active = broadcast(app, "active", timeout=timeout).replies
    now = time.time()
    with stats.lock:
        heartbeats = dict(stats.workers)
    workers = []
    for hostname in sorted(set(worker_stats) | set(active)):
        info = worker_stats.get(hostname) or {}
        pool = info.get("pool") or {}
        beat = heartbeats.get(hostname, {})
        processes, autoscale = _pool_size(info)
        workers.append(
            {
                "worker": hostname,
                # "celery.concurrency.prefork:TaskPool" -> "prefork"
                "pool": str(pool.get("implementation", "?")).split(":")[0].rsplit(".", 1)[-1],
                # An autoscaling pool's ceiling; Celery's max-concurrency stays the
                # size the pool started with (the autoscale min).
                "concurrency": autoscale["max"] if autoscale else pool.get("max-concurrency"),
                "processes": processes,
                "autoscale": autoscale,
                "active": len(active.get(hostname) or []),
                "tasks_done": sum((info.get("total") or {}).values()),
                "loadavg": beat.get("loadavg") or None,
                "max_rss_kb": (info.get("rusage") or {}).get("maxrss"),
                "uptime_s": info.get("uptime"),
                "pid": info.get("pid"),
                "prefetch_count": info.get("prefetch_count"),
            }
        )
    running = []
    for hostname, tasks in sorted(active.items()):
        for task in tasks or []:
            started = task.get("time_start")
            queue = (task.get("delivery_info") or {}).get("routing_key")
            stats.learn(task.get("id", ""), task.get("name", "?"), queue)
            running.append(
                {
                    "worker": hostname,
                    "task": task.get("name"),
                    "id": task.get("id"),
                    "queue": queue,
                    # Arguments stay out: they can hold personal data.
                    "running_s": round(now - started, 3) if started else None,
                }
            )
    return workers, running


def _pool_size(info: dict) -> tuple[int | None, dict | None]:
    """The pool's current process count and, when it autoscales, its max and min.

    ``stats`` has an ``autoscaler`` section only on a worker started with
    ``--autoscale``: its ``current`` is the process count the pool is sized to
    now (a child being shrunk away drops out of it at once, while its pid stays
    in ``pool.processes`` until it has exited); ``qty`` is the messages reserved,
    what the autoscaler sizes the pool by.
    """
    pids = len((info.get("pool") or {}).get("processes") or []) or None
    scaler = info.get("autoscaler")
    if not isinstance(scaler, dict) or scaler.get("max") is None:
        return pids, None
    current = scaler.get("current", pids)
    return current, {
        "max": scaler.get("max"),
        "min": scaler.get("min"),
        "reserved": scaler.get("qty"),
    }


def queue_snapshot(app, timeout: float) -> dict:
    from .context import HealthContext

    snapshot = HealthContext(app, timeout).queues()
    return {
        "queues": {name: depth.as_dict() for name, depth in snapshot.queues.items()},
        "unacked": snapshot.unacked,
    }
