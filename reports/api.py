"""What other parts of the project may use of reports: the exports under way.

Registered with the platform in ``ReportsConfig.ready()``; no other app imports
this app's internals (import-linter holds it).
"""

from __future__ import annotations


def exports_in_progress(limit: int) -> dict[str, list[dict]]:
    """The dashboard's "exports" section: pending and running exports, oldest first."""
    from .models import ExportRequest

    exports = ExportRequest.objects.filter(
        status__in=(ExportRequest.Status.PENDING, ExportRequest.Status.RUNNING)
    ).order_by("created_at")[:limit]
    return {
        "exports": [
            {
                "id": export.pk,
                "name": str(export),
                "status": export.status,
                "done": export.rows_done,
                "total": export.rows_total,
                "started_at": export.started_at.isoformat() if export.started_at else None,
            }
            for export in exports
        ]
    }
