"""Reports queue tasks: thin wrappers over reports.services."""

from __future__ import annotations

import logging

from celery import shared_task, signals
from django.db import DatabaseError

from taskcore.base import PermanentError

from . import services

logger = logging.getLogger(__name__)


@shared_task(bind=True, name="reports.tasks.run_export")
def run_export(self, export_id: int) -> dict:
    """Produce the file of an ``ExportRequest``; progress goes to the record and task state.

    The task state is ``PROGRESS`` with ``{"export_id", "rows_done", "rows_total",
    "percent"}`` while rows are written.
    """
    try:
        export_id = int(export_id)
    except (TypeError, ValueError):
        raise PermanentError(f"export_id must be an integer, got {export_id!r}") from None

    def progress(done: int, total: int | None) -> None:
        if self.request.id and not self.request.called_directly:
            percent = min(100, int(done * 100 / total)) if total else (100 if done else 0)
            self.update_state(
                state="PROGRESS",
                meta={
                    "export_id": export_id,
                    "rows_done": done,
                    "rows_total": total,
                    "percent": percent,
                },
            )

    return services.run_export(export_id, task_id=self.request.id, progress=progress)


@shared_task(bind=True, name="reports.tasks.export_model_csv")
def export_model_csv(self, model_label: str, fields: list[str] | None = None) -> dict:
    """System export (no requesting user) of a model to CSV; returns its path and row count."""
    if fields is not None and not isinstance(fields, list):
        raise PermanentError(f"fields must be a list of field names, got {fields!r}")
    return services.export_model_csv(model_label, fields, task_id=self.request.id)


@signals.task_failure.connect(dispatch_uid="reports.tasks.fail_unfinished_export")
def fail_unfinished_export(sender=None, task_id=None, exception=None, args=None, **kwargs):
    """A run_export that failed for good without recording it (killed, retries used up)."""
    if getattr(sender, "name", None) != run_export.name or not args:
        return
    reason = f"stopped: {type(exception).__name__}: {exception}"
    try:
        services.fail_unfinished(args[0], task_id, reason)
    except DatabaseError:  # the database may be what failed
        logger.warning("could not mark export %r failed", args[0], exc_info=True)
