"""Maintenance queue tasks."""

from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(bind=True, name="maintenance.tasks.health_check_task")
def health_check_task(self, sent_at: float | None = None) -> dict:
    """Report database and cache round trips and this worker's identity.

    Routed to ``maintenance``; send it with ``queue=...`` to probe any queue.
    """
    return services.health_report(self.app, self.request, sent_at=sent_at)
