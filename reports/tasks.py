"""Reports queue tasks: thin wrappers over reports.services."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import DatabaseError

from taskcore.base import PermanentError
from taskcore.pipeline import TaskEvent

from . import services

logger = logging.getLogger(__name__)


RUN_EXPORT = "reports.tasks.run_export"


@shared_task(bind=True, name=RUN_EXPORT)
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


def fail_unfinished_export(failed: TaskEvent) -> None:
    """The pipeline's FAILED subscriber for run_export (registered in ``ReportsConfig.ready()``).

    A run_export that failed for good without recording it (killed, retries used
    up); within the run, before its failed result is stored.
    """
    if not failed.args:
        return
    reason = f"stopped: {failed.exception_type}: {failed.exception}"
    try:
        services.fail_unfinished(failed.args[0], failed.task_id, reason)
    except DatabaseError:  # the database may be what failed
        logger.warning("could not mark export %r failed", failed.args[0], exc_info=True)
