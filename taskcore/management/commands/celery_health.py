"""``python manage.py celery_health``: is the task system healthy, and if not, what to do.

Exit code 0 healthy, 1 warning, 2 critical, so Docker healthchecks and
orchestrators can use it as is (``celery_health --only beat`` for beat's
container, ``--only workers,queues`` for a worker's).
"""

from __future__ import annotations

import sys
import time

from django.core.management.base import BaseCommand, CommandError
from rich.console import Console
from rich.live import Live

from taskcore.health import conf
from taskcore.health.render import print_table, render_json, render_summary, table
from taskcore.health.runner import run_health, unknown_names
from taskcore.secrets import mask_text


class Command(BaseCommand):
    help = (
        "Check the task system: broker, result backend, database, cache, workers and the "
        "queues each consumes, queue depth and oldest-message age, Redis safety, the Celery "
        "configuration, beat, dead letters, outbox and Flower. Exit code 0 ok, 1 warning, "
        "2 critical."
    )
    # Our own `config` check reports an unsafe configuration; Django's system checks
    # would instead refuse to run the command at all.
    requires_system_checks: list = []

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=("table", "json", "summary"), default="table")
        parser.add_argument("--watch", action="store_true", help="repeat until interrupted")
        parser.add_argument(
            "--interval",
            type=float,
            default=5.0,
            help="seconds between runs with --watch (default 5)",
        )
        parser.add_argument(
            "--test-tasks",
            action="store_true",
            help="send health_check_task to every queue and time the answer",
        )
        parser.add_argument(
            "--check-redis",
            action="store_true",
            help="detailed Redis diagnostics: memory, clients, keyspace, uptime, evictions",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="seconds the whole run may take (default "
            f"{conf.DEFAULTS['HEALTH_TIMEOUT']:g}, HEALTH_TIMEOUT)",
        )
        parser.add_argument(
            "--only",
            default="",
            help="comma-separated checks or prefixes, e.g. beat or workers,queue.media",
        )

    def handle(self, *args, **options):
        only = [word for word in options["only"].split(",") if word.strip()]
        unknown = unknown_names(only)
        if unknown:
            raise CommandError(f"unknown checks: {', '.join(unknown)}", returncode=2)
        if options["interval"] <= 0:
            raise CommandError("--interval must be positive", returncode=2)
        if options["timeout"] is not None and options["timeout"] <= 0:
            raise CommandError("--timeout must be positive", returncode=2)
        groups = ["core"]
        if options["check_redis"]:
            groups.append("redis")
        if options["test_tasks"]:
            groups.append("tasks")
        self.run_options = {
            "groups": tuple(groups),
            "only": only or None,
            "timeout": options["timeout"],
        }
        self.last_code = 0
        stream = self.stdout._out  # rich writes partial lines; Django's wrapper would add newlines
        self.console = Console(
            file=stream, width=None if stream.isatty() else 160, highlight=False, soft_wrap=False
        )
        try:
            if options["watch"]:
                code = self.watch(options["format"], options["interval"])
            else:
                code = self.emit(self.check(), options["format"])
        except KeyboardInterrupt:  # the end of --watch: the last report's status
            code = self.last_code
        except CommandError:
            raise
        except Exception as exc:  # a broken run says so in one line, never a traceback
            self.stderr.write(mask_text(f"celery_health failed: {type(exc).__name__}: {exc}"))
            code = 2
        stream.flush()
        sys.exit(code)

    def check(self):
        return run_health(**self.run_options)

    def emit(self, report, output_format: str, *, compact: bool = False) -> int:
        if output_format == "json":
            self.console.file.write(render_json(report, indent=None if compact else 2) + "\n")
        elif output_format == "summary":
            line = render_summary(report)
            if compact:
                line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}"
            self.console.file.write(line + "\n")
        else:
            print_table(report, self.console)
        self.console.file.flush()
        return report.exit_code

    def watch(self, output_format: str, interval: float) -> int:
        if output_format == "table" and self.console.is_terminal:
            with Live(console=self.console, auto_refresh=False) as live:
                while True:
                    report = self.check()
                    self.last_code = report.exit_code
                    live.update(table(report), refresh=True)
                    time.sleep(interval)
        while True:
            report = self.check()
            # One JSON object / summary line per run: easy to pipe, grep and tail.
            self.last_code = self.emit(report, output_format, compact=True)
            time.sleep(interval)
