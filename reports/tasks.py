"""Reports queue tasks: thin wrappers over reports.services."""

from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(bind=True, name="reports.tasks.export_model_csv")
def export_model_csv(self, model_label: str, fields: list[str] | None = None) -> dict:
    """Export a model's rows to CSV under MEDIA_ROOT/exports, named after the task id."""
    return services.export_model_csv(model_label, fields, output_name=self.request.id)
