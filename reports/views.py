"""Downloads and progress of exports: only for the requester or a superuser.

Export files live outside MEDIA_ROOT and are never served by URL directly;
this view checks who asks on every download.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .exportable import ExportError, can_export, resolve_model
from .models import ExportRequest
from .services import export_path

ADMIN_LOGIN = reverse_lazy("admin:login")
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


def _export_for(request, pk: int) -> ExportRequest:
    """The request if this user may see it; 404 otherwise (no hint that it exists)."""
    export = get_object_or_404(ExportRequest.objects.select_related("requested_by"), pk=pk)
    user = request.user
    if not (user.is_superuser or (export.requested_by_id and export.requested_by_id == user.pk)):
        raise Http404("No such export.")
    return export


def _may_still_view_data(user, export: ExportRequest) -> bool:
    if user.is_superuser:
        return True
    try:
        model = resolve_model(export.model_label)
    except ExportError:
        return False
    return can_export(user, model)


@require_GET
@never_cache
@login_required(login_url=ADMIN_LOGIN)
def download(request, pk: int):
    export = _export_for(request, pk)
    if not _may_still_view_data(request.user, export):
        raise Http404("No such export.")
    if export.status == ExportRequest.Status.EXPIRED or (
        export.expires_at and export.expires_at <= timezone.now()
    ):
        return HttpResponse("This export has expired; request it again.", status=410)
    path = export_path(export)
    if export.status != ExportRequest.Status.READY or path is None or not path.exists():
        return HttpResponse(f"This export is not ready (status: {export.status}).", status=409)
    response = FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=export.download_name,
        content_type=CONTENT_TYPES[export.format],
    )
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@require_GET
@never_cache
@login_required(login_url=ADMIN_LOGIN)
def progress(request, pk: int):
    export = _export_for(request, pk)
    ready = export.status == ExportRequest.Status.READY
    return JsonResponse(
        {
            "id": export.pk,
            "status": export.status,
            "rows_done": export.rows_done,
            "rows_total": export.rows_total,
            "percent": export.percent,
            "error": export.error,
            "download_url": reverse("reports:download", args=[export.pk]) if ready else None,
        }
    )
