"""``python manage.py celery_monitor``: what the workers are doing, live.

Task events per task and per queue (received, started, succeeded, failed,
retried; rates over the interval; runtimes and queue waits), the tasks running
now, worker statistics (pool, processes and autoscale range, tasks done, load,
memory) and queue depths with the age of their oldest message. One snapshot by
default (events collected for --interval seconds), ``--watch`` to keep
refreshing.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime

from celery import current_app as app
from django.core.management.base import BaseCommand, CommandError
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from taskcore.health.checks import human_age
from taskcore.health.monitor import (
    EventListener,
    EventStats,
    enable_events,
    queue_snapshot,
    worker_snapshot,
)
from taskcore.health.workers import worker_census
from taskcore.queues import queue_table
from taskcore.redis_clients import broker_url
from taskcore.secrets import mask_text


def _count(value) -> str:
    return "?" if value is None else str(value)


def _seconds(value) -> str:
    return "-" if value is None else (f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s")


def _processes(worker: dict) -> str:
    """``3`` for a fixed pool, ``3 (autoscale 2-8)`` for one that grows and shrinks."""
    count = _count(worker.get("processes"))
    scale = worker.get("autoscale")
    return f"{count} (autoscale {scale['min']}-{scale['max']})" if scale else count


class Command(BaseCommand):
    help = (
        "Monitor Celery: task events per task and queue (counts, rates, runtimes), active "
        "tasks, worker statistics and queue depths. One snapshot by default; --watch to refresh."
    )
    requires_system_checks: list = []

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=("table", "json"), default="table")
        parser.add_argument("--watch", action="store_true", help="refresh until interrupted")
        parser.add_argument(
            "--interval",
            type=float,
            default=3.0,
            help="seconds of events per snapshot / between refreshes (default 3)",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=1.5,
            help="seconds to wait for workers to answer (default 1.5)",
        )
        parser.add_argument(
            "--no-enable-events",
            action="store_true",
            help="do not turn task events on where workers have them off",
        )

    def handle(self, *args, **options):
        if options["interval"] <= 0 or options["timeout"] <= 0:
            raise CommandError("--interval and --timeout must be positive")
        self.timeout = options["timeout"]
        self.interval = options["interval"]
        # kombu announces every connection at INFO; the report says what matters.
        logging.getLogger("kombu").setLevel(logging.WARNING)
        stream = self.stdout._out
        self.console = Console(file=stream, width=None if stream.isatty() else 160, highlight=False)
        try:
            code = self.run(options)
        except KeyboardInterrupt:
            code = 0
        except Exception as exc:  # one clear line, never a traceback
            self.stderr.write(mask_text(f"celery_monitor failed: {type(exc).__name__}: {exc}"))
            code = 2
        stream.flush()
        sys.exit(code)

    def run(self, options) -> int:
        stats = EventStats()
        self.notices: list[str] = []
        try:
            worker_census(app, self.timeout)  # fail fast, with the broker's error
        except Exception as exc:
            raise RuntimeError(
                f"cannot reach the broker at {mask_text(broker_url(app))}: {exc}"
            ) from None
        if not options["no_enable_events"]:
            self.enable(initial=True)
        listener = EventListener(app, stats).start()
        if listener.error:
            self.notices.append(f"cannot listen to events: {listener.error}")
        output_format = options["format"]
        if not options["watch"]:
            time.sleep(self.interval)
            self.emit(self.snapshot(stats, self.interval), output_format)
            listener.stop()
            return 0
        if output_format == "table" and self.console.is_terminal:
            with Live(console=self.console, auto_refresh=False) as live:
                while True:
                    time.sleep(self.interval)
                    live.update(self.render(self.snapshot(stats, self.interval)), refresh=True)
                    if not options["no_enable_events"]:
                        self.enable()  # workers started since then
        while True:
            time.sleep(self.interval)
            self.emit(self.snapshot(stats, self.interval), output_format, compact=True)
            if not options["no_enable_events"]:
                self.enable()

    def enable(self, initial: bool = False) -> None:
        result = enable_events(app, self.timeout)
        if result["enabled"]:
            self.notices.append(
                f"task events were off on {', '.join(result['enabled'])}: enabled them (they "
                "stay on; `celery -A admin_backend control disable_events` turns them off)"
            )
        elif initial and result["already"]:
            self.notices.append(f"task events on for {len(result['already'])} workers")
        if result["failed"]:
            self.notices.append(f"could not enable events on {', '.join(result['failed'])}")

    def snapshot(self, stats: EventStats, window: float) -> dict:
        workers, active = worker_snapshot(app, stats, self.timeout)
        queues = queue_snapshot(app, self.timeout)
        census_by_queue = {name: 0 for name in queue_table().names}
        try:
            census = worker_census(app, self.timeout)
            for name, holders in census.consumers.items():
                census_by_queue[name] = len(holders)
        except Exception as exc:
            self.notices.append(f"worker census failed: {exc}")
        for name, info in queues["queues"].items():
            info["consumers"] = census_by_queue.get(name, 0)
        events = stats.as_dict(window)
        for name, info in queues["queues"].items():
            seen = events["queues"].get(name, {})
            info["wait"] = (seen.get("wait") or {}).get("avg_s")
        notices, self.notices = self.notices, []
        return {
            "generated_at": datetime.now(UTC).isoformat(),
            "broker": mask_text(broker_url(app)),
            "window_s": window,
            "notices": notices,
            "events": events,
            "workers": workers,
            "active": active,
            "queues": queues["queues"],
            "unacked": queues["unacked"],
        }

    def emit(self, snapshot: dict, output_format: str, compact: bool = False) -> None:
        if output_format == "json":
            text = json.dumps(snapshot, indent=None if compact else 2, default=str)
            self.console.file.write(mask_text(text) + "\n")
        else:
            self.console.print(self.render(snapshot))
        self.console.file.flush()

    def render(self, snapshot: dict) -> Group:
        parts = [
            Text.assemble(
                ("Celery monitor", "bold"),
                f"  broker {snapshot['broker']}; events over the last {snapshot['window_s']:g}s "
                f"({snapshot['events']['events_seen']} seen since start); "
                f"{_count(snapshot['unacked'])} messages in flight; "
                f"{snapshot['generated_at'][:19]}Z",
            )
        ]
        parts += [Text(f"note: {notice}", style="yellow") for notice in snapshot["notices"]]

        tasks = Table(title="Tasks", box=box.SIMPLE_HEAVY, title_justify="left")
        for column in (
            "task",
            "received",
            "started",
            "succeeded",
            "failed",
            "retried",
            "done/s",
            "avg runtime",
            "p95",
            "max",
            "avg wait",
        ):
            tasks.add_column(column, justify="left" if column == "task" else "right")
        for name, row in snapshot["events"]["tasks"].items():
            tasks.add_row(
                name,
                str(row["received"]),
                str(row["started"]),
                str(row["succeeded"]),
                Text(str(row["failed"]), "red" if row["failed"] else ""),
                Text(str(row["retried"]), "yellow" if row["retried"] else ""),
                f"{row['rate_per_s'].get('succeeded', 0):.2f}",
                _seconds(row["runtime"]["avg_s"]),
                _seconds(row["runtime"]["p95_s"]),
                _seconds(row["runtime"]["max_s"]),
                _seconds(row["wait"]["avg_s"]),
            )
        if not snapshot["events"]["tasks"]:
            tasks.add_row("(no task events in this window)", *[""] * 10)

        queues = Table(title="Queues", box=box.SIMPLE_HEAVY, title_justify="left")
        for column in (
            "queue",
            "depth",
            "oldest",
            "consumers",
            "received",
            "succeeded",
            "failed",
            "retried",
            "done/s",
            "avg runtime",
            "avg wait",
        ):
            queues.add_column(column, justify="left" if column == "queue" else "right")
        seen = snapshot["events"]["queues"]
        for name, info in snapshot["queues"].items():
            row = seen.get(name) or {}
            consumers = info["consumers"]
            queues.add_row(
                name,
                str(info["depth"]),
                human_age(info["oldest_age_s"]),
                Text(str(consumers), "bold red" if not consumers and info["depth"] else ""),
                str(row.get("received", 0)),
                str(row.get("succeeded", 0)),
                str(row.get("failed", 0)),
                str(row.get("retried", 0)),
                f"{(row.get('rate_per_s') or {}).get('succeeded', 0):.2f}",
                _seconds((row.get("runtime") or {}).get("avg_s")),
                _seconds(info["wait"]),
            )

        active = Table(title="Active tasks", box=box.SIMPLE_HEAVY, title_justify="left")
        for column in ("worker", "task", "id", "queue", "running for"):
            active.add_column(column)
        for task in snapshot["active"]:
            active.add_row(
                task["worker"],
                task["task"] or "?",
                task["id"] or "?",
                task["queue"] or "?",
                human_age(task["running_s"]),
            )
        if not snapshot["active"]:
            active.add_row("(none)", "", "", "", "")

        workers = Table(title="Workers", box=box.SIMPLE_HEAVY, title_justify="left")
        for column in (
            "worker",
            "pool",
            "concurrency",
            "processes",
            "active",
            "tasks done",
            "load",
            "max RSS",
            "uptime",
        ):
            workers.add_column(column, justify="left" if column in ("worker", "pool") else "right")
        for worker in snapshot["workers"]:
            load = worker["loadavg"]
            workers.add_row(
                worker["worker"],
                worker["pool"],
                str(worker["concurrency"] or "-"),
                _processes(worker),
                str(worker["active"]),
                str(worker["tasks_done"]),
                " ".join(f"{value:.2f}" for value in load) if load else "-",
                f"{worker['max_rss_kb'] / 1024:.0f} MiB" if worker["max_rss_kb"] else "-",
                human_age(worker["uptime_s"]),
            )
        if not snapshot["workers"]:
            workers.add_row(Text("(no worker answers)", "bold red"), *[""] * 8)
        return Group(*parts, tasks, queues, active, workers)
