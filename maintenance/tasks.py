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


@shared_task(name="maintenance.tasks.run_cleanup")
def run_cleanup(name: str) -> dict:
    """Run one cleanup of maintenance.cleanups by name; returns what it removed."""
    from . import cleanups

    return cleanups.run_cleanup(str(name)).as_dict()
