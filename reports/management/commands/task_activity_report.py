"""The task-activity report (per queue and task) as CSV or XLSX, made on the reports queue.

manage.py task_activity_report --user alice --days 7 --format xlsx --wait
manage.py task_activity_report --user alice --since 2025-01-01 --until 2025-02-01
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from reports import services
from reports.exportable import ExportError

from ._waiting import wait_and_report
from .export_model import find_user


def parse_moment(text: str, option: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{option} {text!r} is not an ISO date or date-time") from None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


class Command(BaseCommand):
    help = "Request the task-activity report: runs, failures, retries, runtimes per queue and task."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="requester (view on task runs)")
        parser.add_argument("--format", default="csv", choices=["csv", "xlsx"])
        parser.add_argument("--days", type=float, default=7, help="period: the last N days")
        parser.add_argument("--since", help="period start (ISO); overrides --days")
        parser.add_argument("--until", help="period end, excluded (default: now)")
        parser.add_argument("--base-url", default="", help="scheme and host for the emailed link")
        parser.add_argument("--wait", action="store_true", help="wait and print the file's path")
        parser.add_argument("--timeout", type=float, default=1800)

    def handle(self, *args, **options):
        user = find_user(options["user"])
        until = parse_moment(options["until"], "--until") if options["until"] else timezone.now()
        if options["since"]:
            since = parse_moment(options["since"], "--since")
        else:
            since = until - timedelta(days=options["days"])
        try:
            with transaction.atomic():
                export = services.create_task_activity_report(
                    user=user,
                    since=since,
                    until=until,
                    fmt=options["format"],
                    link_base=options["base_url"],
                )
        except ExportError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"task-activity report #{export.pk} queued ({since} to {until})")
        if options["wait"]:
            wait_and_report(self, export, options["timeout"])
