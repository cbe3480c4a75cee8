"""The operations dashboard: a thin page over a JSON endpoint, and audited actions.

Every view is wrapped in ``admin.site.admin_view`` (staff login) by urls.py and
checks the dashboard permission itself; actions need their own permission on
top (workers: ``dashboard.control_workers``; replay: ``taskcore.replay_deadletter``),
an explicit ``confirm`` and leave an ``OperatorAction`` row.
"""

from __future__ import annotations

import json

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.template.response import TemplateResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from taskcore.queues import queue_table

from . import services
from .models import OperatorAction

VIEW_PERMISSION = "dashboard.view_operations_dashboard"
CONTROL_PERMISSION = "dashboard.control_workers"
REPLAY_PERMISSION = "taskcore.replay_deadletter"
POLL_SECONDS = 3


def _require(request, permission: str) -> None:
    if not request.user.has_perm(permission):
        raise PermissionDenied(f"needs the permission {permission}")


@never_cache
@require_GET
def page(request):
    _require(request, VIEW_PERMISSION)
    context = {
        **admin.site.each_context(request),
        "title": "Operations dashboard",
        "queue_names": queue_table().names,
        "poll_seconds": float(request.GET.get("poll") or POLL_SECONDS),
        "can_control": request.user.has_perm(CONTROL_PERMISSION),
        "can_replay": request.user.has_perm(REPLAY_PERMISSION),
    }
    return TemplateResponse(request, "dashboard/page.html", context)


@never_cache
@require_GET
def data(request):
    _require(request, VIEW_PERMISSION)
    range_name = request.GET.get("range", "hour")
    with_series = request.GET.get("series", "1") != "0"
    return JsonResponse(services.snapshot(range_name=range_name, with_series=with_series))


def _body(request) -> dict:
    if request.content_type == "application/json":
        try:
            return json.loads(request.body or b"{}")
        except ValueError:
            return {}
    return request.POST.dict()


def _confirmed(body: dict) -> bool:
    return str(body.get("confirm", "")).lower() in ("1", "true", "yes")


def _answer(action: OperatorAction) -> JsonResponse:
    return JsonResponse(
        {
            "ok": action.succeeded,
            "action": action.action,
            "target": action.target,
            "outcome": action.outcome,
            "audit_id": action.pk,
        },
        status=200 if action.succeeded else 502,
    )


@never_cache
@require_POST
def worker_action(request):
    _require(request, VIEW_PERMISSION)
    _require(request, CONTROL_PERMISSION)
    body = _body(request)
    if not _confirmed(body):
        return JsonResponse({"ok": False, "outcome": "not confirmed: nothing was sent"}, status=400)
    try:
        action = services.control_worker(
            request.user, body.get("action", ""), body.get("worker", ""), body.get("queue", "")
        )
    except services.ActionError as exc:
        return JsonResponse({"ok": False, "outcome": str(exc)}, status=400)
    return _answer(action)


@never_cache
@require_POST
def replay(request):
    _require(request, VIEW_PERMISSION)
    _require(request, REPLAY_PERMISSION)
    body = _body(request)
    if not _confirmed(body):
        return JsonResponse({"ok": False, "outcome": "not confirmed: nothing was sent"}, status=400)
    action = services.replay_group(
        request.user, body.get("task_name", ""), body.get("exception_type", "")
    )
    return _answer(action)
