"""Rendition previews for the admin, from whatever storage holds them.

Served through Django (staff with the view permission only) so previews work
with any storage backend and with DEBUG off, without exposing MEDIA_ROOT.
"""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_safe

from .models import Rendition

CONTENT_TYPES = {"JPEG": "image/jpeg", "WEBP": "image/webp", "PNG": "image/png"}


@require_safe
@staff_member_required
def rendition(request, key, name):
    if not request.user.has_perm("media.view_upload"):
        raise PermissionDenied
    item = get_object_or_404(Rendition, upload__key=key, name=name)
    try:
        handle = item.file.open("rb")
    except FileNotFoundError:
        raise Http404("rendition file missing from storage") from None
    response = FileResponse(handle, content_type=CONTENT_TYPES.get(item.format, "image/jpeg"))
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, max-age=60"
    response["Content-Security-Policy"] = "default-src 'none'"
    return response
