"""Shared by the reports commands: wait for an export and print the outcome."""

from __future__ import annotations

import time

from django.core.management.base import CommandError

from reports.models import ExportRequest
from reports.services import export_path


def wait_and_report(command, export: ExportRequest, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        export.refresh_from_db()
        state = (export.status, export.rows_done)
        if state != last:
            total = "?" if export.rows_total is None else export.rows_total
            command.stderr.write(f"{export.status}: {export.rows_done}/{total} rows")
            last = state
        if export.status == ExportRequest.Status.READY:
            command.stdout.write(str(export_path(export)))
            return
        if export.status == ExportRequest.Status.FAILED:
            raise CommandError(f"export #{export.pk} failed: {export.error}")
        time.sleep(0.5)
    raise CommandError(
        f"export #{export.pk} not finished after {timeout:.0f}s (status {export.status}); "
        "is a worker consuming the reports queue?"
    )
