"""HTTP health endpoints and Prometheus metrics, for orchestrators and monitoring.

- ``/health/live``: the process answers; touches no dependency (liveness probe).
- ``/health/ready``: this web process can serve: database, cache, broker (readiness
  probe). A backlog in a queue must not take the web servers out of rotation.
- ``/health/``: the whole task system (the checks of ``celery_health``), status and
  latency per check; details (hosts, workers, PIDs, messages, remedies) only with
  ``?detail=1`` and only for a user holding ``HEALTH_DETAIL_PERMISSION`` (the
  dashboard's permission: the same people see the same facts) or with the metrics
  token; anyone else gets 403 for ``?detail=1``.
- ``/metrics``: Prometheus text format. It requires ``Authorization: Bearer
  <HEALTH_METRICS_TOKEN>`` whenever a token is set, and always when ``DEBUG`` is off
  (no token set then: 403, never open by default). Served by the probe middleware
  before sessions, so a browser login does not open it.

All return 503 when a check is critical (200 on warnings), never cache, and never
show a password. Reports are reused for ``HEALTH_HTTP_CACHE_SECONDS`` (probes
come often; each full run broadcasts to the workers).
"""

from __future__ import annotations

import hmac
import threading
import time

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from taskcore.health import conf
from taskcore.health.metrics import render_metrics, task_metrics_redis
from taskcore.health.model import HealthReport, Status
from taskcore.health.runner import run_health

_cache: dict[str, tuple[float, HealthReport]] = {}
_locks = {kind: threading.Lock() for kind in ("ready", "full", "metrics")}


def _report(kind: str, **options) -> HealthReport:
    """A recent report of ``kind``; one run at a time per kind, others wait for it."""
    ttl = conf.number("HEALTH_HTTP_CACHE_SECONDS")
    with _locks[kind]:
        cached = _cache.get(kind)
        if cached and time.monotonic() < cached[0]:
            return cached[1]
        report = run_health(**options)
        _cache[kind] = (time.monotonic() + ttl, report)
        return report


def clear_cache() -> None:
    _cache.clear()


def _has_token(request) -> bool:
    token = conf.text("HEALTH_METRICS_TOKEN")
    if not token:
        return False
    header = request.headers.get("Authorization", "")
    # Bytes: compare_digest refuses str with non-ASCII characters (a 500, not a 403).
    sent = header[7:].strip().encode()
    return header.startswith("Bearer ") and hmac.compare_digest(sent, token.encode())


def _may_see_details(request) -> bool:
    """The token, or the permission the settings name (no permission named: superusers only).

    The permission is a setting, not an import: taskcore does not know the dashboard app.
    """
    if _has_token(request):
        return True
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not user.is_staff:
        return False
    permission = getattr(settings, "HEALTH_DETAIL_PERMISSION", "")
    return user.has_perm(permission) if permission else user.is_superuser


def _may_read_metrics(request) -> bool:
    if conf.text("HEALTH_METRICS_TOKEN"):
        return _has_token(request)
    return bool(settings.DEBUG)  # development only: never open by default in production


def _forbidden(text: str) -> HttpResponse:
    return HttpResponse(text + "\n", status=403, content_type="text/plain; charset=utf-8")


def _http_status(report: HealthReport) -> int:
    return 503 if report.status is Status.CRITICAL else 200


@never_cache
@require_safe
def live(request):
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def ready(request):
    report = _report("ready", readiness=True)
    body = {
        "status": report.status.value,
        "checks": {result.name: result.as_public_dict() for result in report.results},
    }
    return JsonResponse(body, status=_http_status(report))


@never_cache
@require_safe
def health(request):
    if request.GET.get("detail") and not _may_see_details(request):
        return JsonResponse(
            {"error": "details need the operations dashboard permission or the metrics token"},
            status=403,
        )
    report = _report("full", groups=("core",))
    if request.GET.get("detail"):
        return JsonResponse(report.as_dict(), status=_http_status(report))
    body = {
        "status": report.status.value,
        "generated_at": report.as_dict()["generated_at"],
        "checks": {result.name: result.as_public_dict() for result in report.results},
    }
    return JsonResponse(body, status=_http_status(report))


@never_cache
@require_safe
def metrics(request):
    if not _may_read_metrics(request):
        if conf.text("HEALTH_METRICS_TOKEN"):
            return _forbidden("send Authorization: Bearer <HEALTH_METRICS_TOKEN>")
        return _forbidden("set HEALTH_METRICS_TOKEN: /metrics is closed while DEBUG is off")
    report = _report("metrics", groups=("core", "redis"))
    return HttpResponse(
        render_metrics(report, task_metrics_redis()),
        content_type="text/plain; version=0.0.4; charset=utf-8",
    )
