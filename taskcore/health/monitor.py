"""Live task statistics from Celery events, worker stats and the queues.

``EventStats`` feeds the events workers publish (received, started, succeeded,
failed, retried, ...) to Celery's own ``celery.events.state.State`` (what Flower
keeps: each task's name, routing key and event timestamps, LRU-bounded, and each
worker's heartbeat) and adds what State does not: counts per task name and per
queue since monitoring began, rates over the last interval, and runtime and
queue-wait summaries. ``snapshot()`` adds the active tasks and worker statistics
(one control broadcast each, see ``workers.broadcast``) and the queue depths and
ages read from Redis. ``celery_monitor`` renders it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter, defaultdict, deque

from celery.events.state import State

from taskcore.queues import queue_table

from .workers import broadcast

COUNTED = ("received", "started", "succeeded", "failed", "retried", "rejected", "revoked")
UNKNOWN_TASK = "(received before monitoring began)"


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

    def __init__(self, max_tasks: int = 50_000):
        self.lock = threading.Lock()
        self.state = State(max_tasks_in_memory=max_tasks)
        # Totals since monitoring began: State forgets tasks, these do not.
        self.by_task: dict[str, Counter] = defaultdict(Counter)
        self.by_queue: dict[str, Counter] = defaultdict(Counter)
        self.recent: deque = deque(maxlen=100_000)  # (time, kind, task, queue)

    def learn(self, task_id: str, name: str, queue: str | None = None) -> None:
        """Name (and queue) of a task seen elsewhere, e.g. in the workers' active list."""
        with self.lock:
            task, _ = self.state.get_or_create_task(task_id)
            task.name = task.name or name
            task.routing_key = task.routing_key or queue

    def _labels(self, task) -> tuple[str, str]:
        """The task's name and queue: from its events, else the queue table's route."""
        queue = getattr(task, "queue", None) or task.routing_key
        if not task.name:
            return UNKNOWN_TASK, queue or "?"
        return task.name, queue or queue_table().queue_for_task(task.name)

    def on_event(self, event: dict) -> None:
        with self.lock:
            outcome = self.state.event(event)
            group, _, kind = event.get("type", "").partition("-")
            if group != "task" or kind not in COUNTED or not outcome:
                return
            name, queue = self._labels(outcome[0][0])
            self.by_task[name][kind] += 1
            self.by_queue[queue][kind] += 1
            self.recent.append((time.time(), kind, name, queue))

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
        rates = self.rates(window)
        # Runtimes and queue waits of the tasks the State holds (the latest max_tasks),
        # per task name [0] and per queue [1].
        runtimes: tuple[dict, dict] = (defaultdict(list), defaultdict(list))
        waits: tuple[dict, dict] = (defaultdict(list), defaultdict(list))
        with self.lock:
            for task in self.state.tasks.values():
                queued_at = task.sent or task.received
                for index, label in enumerate(self._labels(task)):
                    if task.runtime is not None:
                        runtimes[index][label].append(float(task.runtime))
                    if task.started and queued_at:
                        waits[index][label].append(max(0.0, task.started - queued_at))
            rows = [
                {
                    name: {
                        **{kind: totals[kind] for kind in COUNTED},
                        "rate_per_s": {k: round(v, 3) for k, v in rates[index][name].items() if v},
                        "runtime": _summary(runtimes[index][name]),
                        "wait": _summary(waits[index][name]),
                    }
                    for name, totals in sorted(counters.items())
                }
                for index, counters in enumerate((self.by_task, self.by_queue))
            ]
            heartbeats = {
                worker.hostname: {
                    "loadavg": worker.loadavg,
                    "processed": worker.processed,
                    "active": worker.active,
                    "freq": worker.freq,
                    "last_heartbeat": worker.heartbeats[-1],
                }
                for worker in self.state.workers.values()
                if worker.heartbeats  # an offline worker's are cleared
            }
            return {
                "events_seen": self.state.event_count,
                "tasks": rows[0],
                "queues": rows[1],
                "heartbeats": heartbeats,
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
        loadavg = {worker.hostname: worker.loadavg for worker in stats.state.workers.values()}
    workers = []
    for hostname in sorted(set(worker_stats) | set(active)):
        info = worker_stats.get(hostname) or {}
        pool = info.get("pool") or {}
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
                "loadavg": loadavg.get(hostname) or None,
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
