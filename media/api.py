"""What other parts of the project may use of media: the uploads under way.

Registered with the platform in ``MediaConfig.ready()``; no other app imports
this app's internals (import-linter holds it).
"""

from __future__ import annotations


def uploads_in_progress(limit: int) -> dict[str, object]:
    """The dashboard's "uploads" section (oldest first) and how many wait in all."""
    from .models import Upload

    busy = Upload.objects.filter(
        status__in=(Upload.Status.PENDING, Upload.Status.PROCESSING)
    ).order_by("created_at")
    return {
        "uploads": [
            {
                "id": upload.pk,
                "name": upload.original_name,
                "status": upload.status,
                "size_bytes": upload.size_bytes,
                "created_at": upload.created_at.isoformat(),
            }
            for upload in busy[:limit]
        ],
        "uploads_waiting": busy.count(),
    }
