"""HTTP health endpoints and Prometheus metrics, for orchestrators and monitoring.

- ``/health/live``: the process answers; touches no dependency (liveness probe).
- ``/health/ready``: this web process can serve: database, cache, broker (readiness
  probe). A backlog in a queue must not take the web servers out of rotation.
- ``/health/``: the whole task system (the checks of ``celery_health``), status and
  latency per check; details (hosts, messages, remedies) only for staff users or
  with the metrics token, and only with ``?detail=1``.
- ``/metrics``: Prometheus text format (``HEALTH_METRICS_TOKEN`` protects it when set).

All return 503 when a check is critical (200 on warnings), never cache, and never
show a password. Reports are reused for ``HEALTH_HTTP_CACHE_SECONDS`` (probes
come often; each full run broadcasts to the workers).
"""

from __future__ import annotations

import hmac
import threading
import time

from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from taskcore.health import conf
from taskcore.health.metrics import render_metrics
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
    return header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip(), token)


def _may_see_details(request) -> bool:
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff) or _has_token(request)


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
    report = _report("full", groups=("core",))
    if request.GET.get("detail") and _may_see_details(request):
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
    if conf.text("HEALTH_METRICS_TOKEN") and not (_has_token(request) or _may_see_details(request)):
        return HttpResponse(
            "authentication required\n",
            status=401,
            content_type="text/plain; charset=utf-8",
            headers={"WWW-Authenticate": "Bearer"},
        )
    report = _report("metrics", groups=("core", "redis"))
    return HttpResponse(
        render_metrics(report), content_type="text/plain; version=0.0.4; charset=utf-8"
    )
