"""The unsubscribe page linked from every campaign email (and its List-Unsubscribe header)."""

from __future__ import annotations

from django.core import signing
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from . import services


# Mail clients POST "List-Unsubscribe=One-Click" (RFC 8058) without a browser
# session, so there is no CSRF token; the signed token is the authorisation.
@csrf_exempt
@require_http_methods(["GET", "POST"])
def unsubscribe(request, token: str):
    try:
        email = services.email_for_unsubscribe_token(token)
    except signing.BadSignature:
        return render(request, "notifications/unsubscribe.html", {"invalid": True}, status=400)
    if request.method == "POST":
        services.unsubscribe(token)
        return render(request, "notifications/unsubscribe.html", {"done": True, "email": email})
    # GET only asks: link checkers and mail scanners open links without a person.
    return render(request, "notifications/unsubscribe.html", {"email": email})
